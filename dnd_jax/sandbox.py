"""Run untrusted generated Python against its tests in a contained subprocess (pass@1).

Each program runs in a fresh ``python -I`` process (isolated mode: no user site-packages, no
``PYTHON*`` variables, the current folder not on ``sys.path``) with:

- a **fresh temporary folder** as its working directory, ``HOME`` and ``TMPDIR``, deleted afterwards;
- **resource limits** (``resource.setrlimit`` in the child before the program runs): address space (``memory_mb``),
  size of any file it writes (``max_file_mb``), open files, no core dumps, and **CPU seconds** (``cpu_s``),
  the program's time limit: the kernel sends SIGXCPU when it has computed that long (SIGKILL one second
  later if it catches that), so a program gets the same verdict on a loaded machine as on an idle one;
- a **wall-clock backstop** (``wall_s``) for a program that waits instead of computing (a sleep, a
  blocking read): the process is started in its own session and the whole process group is killed
  with SIGKILL when it passes;
- **no network**: the child first tries to enter a new network namespace (``unshare(CLONE_NEWNET)``,
  as an unprivileged user ``CLONE_NEWUSER|CLONE_NEWNET``); where the kernel refuses, the guard below
  still refuses every socket connect/bind/send;
- **an audit-hook guard** (PEP 578 ``sys.addaudithook``, which code in the process cannot remove)
  installed before the program runs: opening a file for writing, creating, removing, renaming,
  linking or changing the mode of anything outside the temporary folder raises ``PermissionError``;
  so do new processes (``subprocess``, ``os.system``, ``exec*``, ``fork``, ``posix_spawn``), sockets
  and ``ctypes`` (which could call around the hook).

This is containment "as far as possible without root tricks", not a security boundary: a program
that finds a native-code path the hook does not see (a C extension that writes files itself) can
still write where the user running it can. Run it as an unprivileged user on a machine you do not
mind. A program *passes* when it exits with status 0 within the limits.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

_GUARD = r'''
import os, resource, sys
_ROOT = os.path.realpath(sys.argv[1])
_MB = 1024 * 1024
_mem, _cpu, _fsize, _nofile = (int(x) for x in sys.argv[2:6])
for _res, _soft, _hard in ((resource.RLIMIT_AS, _mem * _MB, _mem * _MB), (resource.RLIMIT_CPU, _cpu, _cpu + 1),
                           (resource.RLIMIT_FSIZE, _fsize * _MB, _fsize * _MB), (resource.RLIMIT_NOFILE, _nofile, _nofile),
                           (resource.RLIMIT_CORE, 0, 0)):
    resource.setrlimit(_res, (_soft, _hard))


def _new_netns():
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    return any(libc.unshare(flags) == 0 for flags in (0x40000000, 0x10000000 | 0x40000000))


if _new_netns():
    with open(sys.argv[6], "w") as _f:
        _f.write("1")
_PROGRAM = os.path.join(_ROOT, "program.py")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.replace": (0, 1),
                "os.link": (0, 1), "os.symlink": (0, 1), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,),
                "os.utime": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.move": (1,)}
_DENIED = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
           "os.kill", "os.killpg", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
           "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "os.chdir", "os.chroot",
           "resource.setrlimit", "sys.addaudithook")
_realpath, _join, _isabs = os.path.realpath, os.path.join, os.path.isabs


def _inside(path):
    if isinstance(path, int):  # a file descriptor: opened (and checked) before
        return True
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    path = str(path)
    full = _realpath(path if _isabs(path) else _join(_ROOT, path))
    return full == _ROOT or full.startswith(_ROOT + os.sep)


def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the sandbox folder is not allowed: {path!r}")
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            if i < len(args) and args[i] is not None and not _inside(args[i]):
                raise PermissionError(f"sandbox: {event} outside the sandbox folder is not allowed: {args[i]!r}")
    elif event.startswith(_DENIED):
        raise PermissionError(f"sandbox: {event} is not allowed")


with open(_PROGRAM, encoding="utf-8") as _f:
    _source = _f.read()
_code = compile(_source, _PROGRAM, "exec")
sys.addaudithook(_hook)
del _f, _source
exec(_code, {"__name__": "__main__", "__file__": _PROGRAM, "__builtins__": __builtins__})
'''

@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU, whole seconds): the time limit, independent of the machine's load
    wall_s: float = 60.0  # wall-clock backstop for a program that waits instead of computing
    memory_mb: int = 512
    max_file_mb: int = 16
    max_open_files: int = 64

    def __post_init__(self):
        if not (isinstance(self.cpu_s, int) and self.cpu_s >= 1):
            raise ValueError(f"sandbox.Limits.cpu_s must be a whole number of seconds >= 1, got {self.cpu_s!r}")
        if not self.wall_s > 0:
            raise ValueError(f"sandbox.Limits.wall_s must be > 0, got {self.wall_s!r}")


@dataclasses.dataclass(frozen=True)
class Result:
    status: str  # passed | failed | timeout (out of CPU seconds, or past the wall-clock backstop)
    returncode: int | None
    wall_s: float
    stderr_tail: str
    network_namespace: bool  # the kernel put the process in a fresh network namespace

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_python(program: str, limits: Limits = Limits()) -> Result:
    """Run ``program`` (source text) in the sandbox; see the module docstring for what is contained."""
    root = tempfile.mkdtemp(prefix="dnd_sandbox_")
    try:
        work = os.path.join(root, "work")
        os.mkdir(work)
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        marker = os.path.join(root, "netns")
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        t0 = time.perf_counter()
        args = [work, limits.memory_mb, limits.cpu_s, limits.max_file_mb, limits.max_open_files, marker]
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _GUARD, *map(str, args)], cwd=work, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            close_fds=True,
        )
        try:
            _, err = proc.communicate(timeout=limits.wall_s)
            # SIGXCPU at cpu_s CPU seconds; SIGKILL at the hard limit one second later (the signal was caught)
            out_of_cpu = proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
            status = "passed" if proc.returncode == 0 else "timeout" if out_of_cpu else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _, err = proc.communicate()
            status = "timeout"
        wall = time.perf_counter() - t0
        _kill_group(proc)  # anything the program left running in its session
        tail = err.decode("utf-8", "replace")[-2000:] if err else ""
        return Result(status, proc.returncode, wall, tail, os.path.exists(marker))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_many(programs: Sequence[str], limits: Limits = Limits(), workers: int = 2) -> list[Result]:
    """:func:`run_python` over many programs (``workers`` at a time), results in input order."""
    if workers <= 1:
        return [run_python(p, limits) for p in programs]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_python(p, limits), programs))
