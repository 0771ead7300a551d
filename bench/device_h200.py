"""Paper-scale generator train step on one GPU: step time, peak memory, dry-run vs real.

    python bench/device_h200.py                     # the Qwen2.5-0.5B generator (configs/qwen25_0p5b_commonsense.py)
    python bench/device_h200.py --tiny --allow_cpu  # the tiny generator on CPU (checks the script itself)

Self-contained: needs only jax (no flax/optax/dnd_jax, which the device machine may lack). The
decoder is the same computation as ``dnd_jax.models.hyperconv`` (same parameter shapes, convs,
LayerNorm over (h, w), GELU between stages, bfloat16 compute with float32 parameters), trained
with masked MSE and Adam on synthetic batches (random conditions and targets: compute, not
quality). Order: inference forward at batch 1 (peak memory = what generating an adapter needs),
then the train step at ``--batch_size`` (halved on out-of-memory). Reports XLA's cost analysis
(``flops``: on a GPU it leaves out the cuDNN convolutions, so FLOP rates are computed from
``hyperconv.flops_per_example`` by ``bench/device_summary.py``), the compiled memory analysis (the
dry-run estimate) and the device's ``memory_stats()`` peak. Writes ``device_h200.json`` into ``$OUT`` (or ``--out``). Under 4 minutes
on an H200; exits 0 with a note when there is no GPU (unless ``--allow_cpu``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# (in_shape (N, L, C), hidden stage shapes, out_shape (T, h, w), kernel, batch)
SHAPES = {
    "qwen25_0p5b": ((128, 384, 384), ((128, 192, 128), (256, 128, 64), (512, 128, 16)), (4296, 128, 8), 3, 64),
    "tiny": ((4, 16, 384), ((32, 8, 32),), (64, 4, 16), 3, 8),
}


def init_params(rng: np.random.Generator, in_shape, hidden, out_shape, k: int) -> dict:
    shapes = [tuple(in_shape), *map(tuple, hidden), tuple(out_shape)]
    params = {}
    for i, ((n, h, w), (n2, h2, w2)) in enumerate(zip(shapes[:-1], shapes[1:])):
        def kern(cin, cout):
            return (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)

        params[f"stage_{i}"] = {
            "norm_scale": np.ones((h, w), np.float32), "norm_bias": np.zeros((h, w), np.float32),
            "p1_width": kern(w, w2), "p1_height": kern(h, h2), "p2_height": kern(h, h2), "p2_width": kern(w, w2),
            "bias": np.zeros((h2, w2), np.float32), "prompt": kern(n, n2), "prompt_bias": np.zeros((n2,), np.float32),
        }
    return params


def _conv(x, k):
    return jax.lax.conv_general_dilated(x, k.astype(x.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _swap(x):
    return jnp.swapaxes(x, 2, 3)


def forward(params: dict, cond, dtype=jnp.bfloat16):
    x = cond.astype(dtype)
    n_stages = len(params)
    for i in range(n_stages):
        p = params[f"stage_{i}"]
        mean = jnp.mean(x.astype(jnp.float32), axis=(-2, -1), keepdims=True)
        var = jnp.var(x.astype(jnp.float32), axis=(-2, -1), keepdims=True)
        y = ((x - mean) * jax.lax.rsqrt(var + 1e-6) * p["norm_scale"] + p["norm_bias"]).astype(dtype)
        p1 = _swap(_conv(_swap(_conv(y, p["p1_width"])), p["p1_height"]))
        p2 = _conv(_swap(_conv(_swap(y), p["p2_height"])), p["p2_width"])
        y = (p1 + p2) * 0.5 + p["bias"].astype(dtype)
        y = jnp.moveaxis(_conv(jnp.moveaxis(y, 1, 3), p["prompt"]) + p["prompt_bias"].astype(dtype), 3, 1)
        if x.shape[1:] == y.shape[1:]:
            y = y + x
        x = jax.nn.gelu(y) if i < n_stages - 1 else y
    return x.astype(jnp.float32)


def train_step(state, cond, target, wmap, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    def loss_fn(p):
        err = jnp.square(forward(p, cond) - target) * wmap
        return jnp.mean(jnp.sum(err, axis=(1, 2, 3)) / jnp.sum(wmap))

    loss, g = jax.value_and_grad(loss_fn)(state["params"])
    t = state["step"] + 1
    mu = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state["mu"], g)
    nu = jax.tree.map(lambda v, x: b2 * v + (1 - b2) * x * x, state["nu"], g)
    c1, c2 = 1 - b1 ** t.astype(jnp.float32), 1 - b2 ** t.astype(jnp.float32)
    params = jax.tree.map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), state["params"], mu, nu)
    return {"step": t, "params": params, "mu": mu, "nu": nu}, loss


def _cost(compiled) -> dict:
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list) else (c or {})
    m = compiled.memory_analysis()
    mem = {}
    if m is not None:
        mem = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
        mem["peak_estimate"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    return {"flops": float(c.get("flops", float("nan"))), "memory_analysis": mem}


def _peak(dev) -> dict:
    s = dev.memory_stats() or {}
    return {k: int(s[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit") if k in s}


def run(shape_key: str, batch: int, repeats: int, dev) -> dict:
    in_shape, hidden, out_shape, k, _ = SHAPES[shape_key]
    rng = np.random.default_rng(0)
    params = jax.device_put(init_params(rng, in_shape, hidden, out_shape, k), dev)
    n_params = int(sum(a.size for a in jax.tree.leaves(params)))
    wmap = jax.device_put(np.ones(out_shape, np.float32), dev)
    out = {"shapes": {"in": in_shape, "hidden": hidden, "out": out_shape, "kernel": k}, "params": n_params}

    # Inference at batch 1 (generating one adapter).
    cond1 = jax.device_put(rng.standard_normal((1, *in_shape)).astype(np.float32), dev)
    fwd = jax.jit(forward).lower(params, cond1).compile()
    jax.block_until_ready(fwd(params, cond1))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fwd(params, cond1))
        times.append(time.perf_counter() - t)
    out["generate_batch1"] = {**_cost(fwd), "median_s": statistics.median(times), "device_after": _peak(dev)}

    # Train step; halve the batch on out-of-memory.
    while batch >= 1:
        try:
            state = {"step": jnp.zeros((), jnp.int32), "params": params,
                     "mu": jax.tree.map(jnp.zeros_like, params), "nu": jax.tree.map(jnp.zeros_like, params)}
            cond = jax.device_put(rng.standard_normal((batch, *in_shape)).astype(np.float32), dev)
            target = jax.device_put(rng.standard_normal((batch, *out_shape)).astype(np.float32), dev)
            t0 = time.perf_counter()
            step = jax.jit(train_step, donate_argnums=(0,)).lower(state, cond, target, wmap).compile()
            compile_s = time.perf_counter() - t0
            state, loss = step(state, cond, target, wmap)
            jax.block_until_ready(loss)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                state, loss = step(state, cond, target, wmap)
                jax.block_until_ready(loss)
                times.append(time.perf_counter() - t)
            cost = _cost(step)
            med = statistics.median(times)
            out["train"] = {"batch_size": batch, **cost, "compile_s": compile_s, "median_step_s": med,
                            "min_step_s": min(times), "steps": len(times), "loss": float(loss),
                            "device_after": _peak(dev)}
            est, real = cost["memory_analysis"].get("peak_estimate"), out["train"]["device_after"].get("peak_bytes_in_use")
            if est and real:
                out["train"]["real_peak_over_estimate"] = real / est
            return out
        except Exception as e:  # noqa: BLE001 - out-of-memory surfaces as XlaRuntimeError/ValueError
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            out.setdefault("oom_at_batch", []).append(batch)
            batch //= 2
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny test generator instead of the 0.5B one")
    ap.add_argument("--allow_cpu", action="store_true", help="run even without a GPU (script check)")
    ap.add_argument("--batch_size", type=int, default=0, help="train batch (default: the config's, 64)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    import jaxlib

    devices = jax.devices()
    info = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in devices], "device_kind": devices[0].device_kind}
    print(json.dumps(info), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "device_h200.json")
    if jax.default_backend() != "gpu" and not args.allow_cpu:
        print("no GPU visible to jax: nothing measured (pass --allow_cpu to run on CPU)")
        with open(path, "w") as f:
            json.dump({**info, "skipped": "no GPU"}, f, indent=1)
        return 0
    key = "tiny" if args.tiny else "qwen25_0p5b"
    t = time.perf_counter()
    result = {**info, "generator": key, **run(key, args.batch_size or SHAPES[key][4], args.repeats, devices[0])}
    result["wall_s"] = time.perf_counter() - t
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
    tr = result.get("train", {})
    print(json.dumps({k: tr.get(k) for k in ("batch_size", "median_step_s", "compile_s",
                                             "real_peak_over_estimate")}))
    print(f"wrote {path} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
