"""The pass@1 sandbox: misbehaving programs are contained (loop, allocation, writes, processes, network)."""
import glob
import os
import tempfile

import pytest

from dnd_jax import sandbox

LIMITS = sandbox.Limits(cpu_s=2, wall_s=30.0, memory_mb=256)


def _leftovers() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "dnd_sandbox_*")))


def test_passing_and_failing_programs():
    assert sandbox.run_python("def f(x):\n    return 2 * x\nassert f(2) == 4\n", LIMITS).status == "passed"
    r = sandbox.run_python("assert 1 == 2\n", LIMITS)
    assert r.status == "failed" and r.returncode == 1 and "AssertionError" in r.stderr_tail
    assert sandbox.run_python("def f(:\n", LIMITS).status == "failed"  # a syntax error is a failure, not a crash


def test_infinite_loop_is_killed_on_timeout():
    r = sandbox.run_python("while True:\n    pass\n", LIMITS)
    assert r.status == "timeout" and not r.passed
    assert r.wall_s < LIMITS.wall_s  # stopped by its CPU seconds, not by the wall-clock backstop


def test_a_program_that_catches_sigxcpu_is_killed_one_cpu_second_later():
    r = sandbox.run_python("import signal\nsignal.signal(signal.SIGXCPU, lambda *a: None)\nwhile True:\n    pass\n",
                           sandbox.Limits(cpu_s=1, wall_s=30.0))
    assert r.status == "timeout" and r.returncode == -9 and r.wall_s < 30


def test_the_time_limit_is_cpu_seconds_not_wall_time():
    """The same verdict on a loaded machine as on an idle one: waiting costs no CPU seconds, computing does."""
    limits = sandbox.Limits(cpu_s=1, wall_s=30.0)
    r = sandbox.run_python("import time\ntime.sleep(2.5)\n", limits)  # 2.5 s of wall, ~0 CPU: passes
    assert r.status == "passed" and r.wall_s > 2.5
    busy = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    pass\n")
    assert sandbox.run_python(busy, limits).status == "timeout"  # 1.5 CPU s against 1
    assert sandbox.run_python(busy, sandbox.Limits(cpu_s=3, wall_s=30.0)).status == "passed"


def test_sleeping_program_is_killed_on_wall_clock_timeout():
    r = sandbox.run_python("import time\ntime.sleep(60)\n", sandbox.Limits(cpu_s=1, wall_s=1.0))
    assert r.status == "timeout" and r.wall_s < 5


@pytest.mark.parametrize("bad", [dict(cpu_s=0), dict(cpu_s=2.5), dict(wall_s=0.0)])
def test_limits_are_checked(bad):
    with pytest.raises(ValueError, match="sandbox.Limits"):
        sandbox.Limits(**bad)


def test_huge_allocation_fails_inside_the_memory_limit():
    r = sandbox.run_python("x = bytearray(4 * 1024 ** 3)\n", LIMITS)
    assert r.status == "failed" and "MemoryError" in r.stderr_tail


def test_write_outside_the_sandbox_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    for program in (f"open({str(target)!r}, 'w').write('x')\n",
                    f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
                    f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                    f"import shutil\nopen('a.txt', 'w').write('x')\nshutil.copyfile('a.txt', {str(target)!r})\n",
                    f"import os\nopen('a.txt', 'w').write('x')\nos.rename('a.txt', {str(target)!r})\n"):
        r = sandbox.run_python(program, LIMITS)
        assert r.status == "failed" and "PermissionError" in r.stderr_tail, program
        assert not target.exists(), program
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    r = sandbox.run_python(f"import os\nos.remove({str(keep)!r})\n", LIMITS)
    assert r.status == "failed" and keep.read_text() == "mine"


def test_writes_inside_its_own_folder_work_and_the_folder_is_removed():
    before = _leftovers()
    r = sandbox.run_python("import os\nopen('out.txt', 'w').write('hi')\nassert open('out.txt').read() == 'hi'\n"
                           "os.mkdir('sub')\nos.remove('out.txt')\n", LIMITS)
    assert r.status == "passed"
    assert _leftovers() <= before  # the temp folder is gone


def test_processes_and_network_are_refused(tmp_path):
    marker = tmp_path / "touched"
    for program in (f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\n",
                    f"import os\nos.system('touch {marker}')\n",
                    "import os\nos.fork()\n",
                    "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n",
                    "import ctypes\nctypes.CDLL(None)\n"):
        r = sandbox.run_python(program, LIMITS)
        assert r.status == "failed" and "PermissionError" in r.stderr_tail, program
    assert not marker.exists()


def test_run_many_keeps_order():
    programs = ["assert True\n", "assert False\n", "while True: pass\n", "x = 1\n"]
    statuses = [r.status for r in sandbox.run_many(programs, sandbox.Limits(cpu_s=1, wall_s=30.0), workers=2)]
    assert statuses == ["passed", "failed", "timeout", "passed"]


@pytest.mark.parametrize("bad", ["import sys\nsys.exit(3)\n", "raise SystemExit('no')\n"])
def test_nonzero_exit_is_a_failure(bad):
    assert sandbox.run_python(bad, LIMITS).status == "failed"
