"""Real-shaped generators for benchmarks: the decoder's layout and size, not its quality, set its speed.

A synthetic zoo (``dnd_jax.testing``) with the LoRA shapes of a real base model (SmolLM2-135M or
Qwen2.5-0.5B, any rank and target modules), and a generator trained a few steps on it with a real
config (conditions come from the real MiniLM encoder). Cached under ``workdir/bench/``: built once.

    python bench/fixtures.py --config configs/smollm2_commonsense.py --out workdir/bench/gen_smollm2
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (layers, hidden, kv_dim, intermediate) of Llama-style bases.
ARCHS = {
    "smollm2": (30, 576, 192, 1536),  # SmolLM2-135M: 9 heads, 3 kv heads, head dim 64
    "qwen25_0p5b": (24, 896, 128, 4864),  # Qwen2.5-0.5B: 14 heads, 2 kv heads, head dim 64
    "tiny_llama": (2, 32, 16, 64),
}
FIXTURE_TASKS = ("arc_e", "piqa", "boolq")


def arch_of(config) -> str:
    """The ARCHS key for ``config.base_model`` (Qwen configs load an HF folder: ``kind='hf_dir'``)."""
    kind = str(config.base_model.kind)
    return {"hf_dir": "qwen25_0p5b"}.get(kind, kind)


def lora_shapes(arch: str, r: int, modules) -> dict[str, tuple[int, int]]:
    from dnd_jax import testing

    if arch not in ARCHS:
        raise SystemExit(f"no LoRA shapes for base '{arch}' (known: {sorted(ARCHS)})")
    layers, hidden, kv, inter = ARCHS[arch]
    return testing.tiny_lora_shapes(layers=layers, hidden=hidden, kv=kv, inter=inter, r=int(r), modules=tuple(modules))


def fixture_config(config, steps: int = 2):
    """``config`` trained ``steps`` steps on the fixture tasks (nothing held out)."""
    config = config.copy_and_resolve_references()
    config.tasks = FIXTURE_TASKS
    config.holdout = ()
    config.experiment.cross_domain = ()
    config.total_steps = int(steps)
    config.warmup_steps = 0
    config.ckpt_steps = int(steps)
    config.eval_steps = int(steps)
    config.log_steps = 1
    config.val_checkpoints_per_task = 1
    config.batch_size = 1
    config.mesh = (("data", 1), ("model", 1))
    return config


def make_generator(config, out: str | Path, steps: int = 2, arch: str | None = None) -> Path:
    """A generator workdir for ``config``'s decoder and LoRA shapes; reused when already built."""
    from dnd_jax import testing, train

    out = Path(out)
    stamp = out / "fixture.json"
    arch = arch or arch_of(config)
    key = {"arch": arch, "lora": config.lora.to_dict(), "model": config.model.to_dict(),
           "token_shape": list(config.layout.token_shape), "conditions": config.conditions.to_dict(), "steps": steps}
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(key)):
        return out
    if out.exists():
        raise SystemExit(f"{out} exists but is not this fixture (see {stamp}); remove it or pick another --out")
    shapes = lora_shapes(arch, config.lora.r, config.lora.target_modules)
    testing.make_synthetic_zoo(out, tasks=FIXTURE_TASKS, num_ckpts=2, num_prompts=max(64, 2 * int(config.conditions.num_prompts)),
                               shapes=shapes, r=int(config.lora.r))
    train.train_and_evaluate(fixture_config(config, steps), out)
    stamp.write_text(json.dumps(key, indent=2) + "\n")
    return out


def main(argv) -> None:
    from absl import flags

    del argv
    print(make_generator(flags.FLAGS.config, flags.FLAGS.out, flags.FLAGS.steps))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).", lock_config=False)
    flags.DEFINE_string("out", None, "Generator workdir to create.")
    flags.DEFINE_integer("steps", 2, "Training steps.")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
