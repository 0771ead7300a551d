"""Similarity centering: the generator predicts a residual from a prompt-weighted mean of its training tasks.

With the default ``config.center.mode = "mean"`` the generator's (normalized) targets are the tokens
themselves, and ``per_element`` normalization makes that the residual from the training zoo's mean.
``"similarity"`` subtracts, per task, the **similarity-weighted mean** of the *other* training tasks'
tokens, so the generator learns what the prompts say beyond what the most similar tasks already give:

    center(prompts) = sum_j w_j * zbar_j,   w = softmax_j(cos(d(prompts), d_j) / temperature)

``zbar_j`` is task j's mean normalized token grid (over its training checkpoints) and ``d`` a
direction in the sentence encoder's space: each prompt's condition map ``(L, C)`` (the encoder's
token states) mean-pooled over its real (non-zero) rows and L2-normalized, averaged over prompts and
normalized again (the all-MiniLM sentence embedding, up to the ``L``-token truncation). In training,
task i's center excludes task i itself (leave-one-out), exactly as a held-out target is excluded at
generation. The generator's output is ``model(cond) + center(prompts)`` before denormalization: with
a zero model output the generated adapter is the similarity-weighted merge of the training tasks'
LoRA factors, so the generator starts from that label-free baseline and learns a correction.

The bank (``zbar`` for every training task, their directions and task names) is written once next to
the generator's checkpoints (``center_bank.safetensors``, sha256 in the metadata) and verified on
every load. It is as large as one adapter per training task (float32).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODES = ("mean", "similarity")
# Where a prompt set's direction comes from: "encoder", the generator's own condition maps (truncated to
# conditions.max_len tokens); "sentence", the embedded MiniLM's sentence embeddings of the whole prompts
# (the similarity-weighted merge baseline's cosines, :func:`dnd_jax.baselines.mean_directions`, so the
# center weighs tasks exactly as it does).
DIRECTIONS = ("encoder", "sentence")
# mode 'mean': what generators before did; directions 'encoder': what similarity centering before did.
DEFAULTS = {"directions": "encoder", "max_prompts": 256, "mode": "mean", "temperature": 0.05}


def settings(config) -> dict:
    """``config.center`` over :data:`DEFAULTS` (absent: the defaults); raises ValueError naming a bad value."""
    center = config.get("center", None)
    c = DEFAULTS | (center.to_dict() if center is not None else {})
    if c["mode"] not in MODES:
        raise ValueError(f"center.mode must be one of {MODES}, got '{c['mode']}'")
    if c["directions"] not in DIRECTIONS:
        raise ValueError(f"center.directions must be one of {DIRECTIONS}, got '{c['directions']}'")
    if not float(c["temperature"]) > 0:
        raise ValueError(f"center.temperature must be positive, got {c['temperature']}")
    if not int(c["max_prompts"]) > 0:
        raise ValueError(f"center.max_prompts must be positive, got {c['max_prompts']}")
    return {"mode": c["mode"], "temperature": float(c["temperature"]), "max_prompts": int(c["max_prompts"]),
            "directions": c["directions"]}
BANK_FILE = "center_bank.safetensors"
_CHUNK = 1 << 20  # columns per GEMM chunk while centering


class BankError(ValueError):
    """A center bank that is missing, tampered with, or does not fit its generator."""


def sentence_directions(cond: np.ndarray) -> np.ndarray:
    """``(P, L, C)`` condition maps -> ``(P, C)`` unit vectors: mean over each prompt's non-zero rows."""
    cond = np.asarray(cond, np.float64)
    real = np.any(cond != 0, axis=-1, keepdims=True)  # (P, L, 1): padding rows are exactly zero
    pooled = (cond * real).sum(axis=1) / np.maximum(real.sum(axis=1), 1)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def direction(cond: np.ndarray) -> np.ndarray:
    """One unit ``(C,)`` direction for a prompt set's conditions ``(P, L, C)``."""
    mean = sentence_directions(cond).mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def weights(d: np.ndarray, bank_dirs: np.ndarray, temperature: float, exclude: int | None = None) -> np.ndarray:
    """Softmax over the bank's tasks of cos(d, d_j) / temperature (task ``exclude`` gets weight 0)."""
    if temperature <= 0:
        raise ValueError(f"center.temperature must be positive, got {temperature}")
    sims = np.asarray(bank_dirs, np.float64) @ np.asarray(d, np.float64)
    if exclude is not None:
        if len(sims) < 2:
            raise ValueError("leave-one-out similarity centering needs at least 2 training tasks")
        sims[exclude] = -np.inf
    z = np.exp((sims - sims.max()) / temperature)
    return z / z.sum()


@dataclasses.dataclass
class Bank:
    """Mean normalized tokens ``(K, T, h, w)`` and unit directions ``(K, C)`` of K training tasks."""

    tasks: list[str]
    tokens: np.ndarray
    dirs: np.ndarray
    temperature: float
    max_prompts: int

    def center(self, cond: np.ndarray, exclude: int | None = None) -> np.ndarray:
        """The ``(T, h, w)`` center for a prompt set's conditions ``(P, L, C)``."""
        return self.center_at(direction(cond), exclude)

    def center_at(self, d: np.ndarray, exclude: int | None = None) -> np.ndarray:
        """The ``(T, h, w)`` center for a prompt set's unit direction ``d`` (``(C,)``)."""
        w = weights(d, self.dirs, self.temperature, exclude)
        return np.tensordot(w, self.tokens, axes=1).astype(np.float32)

    def serialize(self) -> bytes:
        """The safetensors bytes (identical on every process: the sha256 in the metadata comes from them)."""
        from safetensors.numpy import save

        return save({"tokens": np.ascontiguousarray(self.tokens, np.float32),
                     "dirs": np.ascontiguousarray(self.dirs, np.float32)},
                    metadata={"tasks": "\n".join(self.tasks), "temperature": repr(float(self.temperature)),
                              "max_prompts": str(int(self.max_prompts))})

    def save(self, path: str | Path, data: bytes | None = None) -> str:
        """Atomic write of :meth:`serialize` (or ``data``); returns the bytes' sha256."""
        from dnd_jax import assets

        data = self.serialize() if data is None else data
        assets.write_bytes_atomic(Path(path), data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | Path, sha256: str, token_shape: Sequence[int]) -> Bank:
        """The bank at ``path``, refused unless its sha256 and token shape are those recorded."""
        from safetensors import SafetensorError, safe_open

        from dnd_jax import assets

        path = Path(path)
        if not path.is_file():
            raise BankError(f"{path} is missing: this generator centers on its training tasks and needs that file")
        if assets.file_sha256(path) != sha256:
            raise BankError(f"{path} does not match the sha256 in its generator's metadata: it was changed or truncated")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                tokens, dirs = f.get_tensor("tokens"), f.get_tensor("dirs")
        except (SafetensorError, OSError, KeyError) as e:
            raise BankError(f"{path} is not a readable center bank: {e}") from None
        tasks = meta.get("tasks", "").split("\n")
        if tuple(tokens.shape[1:]) != tuple(token_shape) or len(tasks) != len(tokens) or len(dirs) != len(tokens):
            raise BankError(f"{path} holds {len(tokens)} x {list(tokens.shape[1:])} tokens for {len(tasks)} tasks; "
                            f"the generator needs {list(token_shape)} per task")
        if not (np.isfinite(tokens).all() and np.isfinite(dirs).all()):
            raise BankError(f"{path} holds non-finite values")
        return cls(tasks, tokens, dirs, float(meta["temperature"]), int(meta["max_prompts"]))


def fit(tasks: Sequence[str], conds: Sequence[np.ndarray], train_tokens: np.ndarray, train_task: np.ndarray,
        temperature: float, max_prompts: int, dirs: np.ndarray | None = None) -> Bank:
    """The bank of normalized training tokens: per-task means and prompt directions.

    ``conds[t]`` are task t's saved prompt conditions ``(P_t, L, C)`` (the first ``max_prompts`` are used,
    as at generation); ``dirs``: the tasks' directions given instead (``center.directions = "sentence"``).
    """
    tokens = np.zeros((len(tasks), *train_tokens.shape[1:]), np.float32)
    for t in range(len(tasks)):
        rows = np.flatnonzero(train_task == t)
        if not len(rows):
            raise ValueError(f"training task '{tasks[t]}' has no training checkpoint to center on")
        tokens[t] = train_tokens[rows].mean(axis=0, dtype=np.float64)
    if dirs is None:
        dirs = np.stack([direction(c[:max_prompts]) for c in conds])
    dirs = np.asarray(dirs, np.float32)
    if dirs.shape[0] != len(tasks):
        raise ValueError(f"{len(dirs)} directions for {len(tasks)} training tasks")
    return Bank(list(tasks), tokens, dirs, float(temperature), int(max_prompts))


def subtract_centers(bank: Bank, arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """In place: every row of each ``(tokens, task_of_row)`` pair minus its task's leave-one-out center.

    Returns the ``(K, K)`` weights used (row i: task i's center, zero on the diagonal).
    """
    k = len(bank.tasks)
    w = np.stack([weights(bank.dirs[i], bank.dirs, bank.temperature, exclude=i) for i in range(k)]).astype(np.float32)
    flat_bank = bank.tokens.reshape(k, -1)
    for start in range(0, flat_bank.shape[1], _CHUNK):
        centers = w @ flat_bank[:, start:start + _CHUNK]  # (K, chunk)
        for tokens, task_of in arrays:
            flat = tokens.reshape(len(tokens), -1)
            flat[:, start:start + _CHUNK] -= centers[task_of]
    return w
