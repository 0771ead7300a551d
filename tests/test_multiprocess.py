"""2 processes x 2 CPU devices (jax.distributed + gloo on localhost) = 1 process x 4 devices.

Both runs use the same mesh shape (data=4) over 4 devices; in the 2-process run each process owns
2 of them and builds only its 4 rows of every global batch of 8 (checked in its log). Losses
within rtol 1e-5 (the same partitioned program; gloo and in-process all-reduces may sum in another
order). One test covers the plain and the function-loss paths: the function loss adds a term to
the same MSE, so a run with it exercises both (its per-process example draws and its FSDP-split
base LM included). The 2-process run is started by ``launch/local_multiprocess.sh``, as a user would.
"""
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dnd_jax import testing

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fl_zoo_dir(tmp_path_factory) -> Path:
    """A zoo that claims the tiny config's own base model (built in the zoo's workdir, where train finds it)."""
    from configs import tiny
    from dnd_jax import base_model

    workdir = tmp_path_factory.mktemp("flzoo")
    ref = base_model.resolve(tiny.get_config().base_model, workdir)
    return testing.make_synthetic_zoo(workdir, tasks=("arc_e", "piqa", "boolq"), base_model=ref.to_dict())


FUNCTION_LOSS = ["--config.function_loss.weight=0.5", "--config.function_loss.pool=8",
                 "--config.function_loss.max_len=48", "--config.total_steps=4"]


def _args(zoo: Path, workdir: Path, extra: list[str]) -> list[str]:
    return ["--config", str(REPO / "configs/tiny.py"), "--workdir", str(workdir), f"--config.zoo_workdir={zoo}",
            "--config.total_steps=10", "--config.log_steps=2", "--config.ckpt_steps=10", "--config.eval_steps=10",
            "--config.mesh=(('data', -1), ('model', 1))", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args: list[str], logdir: Path) -> list[str]:
    """launch/local_multiprocess.sh with 2 processes x 2 devices: each process's log (stdout + stderr)."""
    env = testing.subprocess_env(PY=sys.executable, NUM_PROCESSES="2", PORT=str(_free_port()), LOGDIR=str(logdir),
                                 DEVICES_PER_PROCESS="2", EXTRA_XLA_FLAGS=testing.TEST_XLA_FLAGS)
    proc = subprocess.run(["bash", str(REPO / "launch/local_multiprocess.sh"), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=900)
    logs = [(logdir / f"process_{i}.log").read_text() if (logdir / f"process_{i}.log").is_file() else ""
            for i in range(2)]
    assert proc.returncode == 0, proc.stderr[-2000:] + "".join(log[-3000:] for log in logs)
    assert proc.stdout.startswith(f"started 2 processes (logs: {logdir})")
    return logs


# The base LM split over 'data' (4 devices, 2 per process: each process places only its own shards).
BASE_FSDP = ["--config.min_shard_size=256", "--config.sharding=((r'base_lm/.*', \"fsdp(axis='data')\"), "
             "(r'.*/kernel', \"shard_dim(axis='model', dim=-1)\"), (r'.*', 'replicate'))"]


def test_two_processes_match_one(fl_zoo_dir, tmp_path):
    """Each process builds only its rows of every batch, draws the labelled examples of those rows only
    (the function loss) and holds its shards of the base LM; the losses agree with one process that
    holds all of it, step by step."""
    one = subprocess.run([sys.executable, "-m", "dnd_jax.train", *_args(fl_zoo_dir, tmp_path / "one", FUNCTION_LOSS)],
                         capture_output=True, text=True, cwd=REPO, env=testing.subprocess_env(4), timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "process 0/1 builds rows 0-7 of every global batch of 8" in one.stderr
    assert "placement on mesh" in one.stderr and "params/params/stage_0/prompt/kernel" in one.stderr

    logs = _two_processes(_args(fl_zoo_dir, tmp_path / "two", FUNCTION_LOSS + BASE_FSDP), tmp_path / "logs")
    assert re.search(r"process 0/2 builds rows 0-3 of every global batch of 8", logs[0])
    assert re.search(r"process 1/2 builds rows 4-7 of every global batch of 8", logs[1])
    assert re.search(r"base_lm/layers/gate_proj .*'data'", logs[0])  # the placement table (process 0's log)
    rows = {w: [json.loads(x) for x in (tmp_path / w / "metrics.jsonl").read_text().splitlines() if x.strip()]
            for w in ("one", "two")}
    assert [r["step"] for r in rows["two"]] == [r["step"] for r in rows["one"]] == [1, 2, 4]
    for a, b in zip(rows["two"], rows["one"], strict=True):
        assert a["fl_nll"] > 0 and a["fl_nll"] == pytest.approx(b["fl_nll"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    summary = [line for line in logs[0].splitlines() if line.startswith("{")]
    assert summary and json.loads(summary[-1])["step"] == 4  # process 0 prints the run's summary
