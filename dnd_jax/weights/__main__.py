"""Inspect the weight-token layout of a peft adapter, or prove the token round trip exact on it.

    python -m dnd_jax.weights inspect ADAPTER_DIR [--token_shape 8,128]
    python -m dnd_jax.weights roundtrip ADAPTER_DIR --out DIR [--token_shape 8,128] [--overwrite]

(``--token-shape`` is the same flag.) Exit codes as for every verb (:mod:`dnd_jax.cli`): 0 ok, 2 a user
error (bad input, an existing or unwritable --out, a NaN or non-LoRA adapter, an inexact round trip:
nothing is written), 1 a bug. The logic: :mod:`dnd_jax.weights.check`.
"""
from __future__ import annotations

from absl import flags

from dnd_jax import cli
from dnd_jax.errors import InputError
from dnd_jax.weights import check

COMMANDS = ("inspect", "roundtrip")


def define_flags() -> dict:
    """CLI flags, defined only when run as a program."""
    fl = {
        "out": flags.DEFINE_string("out", None, "roundtrip: the new adapter folder (must not exist)."),
        "token_shape": flags.DEFINE_string("token_shape", ",".join(map(str, check.DEFAULT_TOKEN_SHAPE)),
                                           "Weight-token shape H,W (or HxW)."),
        "overwrite": flags.DEFINE_bool("overwrite", False, "roundtrip: replace --out if it is an adapter folder."),
    }
    flags.DEFINE_alias("token-shape", "token_shape")
    return fl


def main(fl: dict, args: list[str]) -> int:
    """``args``: the subcommand and the adapter folder."""
    if len(args) != 2 or args[0] not in COMMANDS:
        raise InputError(f"usage: python -m dnd_jax.weights {{{'|'.join(COMMANDS)}}} ADAPTER_DIR [--out DIR] "
                         f"[--token_shape H,W]; got {args}")
    command, adapter_dir = args
    token_shape = check.parse_token_shape(fl["token_shape"].value)
    if command == "inspect":
        if fl["out"].value:
            raise InputError("--out is for roundtrip; inspect writes nothing")
        print(check.inspect(adapter_dir, token_shape))
    else:
        if not fl["out"].value:
            raise InputError("roundtrip needs --out DIR (the new adapter folder)")
        print(check.roundtrip(adapter_dir, fl["out"].value, token_shape, fl["overwrite"].value))
    return 0


def cli_main() -> None:
    """Console script ``dnd-weights`` (= ``python -m dnd_jax.weights``)."""
    cli.run(define_flags, main, required=(), positional=True)


if __name__ == "__main__":
    cli_main()
