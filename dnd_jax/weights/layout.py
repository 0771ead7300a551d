"""LoRA state dict <-> grid of weight tokens, with the layout derived from tensor shapes alone.

The generator predicts a fixed grid ``(num_tokens, h, w)``; this module decides which real parameter
sits at which grid position. Nothing here knows about a model family, so any peft adapter works:

* **Order**: keys in natural sort order (digit runs compared as integers), which is layer, then
  module, then ``lora_A`` before ``lora_B`` for peft's key names. ``layers.10`` comes after
  ``layers.9``, and the order never depends on dict insertion order.
* **Orientation**: every matrix is stored rank-last: ``lora_A`` (r, in) is transposed to (in, r),
  ``lora_B`` (out, r) is kept. Both then read as rows of r numbers, one per input/output feature, so
  with ``token_shape=(k, r)`` a token is a block of k feature rows. Any other tensor is flattened.
* **Tokens**: each rank-last tensor is flattened row-major, zero-padded to a multiple of ``h * w``
  and cut into tokens; a token never straddles two tensors, so each token belongs to one matrix
  and the real elements of a token are a prefix of it (see :meth:`WeightLayout.mask`).

A layout is a frozen, hashable, JSON-serializable dataclass: it is saved beside a generator so
generated tokens can be turned back into a peft state dict without the zoo.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dnd_jax.errors import InputError

LAYOUT_VERSION = 1
_DIGITS = re.compile(r"(\d+)")
# peft's down-projection factor: lora_A (and lora_embedding_A) is (r, in); transposed to rank-last.
_RANK_FIRST = re.compile(r"(?:^|\.)lora_(?:embedding_)?A(?:\.|$)")


class LayoutMismatchError(InputError):
    """A state dict does not fit a layout (missing/unexpected key or a different shape)."""


def natural_key(key: str) -> tuple:
    """Sort key comparing digit runs as integers (``layers.9`` < ``layers.10``); ties by the raw key."""
    parts = _DIGITS.split(key)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), key


def natural_sorted(keys: Iterable[str]) -> list[str]:
    return sorted(keys, key=natural_key)


def is_rank_first(key: str, shape: Sequence[int]) -> bool:
    """True for 2-D LoRA down-projections (peft ``lora_A``), which are stored transposed."""
    return len(shape) == 2 and _RANK_FIRST.search(key) is not None


def module_name(key: str) -> str:
    """The module a tensor belongs to, for summaries: ``...self_attn.q_proj.lora_A.weight`` -> ``q_proj``."""
    parts = key.split(".")
    for i, p in enumerate(parts):
        if p.startswith("lora_") and i > 0:
            return parts[i - 1]
    return _DIGITS.sub("*", key)


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    """Where one tensor lives in the token grid."""

    key: str
    shape: tuple[int, ...]  # original shape in the state dict
    transpose: bool  # stored transposed (rank-last) in the grid
    offset: int  # first token
    num_tokens: int
    numel: int

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """Shape of the tensor as laid out in the grid (before flattening)."""
        return (self.shape[1], self.shape[0]) if self.transpose else self.shape

    @property
    def token_slice(self) -> slice:
        return slice(self.offset, self.offset + self.num_tokens)

    def to_dict(self) -> dict:
        return {"key": self.key, "shape": list(self.shape), "transpose": self.transpose, "offset": self.offset,
                "num_tokens": self.num_tokens, "numel": self.numel}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayoutEntry:
        return cls(key=str(d["key"]), shape=tuple(int(s) for s in d["shape"]), transpose=bool(d["transpose"]),
                   offset=int(d["offset"]), num_tokens=int(d["num_tokens"]), numel=int(d["numel"]))


@dataclasses.dataclass(frozen=True)
class WeightLayout:
    """Tensor -> token mapping for one LoRA architecture (see the module docstring)."""

    entries: tuple[LayoutEntry, ...]
    token_shape: tuple[int, int]

    def __post_init__(self) -> None:
        h, w = self.token_shape
        expected = 0
        for e in self.entries:
            if e.offset != expected or e.numel != math.prod(e.shape) or e.num_tokens != -(-e.numel // (h * w)):
                raise ValueError(f"inconsistent layout entry for '{e.key}': {e}")
            expected += e.num_tokens

    @property
    def num_tokens(self) -> int:
        return self.entries[-1].offset + self.entries[-1].num_tokens if self.entries else 0

    @property
    def token_size(self) -> int:
        return self.token_shape[0] * self.token_shape[1]

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return (self.num_tokens, *self.token_shape)

    @property
    def num_params(self) -> int:
        return sum(e.numel for e in self.entries)

    @property
    def padding_fraction(self) -> float:
        """Share of grid positions that are padding (0 for an empty layout)."""
        total = self.num_tokens * self.token_size
        return 1.0 - self.num_params / total if total else 0.0

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def entry(self, key: str) -> LayoutEntry:
        for e in self.entries:
            if e.key == key:
                return e
        raise KeyError(key)

    def token_counts(self) -> np.ndarray:
        """(T,) int: real elements per token (they are the token's first elements, row-major)."""
        counts = np.full((self.num_tokens,), self.token_size, np.int64)
        for e in self.entries:
            if e.num_tokens:
                counts[e.offset + e.num_tokens - 1] = e.numel - (e.num_tokens - 1) * self.token_size
        return counts

    def mask(self) -> np.ndarray:
        """(T, h, w) bool, True on real elements and False on padding."""
        counts = self.token_counts()
        flat = np.arange(self.token_size)[None, :] < counts[:, None]
        return flat.reshape(self.grid_shape)

    def to_dict(self) -> dict:
        return {"version": LAYOUT_VERSION, "token_shape": list(self.token_shape), "num_tokens": self.num_tokens,
                "num_params": self.num_params, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightLayout:
        if int(d.get("version", LAYOUT_VERSION)) != LAYOUT_VERSION:
            raise ValueError(f"unsupported layout version {d.get('version')} (this code reads {LAYOUT_VERSION})")
        layout = cls(entries=tuple(LayoutEntry.from_dict(e) for e in d["entries"]),
                     token_shape=_check_token_shape(d["token_shape"]))
        if "num_tokens" in d and int(d["num_tokens"]) != layout.num_tokens:
            raise ValueError(f"layout says num_tokens={d['num_tokens']} but its entries give {layout.num_tokens}")
        return layout

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> WeightLayout:
        return cls.from_dict(json.loads(text))


def _check_token_shape(token_shape: Sequence[int]) -> tuple[int, int]:
    ts = tuple(int(t) for t in token_shape)
    if len(ts) != 2 or min(ts) < 1:
        raise InputError(f"token_shape must be two positive integers (h, w), got {tuple(token_shape)}")
    return ts  # type: ignore[return-value]


def build_layout(shapes: Mapping[str, Sequence[int]], token_shape: Sequence[int]) -> WeightLayout:
    """The layout for tensors of these shapes (a state dict's ``{key: shape}``) and token shape."""
    h, w = _check_token_shape(token_shape)
    if not shapes:
        raise InputError("cannot build a layout from an empty state dict")
    entries, offset = [], 0
    for key in natural_sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        if any(s < 0 for s in shape):
            raise InputError(f"tensor '{key}' has a negative dimension: {shape}")
        numel = math.prod(shape)
        n = -(-numel // (h * w))
        entries.append(LayoutEntry(key, shape, is_rank_first(key, shape), offset, n, numel))
        offset += n
    return WeightLayout(tuple(entries), (h, w))


def token_owners(layout: WeightLayout) -> np.ndarray:
    """(T,) int: index into ``layout.entries`` of the tensor each token belongs to."""
    return np.repeat(np.arange(len(layout.entries)), [e.num_tokens for e in layout.entries])


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def validate(layout: WeightLayout, state_dict: Mapping[str, Any]) -> None:
    """Raise :class:`LayoutMismatchError` naming the first (natural order) key that does not fit."""
    expected = {e.key: e.shape for e in layout.entries}
    for key in natural_sorted(set(expected) | set(state_dict)):
        want = expected.get(key)
        got = _shape_of(state_dict[key]) if key in state_dict else None
        if want == got:
            continue
        if got is None:
            problem = f"missing key '{key}': layout shape {want}, state dict has no such tensor"
        elif want is None:
            problem = f"unexpected key '{key}': state dict shape {got}, not in the layout"
        else:
            problem = f"shape mismatch for '{key}': layout shape {want}, state dict shape {got}"
        bad = sum(expected.get(k) != (_shape_of(state_dict[k]) if k in state_dict else None)
                  for k in set(expected) | set(state_dict))
        more = f" ({bad - 1} more mismatching keys)" if bad > 1 else ""
        raise LayoutMismatchError(problem + more)


def to_numpy_f32(value: Any) -> np.ndarray:
    """numpy / torch (any dtype, any device) / jax array -> float32 numpy."""
    if hasattr(value, "detach"):  # torch: bf16 has no numpy dtype, so convert in torch first
        import torch

        return value.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(value).astype(np.float32, copy=False)


def tokenize(layout: WeightLayout, state_dict: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """State dict -> (tokens float32 (T, h, w), mask bool (T, h, w)); padding is 0."""
    validate(layout, state_dict)
    flat = np.zeros((layout.num_tokens * layout.token_size,), np.float32)
    for e in layout.entries:
        arr = to_numpy_f32(state_dict[e.key])
        if e.transpose:
            arr = arr.T
        start = e.offset * layout.token_size
        flat[start:start + e.numel] = arr.reshape(-1)  # reshape of a transposed view copies row-major
    return flat.reshape(layout.grid_shape), layout.mask()


def tokenize_batch(layout: WeightLayout, state_dicts: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Many state dicts -> (tokens (B, T, h, w), mask (T, h, w))."""
    tokens = np.stack([tokenize(layout, sd)[0] for sd in state_dicts]) if state_dicts else np.zeros(
        (0, *layout.grid_shape), np.float32)
    return tokens, layout.mask()


def _cut(layout: WeightLayout, tokens: Any, swapaxes, split) -> dict[str, Any]:
    """The one cut of tokens (..., T, h, w) into {key: (..., *shape)} behind both detokenizers.

    One ``split`` of the flat tokens into each tensor's whole tokens (they tile the grid), then each
    piece drops its padding: in JAX the gradient is then one concatenate of per-tensor pads, not a
    grid-sized pad per tensor (which made the backward of 420 SmolLM2 matrices cost seconds).
    """
    if tuple(tokens.shape[-3:]) != layout.grid_shape:
        raise LayoutMismatchError(f"tokens of shape {tuple(tokens.shape)} do not end in the layout grid {layout.grid_shape}")
    batch = tokens.shape[:-3]
    flat = tokens.reshape((*batch, -1))
    pieces = split(flat, [e.num_tokens * layout.token_size for e in layout.entries])
    out = {}
    for e, piece in zip(layout.entries, pieces, strict=True):
        seg = piece[..., :e.numel].reshape((*batch, *e.stored_shape))
        out[e.key] = swapaxes(seg, -1, -2) if e.transpose else seg
    return out


def detokenize(layout: WeightLayout, tokens: Any) -> dict[str, np.ndarray]:
    """Tokens (..., T, h, w) -> {key: float32 array (..., *shape)} in layout order (padding ignored).

    Leading batch dims are kept on every tensor. Exact inverse of :func:`tokenize`.
    """
    cut = _cut(layout, to_numpy_f32(tokens), np.swapaxes,
               lambda x, sizes: np.split(x, np.cumsum(sizes)[:-1], axis=-1))
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in cut.items()}  # copies: never alias the tokens


def detokenize_jax(layout: WeightLayout, tokens: Any) -> dict[str, Any]:
    """:func:`detokenize` as JAX ops (jit-able, differentiable): tokens (..., T, h, w) -> {key: (..., *shape)}."""
    import jax.numpy as jnp
    from jax import lax

    return _cut(layout, jnp.asarray(tokens), jnp.swapaxes, lambda x, sizes: lax.split(x, sizes, axis=x.ndim - 1))
