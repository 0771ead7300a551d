"""Generator cost for a config: params, FLOPs, forward latency and train-step time.

    python bench/bench_generator.py --config configs/smollm2_commonsense.py
    python bench/bench_generator.py --config configs/smollm2_commonsense.py --zoo workdir/smollm2

The weight layout comes from a zoo checkpoint (``--zoo``) or, without one, from the base model's
known LoRA shapes (``--arch``, default from ``config.base_model.kind``). Random conditions and
targets: this measures compute, not quality. Writes ``docs/bench/<config>.json``.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnd_jax import models, sharding, testing, train, zoo  # noqa: E402
from dnd_jax.models import hyperconv  # noqa: E402
from dnd_jax.weights import layout as layout_lib  # noqa: E402

# (layers, hidden, kv_dim, intermediate) of Llama-style bases.
ARCHS = {
    "smollm2": (30, 576, 192, 1536),  # SmolLM2-135M: 9 heads, 3 kv heads, head dim 64
    "qwen25_0p5b": (24, 896, 128, 4864),  # Qwen2.5-0.5B: 14 heads, 2 kv heads, head dim 64
    "tiny_llama": (2, 32, 16, 64),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).", lock_config=False)
_ZOO = flags.DEFINE_string("zoo", "", "Workdir holding zoo/ (layout from its first checkpoint).")
_ARCH = flags.DEFINE_string("arch", "", "LoRA shapes without a zoo: " + ", ".join(ARCHS))
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).")
_OUT = flags.DEFINE_string("out", str(ROOT / "docs" / "bench"), "Output folder.")
_NAME = flags.DEFINE_string("name", "", "Output file stem (default: the config file name).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Override config.batch_size (0 = keep).")



def lora_shapes(config) -> dict[str, tuple[int, ...]]:
    if _ZOO.value:
        task = zoo.tasks(_ZOO.value)[0]
        return {k: tuple(v.shape) for k, v in zoo.load_state_dict(zoo.checkpoints(_ZOO.value, task)[0]).items()}
    arch = _ARCH.value or {"hf_dir": "qwen25_0p5b"}.get(config.base_model.kind, config.base_model.kind)
    if arch not in ARCHS:
        raise SystemExit(f"no shapes for base '{arch}': pass --zoo W or --arch one of {sorted(ARCHS)}")
    layers, hidden, kv, inter = ARCHS[arch]
    return testing.tiny_lora_shapes(layers=layers, hidden=hidden, kv=kv, inter=inter, r=int(config.lora.r),
                                    modules=tuple(config.lora.target_modules))


def _time(fn, repeats: int) -> dict:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def bench(config) -> dict:
    layout = layout_lib.build_layout(lora_shapes(config), tuple(config.layout.token_shape))
    n, length = int(config.conditions.num_prompts), int(config.conditions.max_len)
    in_shape, out_shape = (n, length, 384), layout.grid_shape
    model = models.build(config.model_name, config.model, in_shape, out_shape)
    tx, schedule = train.make_optimizer(config)
    try:
        mesh = sharding.make_mesh(config.mesh)
    except sharding.MeshError:  # e.g. a model axis of 2 on a 1-device host: measure unsharded
        mesh = sharding.make_mesh((("data", -1), ("model", 1)))
    b = int(_BATCH.value or config.batch_size)
    b = max(mesh.shape["data"], b - b % mesh.shape["data"])

    t = time.perf_counter()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *in_shape)))
    init_s = time.perf_counter() - t
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    state_sh = sharding.place(mesh, state, sharding.config_rules(config), int(config.min_shard_size)).shardings
    state = jax.device_put(state, state_sh)
    rng = np.random.default_rng(0)
    cond = jax.device_put(rng.normal(size=(b, *in_shape)).astype(np.float32), sharding.batch_sharding(mesh, 4))
    target = jax.device_put(rng.normal(size=(b, *out_shape)).astype(np.float32), sharding.batch_sharding(mesh, 4))
    wmap = jax.device_put(layout.mask().astype(np.float32), sharding.replicated(mesh))

    train_step, _ = train.make_steps(models.for_shardings(model, state_sh["params"]), tx, schedule, config)
    step = jax.jit(train_step, in_shardings=(state_sh, *(sharding.batch_sharding(mesh, 4),) * 2,
                                             sharding.replicated(mesh)), out_shardings=(state_sh, None))
    t = time.perf_counter()
    compiled = step.lower(state, cond, target, wmap).compile()
    compile_s = time.perf_counter() - t
    holder = {"state": state}

    def one_step():
        holder["state"], m = compiled(holder["state"], cond, target, wmap)
        return m["loss"]

    train_t = _time(one_step, _REPEATS.value)
    fwd = jax.jit(model.apply)
    p = holder["state"]["params"]
    fwd1 = _time(lambda: fwd(p, cond[:1]), _REPEATS.value)
    fwdb = _time(lambda: fwd(p, cond), _REPEATS.value)
    cost = jax.jit(model.apply).lower(p, cond[:1]).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = hyperconv.flops_per_example(model, in_shape) if config.model_name == "hyperconv" else None
    steps_in_25min = int(25 * 60 / train_t["median_s"])
    return {
        "config": _NAME.value or "?", "devices": [str(d) for d in jax.devices()], "mesh": dict(mesh.shape),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
        "jax": jax.__version__, "in_shape": list(in_shape), "out_shape": list(out_shape),
        "lora_params": layout.num_params, "layout_padding": round(layout.padding_fraction, 4),
        "model": config.model.to_dict(), "param_count": hyperconv.param_count(params),
        "flops_per_example_fwd_analytic": flops, "flops_per_example_fwd_xla": cost.get("flops"),
        "batch_size": b, "init_s": init_s, "train_step_compile_s": compile_s, "train_step": train_t,
        "forward_batch1": fwd1, f"forward_batch{b}": fwdb,
        "train_gflops_per_s": (3 * (flops or 0) * b / train_t["median_s"] / 1e9) if flops else None,
        "steps_in_25_min": steps_in_25min,
    }


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    name = _NAME.value or Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    result = bench(config)
    result["config"] = name
    out = Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
