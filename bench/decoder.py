"""The decoder against this machine's limit: forward and train-step FLOP rates, and where the time goes.

    python bench/decoder.py --config configs/smollm2_commonsense.py --repeats 7
    python bench/decoder.py --config configs/qwen25_0p5b_commonsense.py --repeats 2 --nobreakdown

FLOPs come from XLA's cost analysis of the compiled programs (forward at batch 1 and at the
config's batch, and the whole train step: forward + backward + AdamW). Every repeat times the
decoder *and* a float32 2048x2048 JAX matmul back to back, so on a shared machine both see the same
load; the fractions compare best (minimum-time) rates and median rates. ``--breakdown`` times every
operation of every stage on its own (LayerNorm, the four factorized convolutions with their axis
swaps, the prompt convolution with its moveaxis) and, for each convolution, the same contraction
written as one ``dot_general`` over shifted copies (im2col), with the largest difference between
the two, and a plain matmul of the same (M, K, N) = (positions, k*k*in, out): the rate a GEMM of
that shape reaches here. Random weights and conditions (speed does not depend on values). Writes
``docs/bench/decoder_<config>.json``.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fixtures  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(common.ROOT / "configs/smollm2_commonsense.py"),
                                          "Config whose decoder is measured.", lock_config=False)
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Train/forward batch (0 = config.batch_size).")
_BREAKDOWN = flags.DEFINE_bool("breakdown", True, "Time each operation of each stage.")
_TRAIN = flags.DEFINE_bool("train", True, "Also time the train step.")
_NAME = flags.DEFINE_string("name", "", "Result name (default decoder_<config>).")
_OUT = flags.DEFINE_string("out", str(common.DOCS), "Output folder.")
_SAVE = flags.DEFINE_string("save_output", "", "Write the batch-1 forward output here (.npy) to compare XLA flags.")
MATMUL_N = 2048


def build(config):
    """(model, in_shape, out_shape, layout) for ``config`` with its base model's LoRA shapes."""
    from dnd_jax import models
    from dnd_jax.weights import layout as layout_lib

    shapes = fixtures.lora_shapes(fixtures.arch_of(config), config.lora.r, config.lora.target_modules)
    layout = layout_lib.build_layout(shapes, tuple(config.layout.token_shape))
    in_shape = (int(config.conditions.num_prompts), int(config.conditions.max_len), 384)
    model = models.build(config.model_name, config.model, in_shape, layout.grid_shape)
    return model, in_shape, tuple(layout.grid_shape), layout


def xla_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _interleaved(fns: dict, repeats: int) -> dict:
    """Time every fn once per round, ``repeats`` rounds (all see the same machine load)."""
    import jax

    for fn in fns.values():
        jax.block_until_ready(fn())
    times = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: {**common.summary(v), "cpu_s": common.summary(cpu[k])} for k, v in times.items()}


def _rate(flops: float | None, t: dict) -> dict:
    """GFLOP/s of wall time (best, median) and GFLOP per CPU-second (all threads: load-independent)."""
    if not flops:
        return {}
    out = {"gflops_best": flops / t["min"] / 1e9, "gflops_median": flops / t["median"] / 1e9}
    if "cpu_s" in t:
        out["gflop_per_cpu_s"] = flops / t["cpu_s"]["median"] / 1e9
    return out


def stage_ops(in_shape, out_shape, k: int, batch: int, dtype):
    """[(name, fn, args, flops)] of one stage, each op standing alone, plus im2col variants of the convs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    (n, h, w), (n2, h2, w2) = in_shape, out_shape
    key = iter(jax.random.split(jax.random.key(1), 64))

    def arr(*shape):
        return jax.random.normal(next(key), shape, dtype)

    def conv(x, kern):
        return jax.lax.conv_general_dilated(x, kern, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def im2col(x, kern):
        # the same k x k SAME convolution as one dot_general: shifted copies stacked on the channel axis
        kh, kw, c, f = kern.shape
        xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        a, b = x.shape[1], x.shape[2]
        cols = jnp.concatenate([xp[:, i:i + a, j:j + b, :] for i in range(kh) for j in range(kw)], axis=-1)
        return jax.lax.dot_general(cols, kern.reshape(kh * kw * c, f), (((3,), (0,)), ((), ())))

    def swap(x):
        return jnp.swapaxes(x, 2, 3)

    def ln(x, g, b):
        mu = x.mean((-2, -1), keepdims=True)
        var = jnp.square(x - mu).mean((-2, -1), keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-6) * g + b

    kk = k * k
    ops = [("layernorm", ln, (arr(batch, n, h, w), arr(h, w), arr(h, w)), 8 * n * h * w * batch)]
    convs = [  # (name, input shape NHWC, in ch, out ch, swap around it)
        ("p1_width", (batch, n, h, w), w, w2, False),
        ("p1_height", (batch, n, w2, h), h, h2, True),
        ("p2_height", (batch, n, w, h), h, h2, True),
        ("p2_width", (batch, n, h2, w), w, w2, False),
    ]
    for name, shape, c, f, swapped in convs:
        x, kern = arr(*shape), arr(k, k, c, f)
        flop = 2 * batch * shape[1] * shape[2] * kk * c * f
        ops.append((f"{name} conv", conv, (x, kern), flop))
        ops.append((f"{name} im2col dot", im2col, (x, kern), flop))
        ops.append((f"{name} gemm", jnp.matmul, (arr(batch * shape[1] * shape[2], kk * c), arr(kk * c, f)), flop))
        if swapped:
            ops.append((f"{name} swaps", lambda x: swap(swap(x) * 1.0), (arr(*shape[:2], shape[3], shape[2]),), 0))
    x, kern = arr(batch, h2, w2, n), arr(k, k, n, n2)
    flop = 2 * batch * h2 * w2 * kk * n * n2
    ops.append(("prompt conv", conv, (x, kern), flop))
    ops.append(("prompt im2col dot", im2col, (x, kern), flop))
    ops.append(("prompt gemm", jnp.matmul, (arr(batch * h2 * w2, kk * n), arr(kk * n, n2)), flop))
    g = arr(batch, h2, w2, n2)  # the backward pass: gradients of the input and of the kernel, as in a train step
    ops.append(("prompt conv grad input", lambda x, kern, g: jax.vjp(lambda x_: conv(x_, kern), x)[1](g)[0],
                (x, kern, g), flop))
    ops.append(("prompt conv grad kernel", lambda x, kern, g: jax.vjp(lambda k_: conv(x, k_), kern)[1](g)[0],
                (x, kern, g), flop))
    ops.append(("prompt moveaxis", lambda y: jnp.moveaxis(jnp.moveaxis(y, 1, 3) * 1.0, 3, 1), (arr(batch, n, h2, w2),), 0))
    del np
    return ops, conv, im2col


def breakdown(model, in_shape, batch: int, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dnd_jax.models import hyperconv

    dtype = jnp.dtype(model.dtype)
    rows = []
    for si, (s_in, s_out, k) in enumerate(hyperconv.stage_shapes(model, in_shape)):
        ops, conv, im2col = stage_ops(s_in, s_out, k, batch, dtype)
        # the whole stage (flax module, as in the model), timed in the same rounds as its parts
        stage = hyperconv.Stage(tuple(s_out), k, model.dtype)
        x = jax.random.normal(jax.random.key(3), (batch, *s_in), dtype)
        sp = jax.jit(stage.init)(jax.random.key(0), x)
        ops.append(("whole stage", stage.apply, (sp, x), 0))
        fns = {}
        for name, fn, args, flop in ops:
            jf = jax.jit(fn)
            fns[name] = (functools.partial(jf, *args), flop)
        t = _interleaved({k_: v[0] for k_, v in fns.items()}, repeats)
        for name, (_, flop) in fns.items():
            rows.append({"stage": si, "in": list(s_in), "out": list(s_out), "op": name, "time_s": t[name],
                         "flops": flop, **_rate(flop, t[name])})
        # numerical equality of the two conv formulations on this stage's prompt conv
        for name, _fn, args, _ in ops:
            if name.endswith("im2col dot"):
                a = np.asarray(jax.jit(conv)(*args), np.float64)
                b = np.asarray(jax.jit(im2col)(*args), np.float64)
                scale = float(np.abs(a).max()) or 1.0
                rows.append({"stage": si, "op": name.replace("im2col dot", "im2col max rel diff"),
                             "max_abs_diff_over_max": float(np.abs(a - b).max()) / scale})
    return rows


def main(argv) -> None:
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dnd_jax import train
    from dnd_jax.models import hyperconv

    config = _CONFIG.value
    cfg_name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    model, in_shape, out_shape, layout = build(config)
    b = int(_BATCH.value or config.batch_size)
    import os

    res = common.Result(_NAME.value or f"decoder_{cfg_name}", config=cfg_name, xla_flags=os.environ.get("XLA_FLAGS", ""), in_shape=list(in_shape),
                        out_shape=list(out_shape), lora_params=layout.num_params, model=config.model.to_dict(),
                        batch_size=b, versions=common.versions("jax", "jaxlib", "flax"),
                        devices=[str(d) for d in jax.devices()])
    rng = np.random.default_rng(0)
    cond = jnp.asarray(rng.normal(size=(b, *in_shape)).astype(np.float32))
    params = jax.jit(model.init)(jax.random.key(0), cond[:1])
    res["param_count"] = hyperconv.param_count(params)
    res["flops_fwd_analytic"] = hyperconv.flops_per_example(model, in_shape)

    fwd = jax.jit(model.apply)
    t = time.perf_counter()
    fwd1 = fwd.lower(params, cond[:1]).compile()
    res["compile_forward_s"] = time.perf_counter() - t
    fwdb = fwd.lower(params, cond).compile()
    ma = jax.random.normal(jax.random.key(2), (MATMUL_N, MATMUL_N), jnp.float32)
    mm = jax.jit(lambda x: x @ x).lower(ma).compile()
    fns = {"forward_b1": lambda: fwd1(params, cond[:1]), f"forward_b{b}": lambda: fwdb(params, cond),
           "matmul": lambda: mm(ma)}
    flops = {"forward_b1": xla_flops(fwd1), f"forward_b{b}": xla_flops(fwdb), "matmul": 2.0 * MATMUL_N**3}
    if _TRAIN.value:
        tx, schedule = train.make_optimizer(config)
        train_step, _ = train.make_steps(model, tx, schedule, config)
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        target = jnp.asarray(rng.normal(size=(b, *out_shape)).astype(np.float32))
        wmap = jnp.asarray(layout.mask().astype(np.float32))
        t = time.perf_counter()
        step = jax.jit(train_step).lower(state, cond, target, wmap).compile()
        res["compile_train_step_s"] = time.perf_counter() - t
        fns[f"train_step_b{b}"] = lambda: step(state, cond, target, wmap)[1]["loss"]
        flops[f"train_step_b{b}"] = xla_flops(step)
        # The same step with XLA's own convolution gradients for the prompt convolution (the model's
        # GEMM backward switched off), timed in the same rounds. Its XLA FLOP count (the plain autodiff
        # program's) is the work of a train step for both: the GEMM backward computes the same sums, and
        # XLA counts its shifted copies as a few percent more FLOPs.
        # (float32 on CPU only: otherwise both are the same program, timed once.)
        if str(config.model.get("dtype", "float32")) == "float32" and jax.default_backend() == "cpu":
            hyperconv.FAST_PROMPT_GRAD = False
            try:
                plain_step, _ = train.make_steps(model, tx, schedule, config)
                plain = jax.jit(plain_step).lower(state, cond, target, wmap).compile()
            finally:
                hyperconv.FAST_PROMPT_GRAD = True
            fns[f"train_step_b{b}_xla_conv_grads"] = lambda: plain(state, cond, target, wmap)[1]["loss"]
            flops[f"train_step_b{b}"] = flops[f"train_step_b{b}_xla_conv_grads"] = xla_flops(plain)
        res["xla_flops_train_step_program"] = xla_flops(step)
    if _SAVE.value:
        np.save(_SAVE.value, np.asarray(fwd1(params, cond[:1])))
    times = _interleaved(fns, _REPEATS.value)
    peak = _rate(flops["matmul"], times["matmul"])
    res["matmul_reference"] = {"n": MATMUL_N, "time_s": times["matmul"], **peak}
    res["programs"] = {}
    for k in fns:
        if k == "matmul":
            continue
        r = _rate(flops[k], times[k])
        res["programs"][k] = {"time_s": times[k], "xla_flops": flops[k], **r,
                              "fraction_of_matmul_best": r["gflops_best"] / peak["gflops_best"],
                              "fraction_of_matmul_median": r["gflops_median"] / peak["gflops_median"],
                              "fraction_of_matmul_per_cpu_s": r["gflop_per_cpu_s"] / peak["gflop_per_cpu_s"]}
    if _BREAKDOWN.value:
        res["breakdown_b1"] = breakdown(model, in_shape, 1, _REPEATS.value)
    res.write(_OUT.value)
    for k, v in res["programs"].items():
        print(f"{k}: {v['time_s']['min'] * 1e3:.1f} ms min, {v['gflops_best']:.0f} GFLOP/s = "
              f"{100 * v['fraction_of_matmul_best']:.0f}% of matmul ({peak['gflops_best']:.0f}); per CPU-second "
              f"{v['gflop_per_cpu_s']:.0f} = {100 * v['fraction_of_matmul_per_cpu_s']:.0f}% of matmul's "
              f"{peak['gflop_per_cpu_s']:.0f}")
    for r in res.get("breakdown_b1", []):
        if "time_s" in r:
            print(f"  stage {r['stage']} {r['op']:<22} {r['time_s']['min'] * 1e3:8.2f} ms "
                  f"{r.get('gflops_best', 0):6.0f} GFLOP/s")
        else:
            print(f"  stage {r['stage']} {r['op']:<22} {r['max_abs_diff_over_max']:.1e}")


if __name__ == "__main__":
    app.run(main)
