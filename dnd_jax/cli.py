"""The shared shell of every absl verb: flags defined only when run as a program, one error path.

Verbs define their flags in a function (importing a verb defines none, so several verbs can share
one process, as the experiment does) and hand ``run`` a body; expected failures (bad config, missing
files) become ``error: ...`` on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

USER_ERRORS = (KeyError, ValueError, FileNotFoundError)


def config_flag(lock: bool = True):
    return config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).", lock_config=lock)


def run(define_flags: Callable[[], dict], body: Callable[[dict], None], *, required: Sequence[str] = ("config",),
        errors: tuple[type[BaseException], ...] = USER_ERRORS) -> None:
    """Define the flags, parse them, and call ``body(flag_holders)`` under one error policy."""
    fl = define_flags()
    flags.mark_flags_as_required(list(required))

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]}")
        try:
            body(fl)
        except errors as e:
            sys.exit(f"error: {e}")

    app.run(main)
