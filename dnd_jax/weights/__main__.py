"""Inspect the weight-token layout of a peft adapter, or prove the token round trip exact on it.

    python -m dnd_jax.weights inspect ADAPTER_DIR [--token-shape 8,128]
    python -m dnd_jax.weights roundtrip ADAPTER_DIR --out DIR [--token-shape 8,128] [--overwrite]

Exit codes: 0 ok, 1 round trip not exact, 2 bad input (nothing is written).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dnd_jax.weights import layout as layout_lib
from dnd_jax.weights import peft_io

DEFAULT_TOKEN_SHAPE = (8, 128)  # configs/common.py: layout.token_shape


def parse_token_shape(text: str) -> tuple[int, int]:
    """``8,128`` or ``8x128`` -> (8, 128)."""
    parts = text.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"token shape must look like 8,128, got '{text}'") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"token shape must be positive, got '{text}'")
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


def _inspect(args: argparse.Namespace) -> int:
    sd, config = peft_io.read_adapter(args.adapter_dir)
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, args.token_shape)
    print(f"adapter          {args.adapter_dir}")
    targets = config.get("target_modules")
    targets = ",".join(sorted(targets)) if isinstance(targets, list) else targets
    print(f"lora             r={config.get('r')} alpha={config.get('lora_alpha')} targets={targets}")
    print(summary(layout))
    return 0


def _roundtrip(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} already exists (add --overwrite to replace it)")
    sd, config = peft_io.read_adapter(args.adapter_dir)
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, args.token_shape)
    tokens, mask = layout_lib.tokenize(layout, sd)
    back = layout_lib.detokenize(layout, tokens)
    peft_io.write_adapter(out, back, overwrite=args.overwrite, **peft_io.write_kwargs_from_config(config))
    written, _ = peft_io.read_adapter(out)
    layout_lib.validate(layout, written)
    diff = max(float(np.max(np.abs(written[k] - sd[k]), initial=0.0)) for k in sd)
    print(f"{len(sd)} tensors, {layout.num_params:,} parameters -> {layout.num_tokens:,} tokens of "
          f"{layout.token_shape[0]}x{layout.token_shape[1]} (padding {layout.padding_fraction:.4f}, "
          f"{int(mask.sum()):,} real positions) -> {out}")
    print(f"max abs diff {diff:.1e}")
    if diff != 0.0:
        print("error: the round trip is not exact", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dnd_jax.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print the weight-token layout of a peft adapter folder")
    p.add_argument("adapter_dir")
    p.add_argument("--token-shape", type=parse_token_shape, default=DEFAULT_TOKEN_SHAPE, metavar="H,W")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("roundtrip", help="tokenize -> detokenize -> write a new adapter, and check it is exact")
    p.add_argument("adapter_dir")
    p.add_argument("--out", required=True, help="new adapter folder (must not exist)")
    p.add_argument("--token-shape", type=parse_token_shape, default=DEFAULT_TOKEN_SHAPE, metavar="H,W")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_roundtrip)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:  # missing folder/file, existing --out, bad adapter, layout mismatch
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
