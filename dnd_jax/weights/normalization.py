"""Normalizing weight tokens before the generator sees them (and undoing it on its output).

Raw LoRA weights have very different scales per matrix: ``lora_A`` keeps roughly its Kaiming init
scale while ``lora_B`` starts at zero and grows with training, and both vary by layer and module.
An unnormalized MSE would be dominated by the largest matrices' scale, so targets are standardized
with statistics fitted on the training zoo (``S`` checkpoints tokenized to ``(S, T, h, w)``):

* ``per_token`` (default): one mean and one std per token, pooled over all checkpoints and that
  token's real elements. It has the grid's own granularity, and since a token never straddles two
  tensors (see ``layout``) it tracks each matrix's local scale. Each estimate pools
  ``S x (real elements)`` numbers, so it is stable for small zoos and for the short last token of a
  matrix. The metadata is two floats per token.
* ``per_element``: a mean and std per grid position over the ``S`` checkpoints. It removes the zoo's
  mean adapter exactly (the generator learns residuals), but every estimate rests on only ``S``
  samples, so std is noisy for small zoos (with ``S = 1`` it is 0 everywhere and floored), and the
  statistics are as large as an adapter. Use it for large zoos.
* ``none``: identity (mean 0, std 1), for ablations.

Every std is floored at ``eps`` (an absolute floor: LoRA weights are ~1e-3..1e-1, so only tokens
that are constant over the zoo hit it; they normalize to exactly 0). Padding positions are 0 after
both :meth:`Normalizer.normalize` and :meth:`Normalizer.denormalize`. numpy inputs are computed in
float64, so ``denormalize(normalize(x)) == x`` up to float32 rounding; jax inputs (traceable under
``jit``) are computed in float32. Leading batch dims broadcast.
"""
from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dnd_jax import assets

MODES = ("per_token", "per_element", "none")
DEFAULT_MODE = "per_token"
DEFAULT_EPS = 1e-6
NORMALIZER_VERSION = 1
_CHUNK_ELEMS = 1 << 24  # float64 elements per chunk while fitting (128 MB)


def _is_jax(x: Any) -> bool:
    return type(x).__module__.split(".")[0] in ("jax", "jaxlib")


def _mask_runs(mask: np.ndarray) -> list[int]:
    """Run lengths of the flattened mask, alternating True, False, True, ... (first may be 0)."""
    flat = np.asarray(mask, bool).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and not flat[0] else runs


def _mask_from_runs(runs: list[int], shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(len(runs)) % 2 == 0
    flat = np.repeat(values, np.asarray(runs, np.int64))
    if flat.size != int(np.prod(shape)):
        raise ValueError(f"mask runs cover {flat.size} elements, expected {int(np.prod(shape))} for {shape}")
    return flat.reshape(shape)


@dataclasses.dataclass(eq=False)
class Normalizer:
    """Fitted standardization of token grids (see the module docstring)."""

    mode: str
    mean: np.ndarray  # float64, (T, 1, 1) or (T, h, w)
    std: np.ndarray  # float64, same shape, >= eps
    mask: np.ndarray  # bool (T, h, w): real positions
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown normalization mode '{self.mode}' (one of {', '.join(MODES)})")
        self.mask = np.asarray(self.mask, bool)
        self.mean = np.asarray(self.mean, np.float64)
        self.std = np.asarray(self.std, np.float64)
        if self.mask.ndim != 3:
            raise ValueError(f"mask must be (T, h, w), got shape {self.mask.shape}")
        for name, arr in (("mean", self.mean), ("std", self.std)):
            if arr.ndim != 3 or np.broadcast_shapes(arr.shape, self.mask.shape) != self.mask.shape:
                raise ValueError(f"{name} of shape {arr.shape} does not broadcast to the grid {self.mask.shape}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @classmethod
    def identity(cls, mask: np.ndarray) -> Normalizer:
        """Mean 0, std 1: only zeroes the padding."""
        mask = np.asarray(mask, bool)
        t = mask.shape[0]
        return cls("none", np.zeros((t, 1, 1)), np.ones((t, 1, 1)), mask)

    @classmethod
    def fit(cls, tokens: Any, mask: Any, mode: str = DEFAULT_MODE, eps: float = DEFAULT_EPS) -> Normalizer:
        """Statistics of a stack of token grids ``(S, T, h, w)`` over the real positions in ``mask``."""
        if mode not in MODES:
            raise ValueError(f"unknown normalization mode '{mode}' (one of {', '.join(MODES)})")
        tokens = np.asarray(tokens)
        mask = np.asarray(mask, bool)
        if tokens.ndim != 4 or tokens.shape[1:] != mask.shape:
            raise ValueError(f"expected tokens (S, *{mask.shape}), got {tokens.shape}")
        if tokens.shape[0] == 0:
            raise ValueError("cannot fit a normalizer on zero checkpoints")
        if mode == "none":
            return cls.identity(mask)
        s = tokens.shape[0]
        chunk = max(1, _CHUNK_ELEMS // max(1, mask.size))
        m = mask.astype(np.float64)
        total = np.zeros(mask.shape)
        for i in range(0, s, chunk):
            total += tokens[i:i + chunk].sum(axis=0, dtype=np.float64)
        if mode == "per_token":
            count = m.sum(axis=(1, 2), keepdims=True) * s
            mean = (total * m).sum(axis=(1, 2), keepdims=True) / np.maximum(count, 1)
        else:
            count = m * s
            mean = total * m / s
        ssd = np.zeros(mask.shape)
        for i in range(0, s, chunk):
            ssd += (((tokens[i:i + chunk].astype(np.float64) - mean) * m) ** 2).sum(axis=0)
        if mode == "per_token":
            ssd = ssd.sum(axis=(1, 2), keepdims=True)
        std = np.maximum(np.sqrt(ssd / np.maximum(count, 1)), eps)
        std = np.where(count > 0, std, 1.0)  # all-padding tokens/positions: identity
        mean = np.where(count > 0, mean, 0.0)
        return cls(mode, mean, std, mask, float(eps))

    def _apply(self, x: Any, inverse: bool) -> Any:
        if tuple(x.shape[-3:]) != self.grid_shape:
            raise ValueError(f"tokens of shape {tuple(x.shape)} do not end in the normalizer's grid {self.grid_shape}")
        if _is_jax(x):
            import jax.numpy as jnp

            xf = jnp.asarray(x, jnp.float32)
            mean, std = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)
            y = xf * std + mean if inverse else (xf - mean) / std
            return jnp.where(jnp.asarray(self.mask), y, 0.0).astype(x.dtype)
        x = np.asarray(x)
        out_dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float32
        rows = x.reshape((-1, *self.grid_shape))
        out = np.empty(rows.shape, out_dtype)
        chunk = max(1, _CHUNK_ELEMS // max(1, self.mask.size))  # bounded float64 temporaries
        for i in range(0, rows.shape[0], chunk):
            y = rows[i:i + chunk].astype(np.float64)
            if inverse:
                y *= self.std
                y += self.mean
            else:
                y -= self.mean
                y /= self.std
            y[:, ~self.mask] = 0.0
            out[i:i + chunk] = y
        return out.reshape(x.shape)

    def normalize(self, tokens: Any) -> Any:
        """Raw tokens (..., T, h, w) -> standardized; padding -> 0. numpy in, numpy out; jax in, jax out."""
        return self._apply(tokens, inverse=False)

    def denormalize(self, tokens: Any) -> Any:
        """Inverse of :meth:`normalize` (generator output -> raw weight tokens); padding -> 0."""
        return self._apply(tokens, inverse=True)

    def to_dict(self) -> dict:
        """JSON-able: stats as flat float lists, the mask as run lengths (small for layout masks)."""
        return {"version": NORMALIZER_VERSION, "mode": self.mode, "eps": self.eps, "grid_shape": list(self.grid_shape),
                "stat_shape": list(self.mean.shape), "mask_runs": _mask_runs(self.mask),
                "mean": self.mean.reshape(-1).tolist(), "std": self.std.reshape(-1).tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        if int(d.get("version", NORMALIZER_VERSION)) != NORMALIZER_VERSION:
            raise ValueError(f"unsupported normalizer version {d.get('version')}")
        grid = tuple(int(v) for v in d["grid_shape"])
        stat = tuple(int(v) for v in d["stat_shape"])
        return cls(mode=str(d["mode"]), mean=np.asarray(d["mean"], np.float64).reshape(stat),
                   std=np.asarray(d["std"], np.float64).reshape(stat),
                   mask=_mask_from_runs(list(d["mask_runs"]), grid), eps=float(d["eps"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Normalizer:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> Path:
        """Binary form (.npz, no pickle): compact for ``per_element`` statistics."""
        path, buf = Path(path), io.BytesIO()
        np.savez(buf, mode=np.str_(self.mode), eps=np.float64(self.eps), mean=self.mean, std=self.std, mask=self.mask)
        assets.write_bytes_atomic(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(mode=str(z["mode"]), mean=z["mean"], std=z["std"], mask=z["mask"], eps=float(z["eps"]))
