"""How cost grows with the adapter: decoder size, FLOPs, memory and generation time vs LoRA size.

    python bench/scaling.py --repeats 3

For each base layout (SmolLM2-135M with ``configs/smollm2_commonsense.py``'s decoder, Qwen2.5-0.5B
with ``configs/qwen25_0p5b_commonsense.py``'s), targets (q,v or all-linear) and rank (4, 8, 16,
32): the weight-token layout (token shape ``(rows, r)``: the config's rows, one column per rank),
the decoder built for it, its XLA forward FLOPs and memory (``compiled.memory_analysis()``:
arguments + outputs + temporaries), and the decoder forward time at batch 1 (min/median/max).
Generation adds the encoder (``bench/cold_start.py``), which does not depend on the adapter.
Writes ``docs/bench/scaling.json`` and ``docs/bench/scaling.png``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fixtures  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed forwards per variant (Qwen: at most 2).")
_RANKS = flags.DEFINE_list("ranks", ["4", "8", "16", "32"], "LoRA ranks.")
_BASES = flags.DEFINE_list("bases", ["smollm2_commonsense", "qwen25_0p5b_commonsense"], "Configs (base layouts).")
_OUT = flags.DEFINE_string("out", str(common.DOCS), "Output folder.")
TARGETS = {"q,v": ("q_proj", "v_proj"),
           "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}


def measure(config, r: int, modules: tuple[str, ...], repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dnd_jax import models
    from dnd_jax.models import hyperconv
    from dnd_jax.weights import layout as layout_lib

    shapes = fixtures.lora_shapes(fixtures.arch_of(config), r, modules)
    layout = layout_lib.build_layout(shapes, (int(config.layout.token_shape[0]), r))
    in_shape = (int(config.conditions.num_prompts), int(config.conditions.max_len), 384)
    model = models.build(config.model_name, config.model, in_shape, layout.grid_shape)
    cond = jnp.asarray(np.random.default_rng(0).normal(size=(1, *in_shape)).astype(np.float32))
    params = jax.jit(model.init)(jax.random.key(0), cond)
    compiled = jax.jit(model.apply).lower(params, cond).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    mem_bytes = {k: int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp")}
    return {"lora_params": layout.num_params, "tokens": layout.num_tokens, "token_shape": list(layout.token_shape),
            "grid_shape": list(layout.grid_shape), "decoder_params": hyperconv.param_count(params),
            "forward_flops_xla": float(cost["flops"]), "memory_bytes": mem_bytes,
            "memory_total_mb": sum(mem_bytes.values()) / 2**20,
            "forward_s": common.repeat(lambda: compiled(params, cond), repeats)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = [("decoder_params", "decoder parameters"), ("memory_total_mb", "forward memory (MiB, XLA)"),
              ("forward_min_s", "decoder forward, batch 1 (s, min)")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for (base, tgt), marker in zip(sorted({(r["base"], r["targets"]) for r in rows}), "osD^", strict=False):
            pts = sorted((r["lora_params"], r[key], r["rank"]) for r in rows if (r["base"], r["targets"]) == (base, tgt))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{base.split('_')[0]} {tgt}")
            for x, y, rank in pts:
                ax.annotate(f"r{rank}", (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("LoRA parameters")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv) -> None:
    del argv
    import importlib

    res = common.Result("scaling", versions=common.versions("jax", "jaxlib", "flax"), rows=[])
    for base in _BASES.value:
        config = importlib.import_module(f"configs.{base}").get_config()
        reps = min(_REPEATS.value, 2) if "qwen" in base else _REPEATS.value
        for tgt, modules in TARGETS.items():
            for r in (int(x) for x in _RANKS.value):
                row = {"base": base, "targets": tgt, "rank": r, "model": config.model.to_dict(),
                       **measure(config, r, modules, reps)}
                row["forward_min_s"] = row["forward_s"]["min"]
                res["rows"].append(row)
                print(f"{base} {tgt} r={r}: lora {row['lora_params']:,} tokens {row['tokens']} decoder "
                      f"{row['decoder_params']:,} fwd {row['forward_flops_xla'] / 1e9:.1f} GFLOP "
                      f"{row['memory_total_mb']:.0f} MiB {row['forward_min_s']:.3f}s")
    out = Path(_OUT.value)
    res.write(out)
    plot(res["rows"], out / "scaling.png")
    print(f"wrote {out / 'scaling.png'}")


if __name__ == "__main__":
    app.run(main)
