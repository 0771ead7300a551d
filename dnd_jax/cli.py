"""The shared shell of every verb: flags defined only when run as a program, one error policy.

Verbs define their flags in a function (importing a verb defines none, so several verbs can share
one process, as the experiment does) and hand ``run`` a body. Exit codes, the same for every verb:

    0  done
    2  a user error: bad flags or config, bad input files, a refused run (workdir locked by another
       process, resume with other data, a corrupt checkpoint, an output that exists or cannot be
       written). One line on stderr: ``error: ...``, no traceback.
    1  anything else: a bug or an unexpected failure, with its full traceback.

User errors are :class:`dnd_jax.errors.UserError` (and the operating system's own "no such file",
"exists", "permission denied", "read-only", "disk full" errors); a ``KeyError`` or ``ValueError``
from a bug is not one, and keeps its traceback.
"""
from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from dnd_jax.errors import EXIT_USER_ERROR, UserError

# errno values that describe the user's files or machine, not the program
_USER_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR,
                errno.EISDIR, errno.EDQUOT, errno.ENOTEMPTY}


def config_flag(lock: bool = True):
    return config_flags.DEFINE_config_file("config", None, "Config file (configs/X.py[:arg]).", lock_config=lock)


def config_file_defaults(holder) -> Any:
    """The config of a ``--config`` flag as its file defines it, without the command line's overrides."""
    import importlib.util

    spec = config_flags.get_config_filename(flags.FLAGS[holder.name])
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_dnd_config_defaults", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, UserError) or (isinstance(e, OSError) and e.errno in _USER_ERRNOS)


def fail(message: str) -> None:
    """Print ``error: message`` (one line) and exit with the user-error code."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        msg = str(e)
        if "Traceback (most recent call last)" in msg:  # a config file that raised: its exception, not its stack
            head = msg.split("Traceback (most recent call last)")[0].rstrip(" :\n")
            msg = f"{head}: {[ln for ln in msg.splitlines() if ln.strip()][-1].strip()}"
        fail(f"{msg} (pass --helpshort for the flags)")
    except (UserError, OSError) as e:  # a config file that fails to load
        if not is_user_error(e):
            raise
        fail(str(e))
    return []  # unreachable


def run(define_flags: Callable[[], dict], body: Callable[..., object], *, required: Sequence[str] = ("config",),
        positional: bool = False) -> None:
    """Define the flags, parse them, and call ``body(flag_holders)`` under the one error policy.

    With ``positional``, ``body(flag_holders, args)`` also gets the positional arguments; otherwise
    any are an error. A body returning an int exits with it (e.g. 1 for "checked: not exact").
    """
    fl = define_flags()
    flags.mark_flags_as_required(list(required))

    def main(argv: list[str]) -> None:
        if len(argv) > 1 and not positional:
            fail(f"unexpected arguments {argv[1:]}")
        if "config" in fl and flags.FLAGS["config"].present:
            try:  # a config that failed to load is a placeholder raising on first use: use it now
                value = fl["config"].value
                if not isinstance(value, ml_collections.ConfigDict):
                    value.keys()
            except Exception as e:
                cause = e.__cause__ or e.__context__ or e
                fail(f"cannot load --config {flags.FLAGS['config'].config_filename}: {type(cause).__name__}: {cause}")
        try:
            code = body(fl, argv[1:]) if positional else body(fl)
        except Exception as e:
            if not is_user_error(e):
                raise
            fail(str(e))
        if isinstance(code, int) and code:
            sys.exit(code)

    app.run(main, flags_parser=_parse_flags)
