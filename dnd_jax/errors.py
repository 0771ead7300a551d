"""Typed user errors: what a user can fix (bad input, a config that cannot work, a corrupt file).

Every verb runs under :func:`dnd_jax.cli.run`, which prints a :class:`UserError` as one line
(``error: ...``) and exits with :data:`EXIT_USER_ERROR`; anything else (a bug) keeps its traceback.
Subclasses also derive from the builtin a caller would expect (``ValueError``, ``FileNotFoundError``,
``KeyError``) so ``except ValueError`` around library calls keeps working.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2  # every verb: bad flags, bad input, refused run (lock, resume mismatch, corruption)


class UserError(Exception):
    """Something the user can fix; the message says what and where."""

    def __str__(self) -> str:  # KeyError would otherwise print its message with quotes
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(UserError, ValueError):
    """A config that cannot work on this zoo / these devices (raised before any compute)."""


class InputError(UserError, ValueError):
    """A bad input file or flag value (prompts, adapters, task names, limits)."""


class UnknownTaskError(UserError, KeyError):
    """A task name the registry does not know."""


class MissingError(UserError, FileNotFoundError):
    """A file or folder the run needs is not there."""


class OutputError(UserError, OSError):
    """An output path that cannot be written (exists, read-only, not a folder)."""


class ExistsError(OutputError, FileExistsError):
    """An output that exists and may not be replaced."""


class IntegrityError(UserError, ValueError):
    """A file on disk is corrupt: checksum mismatch, truncated or deleted parts, non-finite weights."""


class ResumeMismatchError(ConfigError):
    """A workdir holds a run made from other data or another recipe; resuming would mix them."""


class LockedError(UserError, RuntimeError):
    """Another live process holds the workdir's lock."""


class DataNotPrepared(UserError, FileNotFoundError):
    """A registered task whose data is not on this machine yet (BIG-bench before ``make data``)."""
