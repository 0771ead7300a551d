"""LoRA math in one place: the scaling ``s``, the update ``dW = s B A``, factors, products and merges.

peft applies a LoRA as ``W' = W + s B A`` with ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
rsLoRA); ``A`` is ``(r, in)`` and ``B`` ``(out, r)``. Everything here works on peft state dicts
(``<module>.lora_A.weight`` / ``<module>.lora_B.weight``) and never builds a dense ``dW`` unless
asked (:func:`delta`):

* :func:`lora_scaling`, :func:`alpha_for_scaling`: ``s`` from a config, and back;
* :func:`lora_factors` / :func:`load_factors`: ``{module: (A, s B)}``;
* :func:`update_gram`: ``<dW_i, dW_j>_F`` from the factors alone,
  ``<s B A, t D C>_F = s t sum((B^T D) * (A C^T))``;
* :func:`stack_factors`: ``sum_k c_k B_k A_k`` as one LoRA of rank ``sum r_k`` (exact merge);
* :func:`delta`: the dense ``s B A`` (numpy or torch arrays).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dnd_jax.errors import InputError

A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
Factors = dict[str, tuple[np.ndarray, np.ndarray]]  # module -> (A (r, in), s * B (out, r))


def lora_scaling(cfg: Mapping, r: int | None = None) -> float:
    """peft's multiplier of ``B @ A``: ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA)."""
    r = int(cfg["r"] if r is None else r)
    alpha = float(cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def alpha_for_scaling(scale: float, r: int, rslora: bool = False) -> float:
    """The ``lora_alpha`` that gives a rank-``r`` LoRA the scaling ``scale`` (inverse of :func:`lora_scaling`)."""
    return scale * math.sqrt(r) if rslora else scale * r


def module_path(lora_key: str) -> str:
    """``base_model.model.<module>.lora_A.weight`` -> ``<module>``."""
    key = lora_key.removeprefix("base_model.model.")
    for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_A.default.weight", ".lora_B.default.weight"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    raise ValueError(f"'{lora_key}' is not a LoRA A/B tensor name")


def delta(a, b, scale: float):
    """The dense update ``scale * (B @ A)`` of one module (numpy or torch; computed in their dtype)."""
    return scale * (b @ a)


def lora_factors(state_dict: Mapping[str, np.ndarray], scaling: float) -> Factors:
    """``{module: (A, scaling * B)}`` from a peft LoRA state dict (lora_A/lora_B keys only)."""
    out: Factors = {}
    for key, a in state_dict.items():
        if key.endswith(A_SUFFIX):
            module = key[: -len(A_SUFFIX)]
            b_key = module + B_SUFFIX
            if b_key not in state_dict:
                raise InputError(f"{key} has no matching {b_key}")
            b = np.asarray(state_dict[b_key], np.float32)
            a = np.asarray(a, np.float32)
            if b.shape[1] != a.shape[0]:
                raise InputError(f"{module}: lora_B {b.shape} does not match lora_A {a.shape}")
            out[module] = (a, scaling * b)
    if not out:
        raise InputError("no lora_A/lora_B pairs in the state dict")
    return out


def load_factors(adapter_dir: str | Path) -> Factors:
    """Factors of a peft adapter folder or zoo checkpoint (safetensors only)."""
    from dnd_jax.weights import peft_io

    state_dict, config = peft_io.read_adapter(adapter_dir)
    return lora_factors(state_dict, lora_scaling(config))


def update_gram(adapters: Sequence[Factors]) -> np.ndarray:
    """``G[i, j] = <dW_i, dW_j>_F`` summed over modules (float64), from the factors alone."""
    if not adapters:
        raise ValueError("update_gram needs at least one adapter")
    modules = sorted(adapters[0])
    for i, ad in enumerate(adapters):
        if sorted(ad) != modules:
            raise InputError(f"adapter {i} targets other modules than adapter 0")
    n = len(adapters)
    gram = np.zeros((n, n), np.float64)
    for module in modules:
        # Cast first: the products are accumulated in float64 (nearly orthogonal updates need it).
        a_all = np.concatenate([ad[module][0] for ad in adapters], axis=0).astype(np.float64)  # (R, in)
        b_all = np.concatenate([ad[module][1] for ad in adapters], axis=1).astype(np.float64)  # (out, R)
        starts = np.cumsum([0] + [ad[module][0].shape[0] for ad in adapters])[:-1]
        m = (a_all @ a_all.T) * (b_all.T @ b_all)
        gram += np.add.reduceat(np.add.reduceat(m, starts, axis=0), starts, axis=1)
    return gram


def stack_factors(state_dicts: Sequence[Mapping[str, np.ndarray]], coefs: Sequence[float]) -> dict[str, np.ndarray]:
    """One LoRA state dict whose ``B A`` is ``sum_k coefs[k] B_k A_k`` exactly: ``A = [A_1; ...; A_K]``
    (rows), ``B = [c_1 B_1, ..., c_K B_K]`` (columns). Every state dict has the same (lora_A/lora_B) keys."""
    merged = {}
    for key in sorted(state_dicts[0]):
        if ".lora_A." in key:
            merged[key] = np.concatenate([sd[key] for sd in state_dicts], axis=0)
        else:
            merged[key] = np.concatenate([c * sd[key] for c, sd in zip(coefs, state_dicts, strict=True)], axis=1)
    return merged
