"""Memory and compute of a generator train step on a mesh, without training (``train --dry_run``).

Everything is abstract: ``jax.eval_shape`` gives the state's shapes, :func:`dnd_jax.sharding.place`
its placement, and the jitted train step is ``.lower().compile()``d for ShapeDtypeStructs carrying
the shardings, so no parameter is ever allocated. Reported:

* parameters, parameter and optimizer-state bytes (total, and per device from the placement);
* FLOPs per step (XLA's cost analysis of the partitioned program: per device, and x devices);
* per-device memory of the compiled program (XLA's memory analysis): arguments, outputs, aliased
  (donated state), temporaries, and ``peak = arguments + outputs - aliased + temporaries``.

Meshes larger than this host use simulated CPU devices (``--xla_force_host_platform_device_count``):
the partitioned program is the one a pod would run, but XLA:CPU's buffer assignment and fusion
differ from TPU/GPU, so memory is an estimate (checked against real allocation in
``docs/scaleout/dry_run.md``). LoRA shapes come from the zoo when there is one, else from the base
model's architecture (:data:`ARCHS`).
"""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax import function_loss, models, sharding

# (layers, hidden, kv_dim, intermediate) of Llama/Qwen2-style bases (config.json of each model).
ARCHS = {
    "smollm2": (30, 576, 192, 1536),  # SmolLM2-135M: 9 heads, 3 kv heads, head dim 64
    "qwen25_0p5b": (24, 896, 128, 4864),  # Qwen2.5-0.5B: 14 heads, 2 kv heads, head dim 64
    "qwen25_1p5b": (28, 1536, 256, 8960),  # Qwen2.5-1.5B: 12 heads, 2 kv heads, head dim 128
    "qwen25_7b": (28, 3584, 512, 18944),  # Qwen2.5-7B: 28 heads, 4 kv heads, head dim 128
    "tiny_llama": (2, 32, 16, 64),
}
# The rest of each base's config.json that a forward needs (the function-space loss): heads, head dim,
# vocabulary, tied output embeddings, q/k/v biases.
LM_ARCHS = {
    "smollm2": dict(num_heads=9, num_kv_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                    attention_bias=False, rope_theta=100000.0),
    "qwen25_0p5b": dict(num_heads=14, num_kv_heads=2, head_dim=64, vocab_size=151936, tie_word_embeddings=True,
                        attention_bias=True, rope_theta=1000000.0),
    "qwen25_1p5b": dict(num_heads=12, num_kv_heads=2, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                        attention_bias=True, rope_theta=1000000.0),
    "qwen25_7b": dict(num_heads=28, num_kv_heads=4, head_dim=128, vocab_size=152064, tie_word_embeddings=False,
                      attention_bias=True, rope_theta=1000000.0),
    "tiny_llama": dict(num_heads=4, num_kv_heads=2, head_dim=8, vocab_size=259, tie_word_embeddings=True,
                       attention_bias=False, rope_theta=10000.0),
}
ENCODER_DIM = 384  # MiniLM / Sentence-BERT token embeddings


def arch_of(config) -> str:
    """The :data:`ARCHS` key for ``config.base_model`` (``arch`` field, else its kind/name)."""
    bm = config.base_model
    key = bm.get("arch", "") or {"hf_dir": "", "path": ""}.get(bm.get("kind", ""), bm.get("kind", ""))
    if not key:
        name = str(bm.get("name", "")).lower()
        key = next((k for k, tag in (("qwen25_0p5b", "qwen2.5-0.5b"), ("qwen25_1p5b", "qwen2.5-1.5b"),
                                     ("qwen25_7b", "qwen2.5-7b")) if tag in name), "")
    if key not in ARCHS:
        raise ValueError(f"no LoRA shapes for base model {dict(bm)}: set base_model.arch to one of {sorted(ARCHS)}")
    return key


def lora_shapes(config) -> dict[str, tuple[int, int]]:
    """peft LoRA tensor shapes of ``config.base_model`` with ``config.lora`` (no files read)."""
    from dnd_jax import testing

    layers, hidden, kv, inter = ARCHS[arch_of(config)]
    return testing.tiny_lora_shapes(layers=layers, hidden=hidden, kv=kv, inter=inter, r=int(config.lora.r),
                                    modules=tuple(config.lora.target_modules))


def lm_config(config):
    """The :class:`dnd_jax.jax_lm.LMConfig` of ``config.base_model`` from :data:`ARCHS` + :data:`LM_ARCHS`."""
    return lm_config_of(arch_of(config))


def lm_config_of(arch: str):
    """The :class:`dnd_jax.jax_lm.LMConfig` of an :data:`ARCHS` key (its config.json's forward settings)."""
    from dnd_jax import jax_lm

    layers, hidden, _, inter = ARCHS[arch]
    return jax_lm.LMConfig(vocab_size=LM_ARCHS[arch]["vocab_size"], hidden_size=hidden, intermediate_size=inter,
                           num_layers=layers, num_heads=LM_ARCHS[arch]["num_heads"],
                           num_kv_heads=LM_ARCHS[arch]["num_kv_heads"], head_dim=LM_ARCHS[arch]["head_dim"],
                           rms_norm_eps=1e-6, rope_theta=LM_ARCHS[arch]["rope_theta"],
                           tie_word_embeddings=LM_ARCHS[arch]["tie_word_embeddings"],
                           attention_bias=LM_ARCHS[arch]["attention_bias"])


def shapes_for(config, lora: dict | None = None) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(condition shape (N, L, C), token grid (T, h, w)) of the generator ``config`` trains."""
    from dnd_jax.weights import layout as layout_lib

    layout = layout_lib.build_layout(lora or lora_shapes(config), tuple(config.layout.token_shape))
    in_shape = (int(config.conditions.num_prompts), int(config.conditions.max_len), ENCODER_DIM)
    return in_shape, tuple(layout.grid_shape)


def estimate(config, mesh, in_shape, out_shape, batch_size: int | None = None, compile: bool = True) -> dict:
    """Dry-run numbers for one train step of ``config``'s generator on ``mesh`` (see module doc)."""
    from dnd_jax import trainer  # make_optimizer / make_steps: the exact step that training runs

    batch = int(batch_size or config.batch_size)
    model = models.build(config.model_name, config.model, in_shape, out_shape)
    tx, schedule = trainer.make_optimizer(config)

    def init_state(key):
        params = model.init(key, jnp.zeros((1, *in_shape), jnp.float32))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    abstract = jax.eval_shape(init_state, jax.random.key(0))
    placement = sharding.place(mesh, abstract, sharding.config_rules(config), int(config.min_shard_size))
    n_dev = int(np.prod(list(mesh.shape.values())))
    n_params = int(sum(math.prod(a.shape) for a in jax.tree.leaves(abstract["params"])))
    out = {
        "mesh": dict(mesh.shape), "devices": n_dev, "batch_size": batch, "in_shape": list(in_shape),
        "out_shape": list(out_shape), "params": n_params,
        "param_bytes": placement.total_bytes("params"), "opt_bytes": placement.total_bytes("opt_state"),
        "param_bytes_per_device": placement.bytes_per_device("params"),
        "opt_bytes_per_device": placement.bytes_per_device("opt_state"),
        "unsplit": placement.unsplit,
        "flops_per_example_model": None,
        "platform": str(mesh.devices.flat[0].platform),
        "bfloat16_compute": str(config.model.get("dtype", "float32")) == "bfloat16" or (
            function_loss.enabled(config) and function_loss.settings(config)["dtype"] == "bfloat16"),
    }
    try:
        from dnd_jax.models import hyperconv

        if isinstance(model, hyperconv.HyperConv):
            out["flops_per_example_model"] = hyperconv.flops_per_example(model, in_shape)
    except ImportError:  # pragma: no cover
        pass
    if not compile:
        return out
    state_sh = placement.shardings
    batch_sh, rep = sharding.batch_sharding(mesh, 4), sharding.replicated(mesh)
    fl_loss, fl_sh, fl_args = None, (), ()
    if function_loss.enabled(config):  # the base LM (placed by config.sharding) and one step's examples join
        fl_loss, fl_sh, fl_args, out["function_loss"] = _function_loss_inputs(config, mesh, batch, out_shape)
    train_step, _ = trainer.make_steps(models.for_shardings(model, state_sh["params"]), tx, schedule, config, fl_loss)
    step = jax.jit(train_step, in_shardings=(state_sh, batch_sh, batch_sh, rep, *fl_sh), out_shardings=(state_sh, rep),
                   donate_argnums=(0,))
    sds = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    args = (sds, jax.ShapeDtypeStruct((batch, *in_shape), jnp.float32, sharding=batch_sh),
            jax.ShapeDtypeStruct((batch, *out_shape), jnp.float32, sharding=batch_sh),
            jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32, sharding=rep), *fl_args)
    compiled = step.lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else (cost or {})
    mem = compiled.memory_analysis()
    flops = float(cost.get("flops", float("nan")))
    out.update({
        "flops_per_step_per_device": flops, "flops_per_step": flops * n_dev,
        "bytes_accessed_per_device": float(cost.get("bytes accessed", float("nan"))),
    })
    if mem is not None:
        m = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
        out["memory_per_device"] = {**m, "peak": m["argument"] + m["output"] - m["alias"] + m["temp"]}
    return out


def _function_loss_inputs(config, mesh, batch: int, out_shape) -> tuple:
    """(loss, shardings, abstract inputs, description) of the function-space term for a dry run."""
    from dnd_jax import jax_lm
    from dnd_jax.weights import layout as layout_lib
    from dnd_jax.weights import lora as lora_lib
    from dnd_jax.weights import normalization

    s = function_loss.settings(config)
    lm_cfg = lm_config(config)
    layout = layout_lib.build_layout(lora_shapes(config), tuple(config.layout.token_shape))
    if tuple(layout.grid_shape) != tuple(out_shape):
        raise ValueError(f"function_loss dry run: the architecture's LoRA grid {layout.grid_shape} is not the "
                         f"generator's {tuple(out_shape)} (a zoo of other shapes)")
    norm = normalization.Normalizer.identity(layout.mask())
    max_answer = int(s["max_answer"]) or int(s["max_len"]) - 1
    loss = function_loss.make_loss(lm_cfg, layout, norm, lora_lib.lora_scaling({"r": int(config.lora.r),
                                   "lora_alpha": float(config.lora.alpha)}), max_answer, bool(s["remat"]),
                                   row_sharding=sharding.batch_sharding(mesh, 4))
    rep = sharding.replicated(mesh)
    e, length = int(s["examples"]), int(s["max_len"])
    lm = jax_lm.abstract_params(lm_cfg, function_loss.dtype(config))
    placement = sharding.place(mesh, {function_loss.BASE_PREFIX: lm}, sharding.config_rules(config),
                               int(config.min_shard_size))
    lm_sh = placement.shardings[function_loss.BASE_PREFIX]
    shardings = (lm_sh, rep, sharding.batch_sharding(mesh, 3),
                 sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 2))
    args = (jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), lm, lm_sh),
            jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
            jax.ShapeDtypeStruct((batch, e, length), jnp.int32, sharding=shardings[2]),
            jax.ShapeDtypeStruct((batch, e), jnp.int32, sharding=shardings[3]),
            jax.ShapeDtypeStruct((batch, e), jnp.int32, sharding=shardings[4]))
    desc = {"weight": float(s["weight"]), "examples_per_row": e, "max_len": length, "max_answer": max_answer,
            "remat": bool(s["remat"]), "base_lm_params": int(sum(math.prod(a.shape) for a in jax.tree.leaves(lm))),
            "base_lm_dtype": str(s["dtype"]), "base_lm_bytes": placement.total_bytes(),
            "base_lm_bytes_per_device": placement.bytes_per_device(), "base_lm_unsplit": placement.unsplit,
            # XLA's cost analysis counts the scan over layers once: the term's FLOPs are counted analytically.
            "flops_per_step_analytic": jax_lm.step_flops(lm_cfg, batch * e, length, max_answer, int(config.lora.r),
                                                         bool(s["remat"]))}
    return loss, shardings, args, desc


def summary(r: dict) -> str:
    """A few readable lines of :func:`estimate`'s result."""
    gib = 2**30
    lines = [f"mesh {r['mesh']} ({r['devices']} devices), global batch {r['batch_size']}, "
             f"conditions {tuple(r['in_shape'])} -> tokens {tuple(r['out_shape'])}",
             f"parameters {r['params'] / 1e6:.2f}M: {r['param_bytes'] / gib:.3f} GiB "
             f"({r['param_bytes_per_device'] / gib:.3f} GiB/device); optimizer state {r['opt_bytes'] / gib:.3f} GiB "
             f"({r['opt_bytes_per_device'] / gib:.3f} GiB/device)"]
    if "flops_per_step" in r:
        lines.append(f"FLOPs/step {r['flops_per_step'] / 1e12:.2f} T ({r['flops_per_step_per_device'] / 1e12:.3f} T/device)")
    if "memory_per_device" in r:
        m = r["memory_per_device"]
        lines.append("per-device memory (XLA): " + ", ".join(f"{k} {v / gib:.3f} GiB" for k, v in m.items()))
        if r.get("platform") == "cpu" and r.get("bfloat16_compute"):
            lines.append("note: XLA:CPU has no bfloat16 convolutions or dots and holds float32 copies: for this "
                         "bfloat16 program its temporaries overstate a GPU's (about 2x on an H200: "
                         "docs/bench/device_h200.md); arguments and float32 programs match")
    if "function_loss" in r:
        f = r["function_loss"]
        lines.append(f"function loss: base LM {f['base_lm_params'] / 1e6:.1f}M params in {f['base_lm_dtype']} "
                     f"({f['base_lm_bytes_per_device'] / gib:.3f} GiB/device of {f['base_lm_bytes'] / gib:.3f} GiB), "
                     f"{f['examples_per_row']} examples x {f['max_len']} tokens per row; the term's FLOPs/step "
                     f"{f['flops_per_step_analytic'] / 1e12:.2f} T (analytic: XLA's count above has its scan over "
                     "layers once)")
    for u in r["unsplit"]:
        lines.append(f"UNSPLIT {u}")
    return "\n".join(lines)


def to_json(r: dict) -> str:
    return json.dumps(r, indent=1, default=str)


def run(config, workdir=None, devices=None) -> dict:
    """``train --dry_run``: the estimate for ``config.mesh`` over ``devices`` (default: all).

    LoRA shapes from the zoo ``train`` would read when there is one, else from the base model's
    architecture; nothing is written.
    """
    from dnd_jax import plan as plan_lib
    from dnd_jax import zoo

    lora = None
    if workdir is not None:
        try:
            zw = plan_lib.find_zoo_workdir(config, workdir)
            task = plan_lib.training_tasks(config)[0]
            lora = {k: tuple(v.shape) for k, v in zoo.load_state_dict(zoo.checkpoints(zw, task)[0]).items()}
        except (ValueError, FileNotFoundError, IndexError):
            lora = None
    in_shape, out_shape = shapes_for(config, lora)
    devices = list(jax.devices() if devices is None else devices)
    mesh = sharding.make_mesh(config.mesh, devices)
    result = estimate(config, mesh, in_shape, out_shape)
    result["lora_shapes_from"] = "zoo" if lora else f"arch {arch_of(config)}"
    return result
