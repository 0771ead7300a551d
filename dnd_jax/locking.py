"""One writer per workdir: ``with workdir_lock(W, "train"): ...``.

The lock is a file ``W/.dnd_lock`` created with ``O_EXCL`` and holding the writer's pid, host, start
time and verb. A second writer gets a :class:`~dnd_jax.errors.LockedError` naming the holder. A lock
whose holder is gone (same host, and the pid is not running or is another process now) is stale:
it is taken over. A lock held from another host is never taken over (the message says how to remove
it). Re-entrant within a process (the experiment holds ``W`` while its collect stage takes it too).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from dnd_jax.errors import LockedError

LOCK_FILE = ".dnd_lock"
_HELD: dict[Path, int] = {}  # lock path -> nesting depth in this process


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    now = _start_time(pid)
    return not (start and now and now != start)


def holder(workdir: str | Path) -> dict | None:
    """The lock's holder record, or None when the workdir is not locked."""
    path = Path(workdir) / LOCK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # being written right now, or torn: treat as held by an unknown writer


def is_live(info: dict) -> bool:
    """Whether a holder record names a live process (records from another host count as live)."""
    if not info:
        return True
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    return _alive(pid, info.get("start"))


def describe(info: dict) -> str:
    if not info:
        return "an unknown process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('verb')}, since {info.get('since')})"


def refuse_if_held(workdir: str | Path, what: str) -> None:
    """A :class:`LockedError` if a live process holds ``workdir``'s lock (``what`` would collide with it)."""
    info = holder(workdir)
    if info is not None and is_live(info):
        raise LockedError(f"{workdir} is in use by {describe(info)}; {what} would collide with it")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold the kernel's exclusive lock on ``path`` (created if missing) for the block, waiting for it:
    for short read-modify-writes that several processes share (the kernel releases it if one dies)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _remove_stale(workdir: Path, path: Path, seen: dict) -> None:
    """Remove the lock at ``path`` if it is still the stale record ``seen``.

    Takers serialize on a kernel lock of a sidecar file and re-read the record inside it: a taker that
    inspected the stale record, then lost the race to one that removed it and linked a fresh lock,
    finds the fresh record and leaves it (without this, it would rename the new holder's lock away).
    """
    with file_lock(path.with_name(f"{LOCK_FILE}.takeover")):
        if holder(workdir) != seen:
            return  # released or taken over meanwhile: the caller looks again
        stale = path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(path, stale)
            os.unlink(stale)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, verb: str) -> Iterator[Path]:
    """Hold ``workdir``'s lock for the block; refuse if another live process holds it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = (workdir / LOCK_FILE).resolve()
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()), "verb": verb,
          "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # Write the record to a private file, then hard-link it into place: the lock appears complete or not at all.
    tmp = path.with_name(f"{LOCK_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(me))
    try:
        for _ in range(5):
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                info = holder(workdir)
                if info is None:
                    continue  # released meanwhile: try again
                same_host = info.get("host") == me["host"]
                pid = info.get("pid")
                if info and same_host and isinstance(pid, int) and not _alive(pid, info.get("start")):
                    _remove_stale(workdir, path, info)
                    continue
                where = "" if same_host or not info else f"; if that process is gone, delete {path}"
                raise LockedError(f"{workdir} is in use by {describe(info)}: one writer per workdir{where}") from None
        else:
            raise LockedError(f"could not take the lock {path} (contended); try again")
    finally:
        tmp.unlink(missing_ok=True)
    _HELD[path] = 1
    try:
        yield path
    finally:
        _HELD.pop(path, None)
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
