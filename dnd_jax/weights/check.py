"""Check a peft adapter against the weight-token layout: its layout summary, and an exact round trip.

The command line over these is ``python -m dnd_jax.weights inspect|roundtrip``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnd_jax.errors import InputError, IntegrityError
from dnd_jax.weights import layout as layout_lib
from dnd_jax.weights import peft_io

DEFAULT_TOKEN_SHAPE = (8, 128)  # configs/common.py: layout.token_shape


def parse_token_shape(text: str) -> tuple[int, int]:
    """``8,128`` or ``8x128`` -> (8, 128)."""
    parts = str(text).replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"--token-shape: token shape must look like 8,128, got '{text}'") from None
    if h < 1 or w < 1:
        raise InputError(f"--token-shape: token shape must be positive, got '{text}'")
    return h, w


def summary(layout: layout_lib.WeightLayout) -> str:
    """Human-readable layout summary with per-module counts."""
    h, w = layout.token_shape
    lines = [
        f"token shape      {h} x {w}",
        f"matrices         {len(layout.entries)}",
        f"parameters       {layout.num_params:,}",
        f"tokens           {layout.num_tokens:,}  (grid {layout.num_tokens} x {h} x {w})",
        f"padding fraction {layout.padding_fraction:.4f}",
        f"first / last     {layout.entries[0].key} / {layout.entries[-1].key}",
        "",
        f"{'module':<24}{'matrices':>10}{'params':>14}{'tokens':>10}{'padding':>10}",
    ]
    groups: dict[str, list[layout_lib.LayoutEntry]] = {}
    for e in layout.entries:
        groups.setdefault(layout_lib.module_name(e.key), []).append(e)
    for name, entries in groups.items():
        params, tokens = sum(e.numel for e in entries), sum(e.num_tokens for e in entries)
        pad = 1.0 - params / (tokens * h * w) if tokens else 0.0
        lines.append(f"{name:<24}{len(entries):>10}{params:>14,}{tokens:>10,}{pad:>10.4f}")
    return "\n".join(lines)


def inspect(adapter_dir: str | Path, token_shape: tuple[int, int] = DEFAULT_TOKEN_SHAPE) -> str:
    """The adapter's LoRA config and layout summary (the adapter is read and checked first)."""
    sd, config = peft_io.read_adapter(adapter_dir)
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, token_shape)
    targets = config.get("target_modules")
    targets = ",".join(sorted(targets)) if isinstance(targets, list) else targets
    return (f"adapter          {adapter_dir}\n"
            f"lora             r={config.get('r')} alpha={config.get('lora_alpha')} targets={targets}\n"
            + summary(layout))


def roundtrip(adapter_dir: str | Path, out: str | Path, token_shape: tuple[int, int] = DEFAULT_TOKEN_SHAPE,
              overwrite: bool = False) -> str:
    """tokenize -> detokenize -> write ``out``; an inexact round trip writes nothing. Returns the report."""
    peft_io.check_output_dir(out, overwrite)  # before reading or computing anything
    sd, config = peft_io.read_adapter(adapter_dir)  # LoRA keys only, finite, rank as configured
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, token_shape)
    tokens, mask = layout_lib.tokenize(layout, sd)
    back = layout_lib.detokenize(layout, tokens)
    diff = max(float(np.max(np.abs(back[k] - sd[k]), initial=0.0)) for k in sd)
    if diff != 0.0:  # checked in memory: nothing is written for an inexact round trip
        raise IntegrityError(f"the token round trip of {adapter_dir} is not exact (max abs diff {diff:.1e}); "
                             f"nothing written")
    written_dir = peft_io.write_adapter(out, back, overwrite=overwrite, **peft_io.write_kwargs_from_config(config))
    written, _ = peft_io.read_adapter(written_dir)
    layout_lib.validate(layout, written)
    diff = max(float(np.max(np.abs(written[k] - sd[k]), initial=0.0)) for k in sd)
    assert diff == 0.0, f"written adapter differs from its source by {diff}"  # a bug, not an input problem
    return (f"{len(sd)} tensors, {layout.num_params:,} parameters -> {layout.num_tokens:,} tokens of "
            f"{layout.token_shape[0]}x{layout.token_shape[1]} (padding {layout.padding_fraction:.4f}, "
            f"{int(mask.sum()):,} real positions) -> {written_dir}\n"
            f"max abs diff {diff:.1e}")
