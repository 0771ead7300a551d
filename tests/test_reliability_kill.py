"""SIGKILL and rerun == uninterrupted, for real: ``train`` and ``collect`` as subprocesses, killed with
SIGKILL at chosen and random points (mid-save included), then rerun to the end and compared with
an uninterrupted run: generator params and metrics rows (wall times aside) exactly equal; every zoo
checkpoint's weights file byte-identical, its step/loss and the task manifests equal.

Kill points are found by watching the workdir (every 2 ms): an Orbax tmp folder under
``W/generator/`` (a save in progress), a ``.ckpt_*`` tmp folder in a zoo task (a checkpoint being
written), or a number of metrics rows / checkpoints drawn from a seeded RNG.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dnd_jax import locking, testing, zoo

REPO = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict:
    return testing.subprocess_env(OMP_NUM_THREADS="1", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _run_and_kill(cmd: list[str], env: dict, trigger, timeout: float = 300) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``trigger()`` is true. False if it finished first."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if trigger():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(cmd)
            time.sleep(0.002)
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# --- train ------------------------------------------------------------------------------------------------


def _train_cmd(zoo_dir: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "dnd_jax.train", "--config", str(REPO / "configs/tiny.py"), "--workdir", str(workdir),
            f"--config.zoo_workdir={zoo_dir}", "--config.total_steps=30", "--config.ckpt_steps=5",
            "--config.log_steps=1", "--config.eval_steps=10", "--config.keep_ckpts=3"]


def _saving(workdir: Path, after_step: int = 0):
    """True while an Orbax save of a step > after_step is in progress (its tmp folder exists)."""
    def check() -> bool:
        try:
            names = os.listdir(workdir / "generator")
        except FileNotFoundError:
            return False
        return any("tmp" in n and int(n.split(".")[0]) > after_step for n in names if n.split(".")[0].isdigit())
    return check


def _rows_at_least(workdir: Path, n: int):
    def check() -> bool:
        try:
            return (workdir / "metrics.jsonl").read_text().count("\n") >= n
        except FileNotFoundError:
            return False
    return check


def _metrics(workdir: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in r.items() if k != "step_time"} for r in rows]


def test_train_sigkilled_at_random_points_and_mid_save_resumes_exactly(tmp_path):
    import jax

    from dnd_jax import checkpoint

    zoo_dir = testing.make_synthetic_zoo(tmp_path / "zoo", tasks=("arc_e", "piqa", "boolq"))
    env = _env(tmp_path)
    ref, w = tmp_path / "ref", tmp_path / "killed"
    _run(_train_cmd(zoo_dir, ref), env)

    rng = random.Random(16)
    kills = [
        ("mid-save of step 5", _saving(w, 0)),
        (f"after {(n := rng.randint(8, 18))} metrics rows", _rows_at_least(w, n)),
        ("mid-save after step 20", _saving(w, 20)),
    ]
    killed = []
    for what, trigger in kills:
        if _run_and_kill(_train_cmd(zoo_dir, w), env, trigger):
            killed.append(what)
            assert (w / locking.LOCK_FILE).is_file()  # a dead holder's lock: taken over by the rerun
    _run(_train_cmd(zoo_dir, w), env)
    assert len(killed) >= 2, killed  # a mid-save kill may race a very fast save; most must land
    assert any("mid-save" in k for k in killed), killed

    a, b = checkpoint.load_generator(ref), checkpoint.load_generator(w)
    assert a.step == b.step == 30
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _metrics(ref) == _metrics(w)
    assert [r["step"] for r in _metrics(w)] == list(range(1, 31))
    assert not any("tmp" in n for n in os.listdir(w / "generator"))


# --- collect ---------------------------------------------------------------------------------------------


def _collect_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "dnd_jax.collect", "--config", str(REPO / "configs/tiny.py"), "--workdir",
            str(workdir), "--tasks=arc_e,piqa", "--config.zoo.torch_threads=1"]


def _writing_ckpt(workdir: Path):
    def check() -> bool:
        zdir = workdir / "zoo"
        try:
            return any(n.startswith(".ckpt_") for t in os.listdir(zdir) if (zdir / t).is_dir()
                       for n in os.listdir(zdir / t))
        except FileNotFoundError:
            return False
    return check


def _ckpts_at_least(workdir: Path, n: int):
    def check() -> bool:
        return len(list((workdir / "zoo").glob("*/ckpt_*/dnd_checkpoint.json"))) >= n
    return check


def _zoo_snapshot(workdir: Path) -> dict:
    out = {}
    for task in zoo.tasks(workdir):
        m = zoo.task_manifest(workdir, task)
        out[task] = {k: v for k, v in m.items() if "wall" not in k and "cpu_time" not in k}  # timings differ
        out[task]["base_model"] = {k: v for k, v in m["base_model"].items() if k != "path"}  # per workdir
        for ckpt in zoo.checkpoints(workdir, task):
            meta = zoo.checkpoint_meta(ckpt)
            out[(task, ckpt.name)] = ((ckpt / zoo.ADAPTER_WEIGHTS).read_bytes(), meta["step"], meta["loss"],
                                      meta["sha256"])
    return out


def test_collect_sigkilled_at_random_points_and_mid_write_resumes_exactly(tmp_path):
    env = _env(tmp_path)
    ref, w = tmp_path / "ref", tmp_path / "killed"
    _run(_collect_cmd(ref), env)

    rng = random.Random(16)
    kills = [
        ("mid-write of a checkpoint", _writing_ckpt(w)),
        (f"after {(n := rng.randint(2, 5))} checkpoints", _ckpts_at_least(w, n)),
        (f"after {(m := rng.randint(9, 12))} checkpoints", _ckpts_at_least(w, m)),
    ]
    killed = []
    for what, trigger in kills:
        if _run_and_kill(_collect_cmd(w), env, trigger):
            killed.append(what)
    _run(_collect_cmd(w), env)
    assert len(killed) >= 2, killed

    a, b = _zoo_snapshot(ref), _zoo_snapshot(w)
    assert a.keys() == b.keys() and len(a) == 2 + 2 * 4
    for key in a:
        assert a[key] == b[key], key
    assert all(zoo.task_manifest(w, t)["train_cpu_time_s"] > 0 for t in zoo.tasks(w))  # carried across the kills
    assert not list((w / "zoo").glob("*/.ckpt_*")) and not list((w / "zoo").glob("*/resume.pt"))


@pytest.mark.parametrize("verb", ["train"])
def test_lock_file_of_a_killed_run_does_not_block(tmp_path, verb):
    """A SIGKILLed holder leaves its lock file; the next run on the same host takes it over."""
    w = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dnd_jax import locking\n"
                               f"with locking.workdir_lock({str(w)!r}, {verb!r}):\n"
                               "    print('held', flush=True); time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    from dnd_jax import errors

    with pytest.raises(errors.LockedError, match=f"pid {holder.pid}"):
        with locking.workdir_lock(w, "collect"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    with locking.workdir_lock(w, "collect"):
        assert locking.holder(w)["pid"] == os.getpid()
