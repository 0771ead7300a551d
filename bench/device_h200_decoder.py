"""The decoder on an accelerator: forward and train-step FLOP rates vs the chip's measured matmul rate.

For the lead to run on the device machine (one NVIDIA H200), from the repository root:

    python bench/device_h200_decoder.py --out "$OUT"          # meant for < 3 minutes (not yet run on a GPU)
    python bench/device_h200_decoder.py --tiny --out /tmp/t   # CPU smoke test with tiny shapes (seconds)

Needs jax (with the accelerator's plugin), flax and numpy; nothing else from the project's
dependencies (no optax, orbax, torch, ml_collections): the decoder is ``dnd_jax.models.hyperconv``,
its shapes are those of ``configs/smollm2_commonsense.py`` and ``configs/qwen25_0p5b_commonsense.py``
(copied below; ``--tiny`` checks them against the configs when ml_collections is importable), and
the train step is masked MSE + Adam written inline (its FLOPs are the convolutions' forward and
backward; the optimizer's are negligible). Matmul reference: square matmuls in float32 at
``precision=highest``, float32 at default precision (TF32 on NVIDIA) and bfloat16. FLOPs of every
program from XLA's cost analysis; times min/median/max over repeats after a warm-up call.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (in_shape, hidden_shapes, out_shape, kernel, dtype, batches for forward, batches for train)
CONFIGS = {
    "smollm2_commonsense": ((32, 32, 384), ((32, 32, 64), (64, 64, 32)), (1590, 192, 8), 3, "float32",
                            (1, 64), (4, 64)),
    "qwen25_0p5b_commonsense": ((128, 384, 384), ((128, 192, 128), (256, 128, 64), (512, 128, 16)),
                                (4296, 128, 8), 3, "bfloat16", (1, 16), (16,)),
}
TINY = {"tiny": ((4, 16, 384), ((32, 8, 32),), (40, 4, 16), 3, "float32", (1, 4), (4,))}


def _summary(times: list[float]) -> dict:
    return {"min": min(times), "median": statistics.median(times), "max": max(times), "n": len(times)}


def _time(fn, repeats: int) -> dict:
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return _summary(times)


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _rate(flops, t: dict, xla_flops: float | None = None) -> dict:
    """Rates from ``flops``; ``xla_flops`` (XLA's cost analysis) is kept beside them: on a GPU it leaves out the
    cuDNN/cuBLAS custom calls that convolutions and large dots become, so decoder rates use the analytic count."""
    out = {"xla_flops": flops if xla_flops is None else xla_flops}
    if xla_flops is not None:
        out["analytic_flops"] = flops
    if flops:
        out |= {"tflops_best": flops / t["min"] / 1e12, "tflops_median": flops / t["median"] / 1e12}
    return out


def matmul_rates(n: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    for name, dtype, precision in (("float32_highest", jnp.float32, "highest"), ("float32_default", jnp.float32, None),
                                   ("bfloat16", jnp.bfloat16, None)):
        k1, k2 = jax.random.split(jax.random.key(0))
        a, b = jax.random.normal(k1, (n, n), dtype), jax.random.normal(k2, (n, n), dtype)
        f = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p)).lower(a, b).compile()
        t = _time(lambda f=f, a=a, b=b: f(a, b), repeats)
        out[name] = {"n": n, "time_s": t, **_rate(2.0 * n**3, t)}
    return out


def decoder_rates(name: str, spec, repeats: int, peaks: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dnd_jax.models import hyperconv

    in_shape, hidden, out_shape, k, dtype, fwd_batches, train_batches = spec
    model = hyperconv.HyperConv(out_shape=out_shape, hidden_shapes=hidden, kernel_size=k, dtype=dtype)
    rng = np.random.default_rng(0)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *in_shape), jnp.float32))
    ref = peaks["bfloat16" if dtype == "bfloat16" else "float32_default"]["tflops_best"]
    fwd_flops = float(hyperconv.flops_per_example(model, in_shape))
    res = {"in_shape": in_shape, "hidden_shapes": hidden, "out_shape": out_shape, "dtype": dtype,
           "param_count": hyperconv.param_count(params), "reference_matmul": "bfloat16" if dtype == "bfloat16"
           else "float32_default", "programs": {}}
    for b in fwd_batches:
        cond = jnp.asarray(rng.normal(size=(b, *in_shape)).astype(np.float32))
        t0 = time.perf_counter()
        f = jax.jit(model.apply).lower(params, cond).compile()
        compile_s = time.perf_counter() - t0
        t = _time(lambda f=f, cond=cond: f(params, cond), repeats)
        r = _rate(fwd_flops * b, t, _flops(f))
        res["programs"][f"forward_b{b}"] = {"time_s": t, "compile_s": compile_s, **r,
                                            "fraction_of_matmul": r.get("tflops_best", 0) / ref}

    def loss_fn(p, cond, target, wmap):
        pred = model.apply(p, cond).astype(jnp.float32)
        return jnp.mean(jnp.sum(jnp.square(pred - target) * wmap, axis=(1, 2, 3)) / jnp.sum(wmap))

    def train_step(p, m, v, step, cond, target, wmap):
        loss, g = jax.value_and_grad(loss_fn)(p, cond, target, wmap)
        m = jax.tree.map(lambda m_, g_: 0.9 * m_ + 0.1 * g_, m, g)
        v = jax.tree.map(lambda v_, g_: 0.999 * v_ + 0.001 * g_ * g_, v, g)
        p = jax.tree.map(lambda p_, m_, v_: p_ - 1e-3 * (m_ / (jnp.sqrt(v_) + 1e-8) + 1e-4 * p_), p, m, v)
        return p, m, v, step + 1, loss

    zeros = jax.tree.map(jnp.zeros_like, params)
    wmap = jnp.ones(out_shape, jnp.float32)
    for b in train_batches:
        cond = jnp.asarray(rng.normal(size=(b, *in_shape)).astype(np.float32))
        target = jnp.asarray(rng.normal(size=(b, *out_shape)).astype(np.float32))
        args = (params, zeros, zeros, jnp.zeros((), jnp.int32), cond, target, wmap)
        t0 = time.perf_counter()
        step = jax.jit(train_step).lower(*args).compile()
        compile_s = time.perf_counter() - t0
        t = _time(lambda step=step, args=args: step(*args)[-1], repeats)
        r = _rate(3 * fwd_flops * b, t, _flops(step))  # forward + gradients to inputs and to kernels
        res["programs"][f"train_step_b{b}"] = {"time_s": t, "compile_s": compile_s, **r,
                                               "fraction_of_matmul": r.get("tflops_best", 0) / ref}
    return res


def check_shapes_against_configs() -> dict:
    """The copied shapes equal what the configs derive (when ml_collections is importable)."""
    try:
        import importlib

        sys.path.insert(0, str(ROOT / "bench"))
        import fixtures

        from dnd_jax.weights import layout as layout_lib
    except ImportError as e:
        return {"checked": False, "why": str(e)}
    out = {}
    for name, spec in CONFIGS.items():
        config = importlib.import_module(f"configs.{name}").get_config()
        shapes = fixtures.lora_shapes(fixtures.arch_of(config), config.lora.r, config.lora.target_modules)
        grid = layout_lib.build_layout(shapes, tuple(config.layout.token_shape)).grid_shape
        derived = ((int(config.conditions.num_prompts), int(config.conditions.max_len), 384),
                   tuple(tuple(int(d) for d in s) for s in config.model.hidden_shapes), tuple(grid),
                   int(config.model.kernel_size), str(config.model.dtype))
        if derived != spec[:5]:
            raise SystemExit(f"{name}: the shapes copied here {spec[:5]} differ from the config's {derived}")
        out[name] = True
    return {"checked": True, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="Output folder (default $OUT).")
    ap.add_argument("--tiny", action="store_true", help="Tiny shapes (a CPU smoke test).")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--matmul_n", type=int, default=8192)
    args = ap.parse_args()
    t_start = time.perf_counter()
    import jax

    res = {"name": "device_h200_decoder", "command": "python " + " ".join(sys.argv), "jax": jax.__version__,
           "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind}
    if args.tiny:
        res["config_check"] = check_shapes_against_configs()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part: a run cut short by a time limit still leaves its results
        res["wall_s"] = time.perf_counter() - t_start
        (out / "device_h200_decoder.json").write_text(json.dumps(res, indent=2) + "\n")

    n = 256 if args.tiny else args.matmul_n
    res["matmul"] = matmul_rates(n, args.repeats)
    res["decoders"] = {}
    save()
    for name, spec in (TINY if args.tiny else CONFIGS).items():
        res["decoders"][name] = decoder_rates(name, spec, args.repeats, res["matmul"])
        print(json.dumps({name: {k: (round(v.get("tflops_best", 0), 2), round(v["fraction_of_matmul"], 3))
                                 for k, v in res["decoders"][name]["programs"].items()}}), flush=True)
        save()
    print(json.dumps({k: {kk: round(vv.get("tflops_best", 0), 1) for kk, vv in v.items()}
                      for k, v in {"matmul": res["matmul"]}.items()}))
    print(f"wrote {out / 'device_h200_decoder.json'} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
