"""Inspect the weight-token layout of a peft adapter, or prove the token round trip exact on it.

    python -m dnd_jax.weights inspect ADAPTER_DIR [--token-shape 8,128]
    python -m dnd_jax.weights roundtrip ADAPTER_DIR --out DIR [--token-shape 8,128] [--overwrite]

Exit codes as for every verb (:mod:`dnd_jax.cli`): 0 ok, 2 a user error (bad input, an existing or
unwritable --out, a NaN or non-LoRA adapter, an inexact round trip: nothing is written), 1 a bug.
(Subcommands with positional folders: argparse here, with the same error policy as the absl verbs.)
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from dnd_jax import cli
from dnd_jax.errors import EXIT_USER_ERROR, IntegrityError
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
    peft_io.check_output_dir(args.out, args.overwrite)  # before reading or computing anything
    sd, config = peft_io.read_adapter(args.adapter_dir)  # LoRA keys only, finite, rank as configured
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, args.token_shape)
    tokens, mask = layout_lib.tokenize(layout, sd)
    back = layout_lib.detokenize(layout, tokens)
    diff = max(float(np.max(np.abs(back[k] - sd[k]), initial=0.0)) for k in sd)
    if diff != 0.0:  # checked in memory: nothing is written for an inexact round trip
        raise IntegrityError(f"the token round trip of {args.adapter_dir} is not exact (max abs diff {diff:.1e}); "
                             f"nothing written")
    out = peft_io.write_adapter(args.out, back, overwrite=args.overwrite, **peft_io.write_kwargs_from_config(config))
    written, _ = peft_io.read_adapter(out)
    layout_lib.validate(layout, written)
    diff = max(float(np.max(np.abs(written[k] - sd[k]), initial=0.0)) for k in sd)
    assert diff == 0.0, f"written adapter differs from its source by {diff}"  # a bug, not an input problem
    print(f"{len(sd)} tensors, {layout.num_params:,} parameters -> {layout.num_tokens:,} tokens of "
          f"{layout.token_shape[0]}x{layout.token_shape[1]} (padding {layout.padding_fraction:.4f}, "
          f"{int(mask.sum()):,} real positions) -> {out}")
    print(f"max abs diff {diff:.1e}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the verbs' error format: one ``error: ...`` line, exit 2."""

    def error(self, message: str):
        print(f"error: {' '.join(message.split())} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m dnd_jax.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    args = build_parser().parse_args(argv)  # bad usage: argparse exits 2, as every verb does
    try:
        return args.func(args)
    except Exception as e:  # user errors: one line, exit 2 (dnd_jax.cli's policy); bugs keep their traceback
        if not cli.is_user_error(e):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR


def cli_main() -> None:
    """Console script ``dnd-weights`` (= ``python -m dnd_jax.weights``)."""
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
