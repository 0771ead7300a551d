"""Reading the checkpoint zoo written by ``python -m dnd_jax.collect``.

Layout of ``<workdir>/zoo``::

    manifest.json                       zoo summary: base model, LoRA config, per-task summaries
    <task>/manifest.json                task: split sizes, checkpoints (step, loss), training wall time
    <task>/prompts.jsonl                the task's unlabeled train prompts ({"prompt": ...} per line)
    <task>/ckpt_<step:06d>/             one peft adapter folder per kept checkpoint:
        adapter_model.safetensors, adapter_config.json, dnd_checkpoint.json (step, loss, sha256)

A checkpoint folder is valid only if ``dnd_checkpoint.json`` exists and the safetensors file's
sha256 matches it; anything else (a partial or corrupt write) is ignored here and redone by collect.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dnd_jax import assets

CKPT_META = "dnd_checkpoint.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def zoo_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "zoo"


def task_dir(workdir: str | Path, task: str) -> Path:
    return zoo_dir(workdir) / task


def ckpt_name(step: int) -> str:
    return f"ckpt_{step:06d}"


def is_valid_checkpoint(path: Path) -> bool:
    """True when the folder is a complete, uncorrupted checkpoint written by collect."""
    meta, weights = path / CKPT_META, path / ADAPTER_WEIGHTS
    if not (meta.is_file() and weights.is_file() and (path / ADAPTER_CONFIG).is_file()):
        return False
    try:
        expected = json.loads(meta.read_text())["sha256"]
    except (ValueError, KeyError):
        return False
    return assets.file_sha256(weights) == expected


def checkpoint_meta(path: Path) -> dict:
    return json.loads((Path(path) / CKPT_META).read_text())


def checkpoints(workdir: str | Path, task: str) -> list[Path]:
    """Valid checkpoint folders of a task, by step (raises if the task has none)."""
    tdir = task_dir(workdir, task)
    found = sorted(p for p in tdir.glob("ckpt_*") if p.is_dir() and is_valid_checkpoint(p))
    if not found:
        raise FileNotFoundError(f"no valid checkpoints for task '{task}' under {tdir} (run dnd_jax.collect)")
    return found


def final_checkpoint(workdir: str | Path, task: str) -> Path:
    return checkpoints(workdir, task)[-1]


def tasks(workdir: str | Path) -> list[str]:
    """Tasks that have a task manifest in the zoo."""
    return sorted(p.parent.name for p in zoo_dir(workdir).glob("*/manifest.json"))


def task_manifest(workdir: str | Path, task: str) -> dict:
    path = task_dir(workdir, task) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"task '{task}' is not in the zoo at {zoo_dir(workdir)} (no {path.name})")
    return json.loads(path.read_text())


def manifest(workdir: str | Path) -> dict:
    return json.loads((zoo_dir(workdir) / "manifest.json").read_text())


def prompts(workdir: str | Path, task: str) -> list[str]:
    path = task_dir(workdir, task) / "prompts.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def load_state_dict(ckpt: str | Path) -> dict[str, np.ndarray]:
    """A checkpoint's LoRA tensors (peft key names, float32 numpy), read with safetensors."""
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(str(Path(ckpt) / ADAPTER_WEIGHTS)).items()}


def adapter_config(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / ADAPTER_CONFIG).read_text())
