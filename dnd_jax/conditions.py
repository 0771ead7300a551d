"""Prompt conditions: a frozen sentence encoder's token embeddings, padded to ``L`` tokens.

A prompt becomes an ``(L, C)`` map (``L = config.conditions.max_len``; ``C`` = encoder width, 384
for MiniLM): the encoder's last hidden states truncated to ``L`` tokens (the encoder sees at most
``L`` tokens) and zero-padded. The encoder is frozen, so each task's conditions are computed once
and cached under ``<workdir>/conditions/`` keyed by encoder content, ``L`` and the prompts; the
training step only ever reads that cache. Generation calls :func:`encode_prompts` on new prompts.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dnd_jax import assets, zoo

ENCODE_BATCH = 64


def encoder_dir(config) -> Path:
    """The sentence-transformers folder named by ``config.encoder``."""
    kind = config.encoder.kind
    if kind == "minilm":
        return assets.minilm_dir()
    if kind == "path":
        path = Path(config.encoder.path)
        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"encoder.path {path} is not a sentence-transformers folder (no modules.json)")
        return path
    raise ValueError(f"unknown encoder.kind '{kind}' (expected 'minilm' or 'path')")


@functools.lru_cache(maxsize=8)
def _folder_hash(path: str, stamp: tuple) -> str:
    del stamp  # part of the cache key only: a changed file changes the hash
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        h.update(assets.file_sha256(f).encode())
    return h.hexdigest()[:16]


def encoder_identity(config) -> dict:
    """What makes two condition arrays comparable: encoder content hash and ``L``."""
    path = encoder_dir(config)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return {"kind": str(config.encoder.kind), "path": str(path), "sha": _folder_hash(str(path), stamp),
            "max_len": int(config.conditions.max_len)}


@functools.lru_cache(maxsize=2)
def _load_encoder(path: str):
    import torch
    from sentence_transformers import SentenceTransformer

    with torch.inference_mode():
        model = SentenceTransformer(path, device="cpu")
    model.eval()
    return model


@functools.lru_cache(maxsize=2)
def _bert_encoder(path: str):
    from dnd_jax import encoder

    return encoder.BertEncoder.load(path)


def token_lengths(prompts: Sequence[str], config) -> list[int]:
    """Each prompt's encoder token count (special tokens included) before truncation to ``L``."""
    folder = encoder_dir(config)
    from dnd_jax import encoder

    if encoder.supports(folder):
        return [len(ids) for ids in _bert_encoder(str(folder)).token_ids(prompts, max_len=None)]
    tok = _load_encoder(str(folder)).tokenizer
    # verbose=False: callers count lengths and report them, without the tokenizer's own warning
    return [len(ids) for ids in tok(list(prompts), verbose=False)["input_ids"]]


def encode(prompts: Sequence[str], config, batch_size: int = ENCODE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """``(P, L, C)`` float32 token embeddings (zero rows past each prompt's length) and ``(P,)`` lengths.

    BERT encoders (the embedded MiniLM) run in JAX from their safetensors (``dnd_jax.encoder``: no
    torch import, equal to sentence-transformers within 1e-5, ``tests/test_encoder.py``); others
    through sentence-transformers.
    """
    if not prompts:
        raise ValueError("no prompts to encode")
    max_len = int(config.conditions.max_len)
    folder = encoder_dir(config)
    from dnd_jax import encoder

    if encoder.supports(folder):
        return _bert_encoder(str(folder))(list(prompts), max_len, batch_size)
    import torch

    model = _load_encoder(str(encoder_dir(config)))
    model.max_seq_length = max_len  # truncate inside the tokenizer: the encoder sees L tokens
    with torch.inference_mode():
        out = model.encode(list(prompts), output_value="token_embeddings", batch_size=batch_size,
                           show_progress_bar=False, convert_to_numpy=False)
    dim = int(out[0].shape[-1])
    emb = np.zeros((len(prompts), max_len, dim), np.float32)
    counts = np.zeros((len(prompts),), np.int32)
    for i, t in enumerate(out):
        n = min(int(t.shape[0]), max_len)
        emb[i, :n] = t[:n].float().cpu().numpy()
        counts[i] = n
    return emb, counts


def encode_prompts(prompts: Sequence[str], config) -> np.ndarray:
    """``(P, L, C)`` float32 conditions of ``prompts`` (what the generator consumes per prompt)."""
    return encode(prompts, config)[0]


def _prompts_hash(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n\x00".join(prompts).encode()).hexdigest()[:16]


def cache_path(workdir: str | Path, task: str, prompts: Sequence[str], config) -> Path:
    key = json.dumps({"encoder": encoder_identity(config), "prompts": _prompts_hash(prompts)}, sort_keys=True)
    return Path(workdir) / "conditions" / f"{task}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def task_conditions(workdir: str | Path, task: str, config, max_prompts: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A zoo task's conditions ``(P, L, C)`` and lengths, from the cache or encoded once and cached.

    ``workdir`` is the folder holding ``zoo/``; ``max_prompts`` > 0 keeps the first that many prompts.
    """
    prompts = zoo.prompts(workdir, task)
    if max_prompts:
        prompts = prompts[:max_prompts]
    if not prompts:
        raise ValueError(f"task '{task}' has no prompts in {zoo.task_dir(workdir, task)}")
    path = cache_path(workdir, task, prompts, config)
    if path.is_file():
        with np.load(path) as f:
            return f["emb"], f["counts"]
    emb, counts = encode(prompts, config)
    buf = io.BytesIO()
    np.savez(buf, emb=emb, counts=counts)
    assets.write_bytes_atomic(path, buf.getvalue())
    return emb, counts
