"""Reading the checkpoint zoo written by ``python -m dnd_jax.collect``.

Layout of ``<workdir>/zoo``::

    manifest.json                       zoo summary: base model, LoRA config, per-task summaries
    <task>/manifest.json                task: split sizes, checkpoints (step, loss), training wall time
    <task>/prompts.jsonl                the task's unlabeled train prompts ({"prompt": ...} per line)
    <task>/ckpt_<step:06d>/             one peft adapter folder per kept checkpoint:
        adapter_model.safetensors, adapter_config.json, dnd_checkpoint.json (step, loss, sha256)

A checkpoint folder is valid only if ``dnd_checkpoint.json`` exists and the safetensors file's
sha256 matches it. While a task is being collected, partial folders are collect's to redo; once its
manifest is written, an invalid or missing folder is an ``IntegrityError`` (never silently dropped),
and tensors read here must be finite.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dnd_jax import assets
from dnd_jax.errors import IntegrityError, MissingError

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
    """Valid checkpoint folders of a task, by step.

    Raises if the task has none, and, once the task is finished (its manifest is written), if any
    checkpoint folder is invalid or one its manifest lists is missing: a corrupt zoo is an error,
    never a silently smaller training set. (An unfinished task's partial folders are collect's to redo.)
    """
    tdir = task_dir(workdir, task)
    dirs = sorted(p for p in tdir.glob("ckpt_*") if p.is_dir())
    found = [p for p in dirs if is_valid_checkpoint(p)]
    mpath = tdir / "manifest.json"
    if mpath.is_file():
        bad = [p.name for p in dirs if p not in found]
        try:
            listed = [c["dir"] for c in json.loads(mpath.read_text()).get("checkpoints", [])]
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"{mpath} is not a valid task manifest") from None
        missing = [d for d in listed if not (tdir / d).is_dir()]
        if bad or missing:
            what = (f"invalid (weights do not match their sha256, or files missing): {bad}" if bad
                    else f"missing: {missing}")
            raise IntegrityError(f"zoo task '{task}' at {tdir} has checkpoint folders {what}; rerun dnd_jax.collect "
                                 f"on that workdir to redo them")
    if not found:
        raise MissingError(f"no valid checkpoints for task '{task}' under {tdir} (run dnd_jax.collect)")
    return found


def final_checkpoint(workdir: str | Path, task: str) -> Path:
    return checkpoints(workdir, task)[-1]


def tasks(workdir: str | Path) -> list[str]:
    """Tasks that have a task manifest in the zoo."""
    return sorted(p.parent.name for p in zoo_dir(workdir).glob("*/manifest.json"))


def task_manifest(workdir: str | Path, task: str) -> dict:
    path = task_dir(workdir, task) / "manifest.json"
    if not path.is_file():
        raise MissingError(f"task '{task}' is not in the zoo at {zoo_dir(workdir)} (no {path.name})")
    return json.loads(path.read_text())


def manifest(workdir: str | Path) -> dict:
    return json.loads((zoo_dir(workdir) / "manifest.json").read_text())


def prompts(workdir: str | Path, task: str) -> list[str]:
    path = task_dir(workdir, task) / "prompts.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def content_hash(workdir: str | Path, task: str) -> str:
    """A task's zoo content: its valid checkpoints (names + recorded weight sha256) and prompts file."""
    import hashlib

    h = hashlib.sha256()
    for ckpt in checkpoints(workdir, task):
        h.update(ckpt.name.encode())
        h.update(str(checkpoint_meta(ckpt)["sha256"]).encode())
    p = task_dir(workdir, task) / "prompts.jsonl"
    h.update(assets.file_sha256(p).encode() if p.is_file() else b"no prompts")
    return h.hexdigest()[:16]


def load_state_dict(ckpt: str | Path) -> dict[str, np.ndarray]:
    """A checkpoint's LoRA tensors (peft key names, float32 numpy), read with safetensors; finite only."""
    from safetensors.numpy import load_file

    sd = {k: v.astype(np.float32) for k, v in load_file(str(Path(ckpt) / ADAPTER_WEIGHTS)).items()}
    bad = [k for k, v in sd.items() if not np.isfinite(v).all()]
    if bad:
        raise IntegrityError(f"zoo checkpoint {ckpt} holds non-finite (NaN/inf) weights in {bad[0]}"
                             f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}")
    return sd


def adapter_config(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / ADAPTER_CONFIG).read_text())
