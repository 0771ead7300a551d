"""This machine's limit: square matmul throughput in JAX (float32, bfloat16) and torch (float32).

    python bench/matmul.py --repeats 7

GFLOP/s = 2 n^3 / time. The headline ``peak_f32_gflops`` is the best JAX float32 rate over sizes
(from each size's minimum time: the least-disturbed run on a shared machine); medians are kept too.
The decoder's FLOP rates (``bench/decoder.py``) are stated as fractions of it.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["512", "1024", "2048", "4096"], "Square matmul sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats per size.")
_TORCH = flags.DEFINE_bool("torch", True, "Also measure torch (CPU).")
_OUT = flags.DEFINE_string("out", str(common.DOCS), "Output folder.")


def _rates(n: int, t: dict) -> dict:
    flop = 2.0 * n**3
    return {"n": n, "time_s": t, "gflops_best": flop / t["min"] / 1e9, "gflops_median": flop / t["median"] / 1e9}


def jax_matmul(n: int, dtype: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda x, y: x @ y)
    return _rates(n, common.repeat(lambda: f(a, b), repeats))


def torch_matmul(n: int, repeats: int) -> dict:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return {**_rates(n, common.summary(times)), "threads": torch.get_num_threads()}


def main(argv) -> None:
    del argv
    import jax

    sizes = [int(s) for s in _SIZES.value]
    res = common.Result("matmul", versions=common.versions("jax", "jaxlib", "torch"), devices=[str(d) for d in jax.devices()])
    res["jax_float32"] = [jax_matmul(n, "float32", _REPEATS.value) for n in sizes]
    res["jax_bfloat16"] = [jax_matmul(n, "bfloat16", _REPEATS.value) for n in sizes if n <= 2048]
    if _TORCH.value:
        res["torch_float32"] = [torch_matmul(n, _REPEATS.value) for n in sizes]
    res["peak_f32_gflops"] = max(r["gflops_best"] for r in res["jax_float32"])
    res["peak_f32_gflops_median"] = max(r["gflops_median"] for r in res["jax_float32"])
    res.write(_OUT.value)
    for k in ("jax_float32", "jax_bfloat16", "torch_float32"):
        print(k, [(r["n"], round(r["gflops_best"]), round(r["gflops_median"])) for r in res.get(k, [])])


if __name__ == "__main__":
    app.run(main)
