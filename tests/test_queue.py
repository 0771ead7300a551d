"""launch/queue.sh: the long runs behind docs/, resumable from one command (a stub Python records calls)."""
import importlib.util
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUEUE = ROOT / "launch" / "queue.sh"

STUB = """#!/bin/bash
echo "$*" >> "$STUB_CALLS"
case "$*" in *"$STUB_FAIL"*) exit 3;; esac
exit 0
"""


def _queue(tmp_path: Path, *args: str, fail: str = "no-such-job-fails") -> subprocess.CompletedProcess:
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PY=str(stub), QUEUE_ROOT=str(tmp_path / "w"), STUB_CALLS=str(tmp_path / "calls"),
               STUB_FAIL=fail)
    return subprocess.run(["bash", str(QUEUE), *args], capture_output=True, text=True, env=env, timeout=60)


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.is_file() else []


def test_list_names_real_configs_and_verbs():
    out = subprocess.run(["bash", str(QUEUE), "--list"], capture_output=True, text=True, check=True).stdout
    jobs = dict(line.split(None, 1) for line in out.splitlines())
    assert list(jobs)[:7] == ["results_zoo", "sciq_generator", "results", "math_zoo", "math", "coding_zoo", "coding"]
    # the math and coding experiments' foreign (commonsense) generator, trained before either needs it
    assert "--only sciq --train_only" in jobs["sciq_generator"]
    for cmd in jobs.values():
        for config in re.findall(r"configs/\w+\.py", cmd):
            assert (ROOT / config).is_file(), config
        for module in re.findall(r"-m (dnd_jax[\w.]+)", cmd):
            assert importlib.util.find_spec(module) is not None, module
    # the same configs as the commands the README gives for docs/results, math, coding and the curve
    readme = (ROOT / "README.md").read_text()
    for config in ("smollm2_commonsense", "smollm2_math", "smollm2_coding", "smollm2_many"):
        assert f"configs/{config}.py" in readme
        assert any(f"configs/{config}.py" in c and ("--docs" in c or c.startswith("experiment_shards"))
                   for c in jobs.values()), config


def test_experiment_jobs_run_their_targets_in_shards_then_write_the_report(tmp_path):
    res = _queue(tmp_path, "math")
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    assert len(calls) == 3
    shards = sorted(calls[:2], key=lambda c: c.split("--shard=")[1])
    for i, c in enumerate(shards):
        assert c.startswith("-m dnd_jax.experiment --config configs/smollm2_math.py")
        assert c.endswith(f"--shard={i}/2") and "--docs" not in c
    # the report: one unsharded run over the shards' cached stages, into the queue's docs folder
    assert calls[2] == f"-m dnd_jax.experiment --config configs/smollm2_math.py --workdir {tmp_path}/w/math " \
                       f"--docs {tmp_path}/w/docs/results/math"
    assert (tmp_path / "w" / "queue" / "math.done").is_file()
    # a failed shard: no report, the job is marked failed
    (tmp_path / "again").mkdir()
    res = _queue(tmp_path / "again", "coding", fail="--shard=1/2")
    calls = _calls(tmp_path / "again")
    assert len(calls) == 2 and all("--shard=" in c for c in calls)
    assert (tmp_path / "again" / "w" / "queue" / "coding.failed").is_file()


def test_condition_draws_run_in_shards_then_write_the_report(tmp_path):
    res = _queue(tmp_path, "draws")
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    args = (f"bench/condition_draws.py --config configs/smollm2_commonsense.py --workdir {tmp_path}/w/smollm2 "
            "--seeds 0,1,2,3,4 --metrics cloze")
    assert sorted(calls[:2]) == [f"{args} --shard=0/2", f"{args} --shard=1/2"]
    assert calls[2:] == [f"{args} --out {tmp_path}/w/docs/results/condition_draws"]  # the report: all cached


def test_runs_in_order_marks_done_and_skips_on_rerun(tmp_path):
    res = _queue(tmp_path, "results_zoo", "results")
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    # two 1-thread collect shards, then the experiment writing into the queue's docs folder, not docs/
    assert sorted(c.split("--shard=")[1] for c in calls[:2]) == ["0/2", "1/2"]
    assert all("dnd_jax.collect" in c and "torch_threads=1" in c for c in calls[:2])
    assert "dnd_jax.experiment" in calls[2] and f"--docs {tmp_path}/w/docs/results" in calls[2]
    assert len(calls) == 3
    assert (tmp_path / "w" / "queue" / "results.done").is_file()
    again = _queue(tmp_path, "results_zoo", "results")
    assert again.returncode == 0 and len(_calls(tmp_path)) == 3  # nothing ran twice
    assert "done before" in again.stdout


def test_a_failed_job_is_not_marked_and_later_jobs_go_on(tmp_path):
    res = _queue(tmp_path, "math_zoo", "math", "coding", fail="smollm2_math.py --workdir")
    assert res.returncode == 1
    assert "math_zoo: FAILED" in res.stdout and "math: FAILED" in res.stdout
    queue = tmp_path / "w" / "queue"
    assert not (queue / "math_zoo.done").exists() and not (queue / "math.done").exists()
    assert (queue / "coding.done").is_file()
    assert any("smollm2_coding.py" in c for c in _calls(tmp_path))


def test_bad_job_name_is_refused_before_anything_runs(tmp_path):
    res = _queue(tmp_path, "results", "nope")
    assert res.returncode == 2 and "unknown job 'nope'" in res.stderr
    assert _calls(tmp_path) == [] and not (tmp_path / "w").exists()


def _status(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, QUEUE_ROOT=str(tmp_path / "w"))
    proc = subprocess.run(["bash", str(QUEUE), "--status"], capture_output=True, text=True, env=env, timeout=60,
                          check=True)
    assert proc.stderr == ""  # e.g. no "grep: binary file matches" from a log cut inside a character
    out = proc.stdout
    return {line.split()[0]: line.split(None, 1)[1].strip() for line in out.splitlines()}


def test_status_tells_done_failed_interrupted_running_and_pending(tmp_path):
    res = _queue(tmp_path, "math_zoo", "coding", fail="smollm2_math.py --workdir")
    assert res.returncode == 1
    queue = tmp_path / "w" / "queue"
    assert not list(queue.glob("*.running")) and not (queue / "queue.pid").exists()  # a finished queue cleans up
    (queue / "results.running").write_text("999999999 2026-12-01T00:00:00Z\n")  # a queue killed mid-job
    sleeper = subprocess.Popen(["bash", "-c", "sleep 30; :", "queue.sh"])  # a live process named queue.sh
    try:
        (queue / "curve.running").write_text(f"{sleeper.pid} 2026-12-01T00:00:00Z\n")
        (queue / "curve.log").write_text("start\ntrain 152:  10%|#  | 6/60 [00:10<01:30]\rtrain 152:  12%|#  | 7/60\r\n")
        # the log's last 4 KiB may begin inside a multi-byte bar character: still read as text
        (queue / "many_zoo.log").write_bytes(b"\x96\x88 bar\ncloze:  24%|\xe2\x96\x88\xe2\x96\x88 | 48/200\r\n")
        status = _status(tmp_path)
    finally:
        sleeper.kill()
    assert status["coding"].startswith("done 20") and status["math_zoo"].startswith("failed 20")
    assert status["results"] == "interrupted" and status["many_zoo"].split()[0] == "pending"
    assert status["many_zoo"].endswith("cloze:  24%|\u2588\u2588 | 48/200")
    assert status["curve"].split()[0] == "running" and status["curve"].endswith("train 152:  12%|#  | 7/60")


def test_a_second_queue_is_refused_while_one_runs(tmp_path):
    queue = tmp_path / "w" / "queue"
    queue.mkdir(parents=True)
    sleeper = subprocess.Popen(["bash", "-c", "sleep 30; :", "queue.sh"])
    other = subprocess.Popen(["sleep", "30"])  # alive, but not a queue: its pid in queue.pid is stale
    try:
        (queue / "queue.pid").write_text(f"{other.pid} 2026-12-01T00:00:00Z\n")
        assert _queue(tmp_path, "results_zoo").returncode == 0
        (queue / "queue.pid").write_text(f"{sleeper.pid} 2026-12-01T00:00:00Z\n")
        res = _queue(tmp_path, "results")
    finally:
        sleeper.kill()
        sleeper.wait()
        other.kill()
    assert res.returncode == 2 and "another queue is running" in res.stderr and len(_calls(tmp_path)) == 2
    # once that queue is gone its pid file is stale, and a new queue runs
    res = _queue(tmp_path, "results")
    assert res.returncode == 0 and len(_calls(tmp_path)) == 3 and not (queue / "queue.pid").exists()


KILLING_STUB = """#!/bin/bash
echo "$*" >> "$STUB_CALLS"
case "$*" in *"$STUB_KILL"*)
  n=$(cat "$STUB_CALLS.kills" 2>/dev/null || echo 0)
  if ((n < STUB_KILLS)); then echo $((n + 1)) > "$STUB_CALLS.kills"; kill -9 $$; fi;;
esac
case "$*" in *"$STUB_FAIL"*) exit 3;; esac
exit 0
"""


def _killing_queue(tmp_path: Path, *args: str, kill: str, kills: int, fail: str = "no-such-job-fails"):
    stub = tmp_path / "python"
    stub.write_text(KILLING_STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PY=str(stub), QUEUE_ROOT=str(tmp_path / "w"), STUB_CALLS=str(tmp_path / "calls"),
               STUB_KILL=kill, STUB_KILLS=str(kills), STUB_FAIL=fail, QUEUE_RETRY_WAIT="0")
    return subprocess.run(["bash", str(QUEUE), *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_sigkilled_process_runs_again_and_only_that_one(tmp_path):
    """The OOM killer's SIGKILL (exit 137) reruns that process (resumable), up to QUEUE_RETRIES = 2 times;
    its sibling shard is not rerun, and other failures are not retried."""
    res = _killing_queue(tmp_path, "results_zoo", kill="--shard=1/2", kills=1)
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    assert sorted(c.split("--shard=")[1] for c in calls) == ["0/2", "1/2", "1/2"]
    assert (tmp_path / "w" / "queue" / "results_zoo.done").is_file()
    assert "SIGKILLed" in (tmp_path / "w" / "queue" / "results_zoo.log").read_text()

    (tmp_path / "b").mkdir()
    res = _killing_queue(tmp_path / "b", "results", kill="dnd_jax.experiment", kills=5)  # killed every time
    assert res.returncode == 1 and len(_calls(tmp_path / "b")) == 3  # the first run + 2 retries
    assert (tmp_path / "b" / "w" / "queue" / "results.failed").is_file()

    (tmp_path / "c").mkdir()
    res = _killing_queue(tmp_path / "c", "results", kill="nothing", kills=0, fail="dnd_jax.experiment")
    assert res.returncode == 1 and len(_calls(tmp_path / "c")) == 1  # exit 3: not retried


def test_shards_retry_once_and_pin_to_cores_the_queue_may_use(tmp_path):
    """experiment_shards retries its own processes (the job is not retried around it again), and pins
    each shard to a core from the queue's own affinity list, not core 0.. (a cpuset may start elsewhere)."""
    res = _killing_queue(tmp_path, "math", kill="--shard=1/2", kills=99)  # shard 1 SIGKILLed every time
    calls = _calls(tmp_path)
    assert res.returncode == 1
    assert sorted(c.split("--shard=")[1] for c in calls) == ["0/2", "1/2", "1/2", "1/2"]  # 1 + 2 retries, once

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs to start the queue on the second one only")
    stub = tmp_path / "pinned" / "python"
    stub.parent.mkdir()
    stub.write_text('#!/bin/bash\necho "$(awk \'/^Cpus_allowed_list/ {print $2}\' /proc/self/status) $*" '
                    '>> "$STUB_CALLS"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    cpu = str(sorted(os.sched_getaffinity(0))[-1])
    env = dict(os.environ, PY=str(stub), QUEUE_ROOT=str(stub.parent / "w"), STUB_CALLS=str(stub.parent / "calls"))
    res = subprocess.run(["taskset", "-c", cpu, "bash", str(QUEUE), "math"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = (stub.parent / "calls").read_text().splitlines()
    assert len(lines) == 3 and all(line.split()[0] == cpu for line in lines)


def test_status_shows_each_running_shards_bar(tmp_path):
    """Two shards write interleaved bars into one log: --status shows the latest line of each unfinished one."""
    queue = tmp_path / "w" / "queue"
    queue.mkdir(parents=True)
    (queue / "math_zoo.log").write_text("start\rcollect a:  10%|# | 6/60\rcollect b:   2%|  | 1/60\r"
                                        "collect a:  12%|# | 7/60\r\nwarn: x\rcollect c: 100%|##| 60/60\r")
    assert _status(tmp_path)["math_zoo"] == "pending                            collect a:  12%|# | 7/60 ; " \
                                            "collect b:   2%|  | 1/60"
    (queue / "coding_zoo.log").write_text("collect d: 100%|##| 60/60\rall done\n")  # every bar finished
    assert _status(tmp_path)["coding_zoo"].endswith("all done")
    # a long log read from its last 4 KiB: the line cut there ("ect e: ...") is not shown as a bar
    (queue / "curve.log").write_text("collect e:  50%|# | 30/60\r" * 400 + "collect f:   5%|  | 3/60\r")
    assert _status(tmp_path)["curve"].split(None, 1)[1] == "collect e:  50%|# | 30/60 ; collect f:   5%|  | 3/60"
