"""2 processes x 2 CPU devices (jax.distributed + gloo on localhost) = 1 process x 4 devices.

Both runs use the same mesh shape (data=4) over 4 devices; in the 2-process run each process owns
2 of them and builds only its 4 rows of every global batch of 8 (checked in its log). Losses
within rtol 1e-5 (the same partitioned program; gloo and in-process all-reduces may sum in another
order). One test covers the plain and the function-loss paths: the function loss adds a term to
the same MSE, so a run with it exercises both (its per-process example draws and its FSDP-split
base LM included).
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


def _cmd(zoo: Path, workdir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "dnd_jax.train", "--config", str(REPO / "configs/tiny.py"), "--workdir", str(workdir),
            f"--config.zoo_workdir={zoo}", "--config.total_steps=10", "--config.log_steps=2",
            "--config.ckpt_steps=10", "--config.eval_steps=10", "--config.mesh=(('data', -1), ('model', 1))", *extra]


def _env(devices: int) -> dict:
    return testing.subprocess_env(devices)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(cmd: list[str]) -> list[tuple[str, str]]:
    port = _free_port()
    procs = [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                     f"--process_id={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(2))
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs


# The base LM split over 'data' (4 devices, 2 per process: each process places only its own shards).
BASE_FSDP = ["--config.min_shard_size=256", "--config.sharding=((r'base_lm/.*', \"fsdp(axis='data')\"), "
             "(r'.*/kernel', \"shard_dim(axis='model', dim=-1)\"), (r'.*', 'replicate'))"]


def test_two_processes_match_one(fl_zoo_dir, tmp_path):
    """Each process builds only its rows of every batch, draws the labelled examples of those rows only
    (the function loss) and holds its shards of the base LM; the losses agree with one process that
    holds all of it, step by step."""
    one = subprocess.run(_cmd(fl_zoo_dir, tmp_path / "one", FUNCTION_LOSS), capture_output=True, text=True, cwd=REPO,
                         env=_env(4), timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "process 0/1 builds rows 0-7 of every global batch of 8" in one.stderr
    assert "placement on mesh" in one.stderr and "params/params/stage_0/prompt/kernel" in one.stderr

    outs = _two_processes(_cmd(fl_zoo_dir, tmp_path / "two", FUNCTION_LOSS + BASE_FSDP))
    assert re.search(r"process 0/2 builds rows 0-3 of every global batch of 8", outs[0][1])
    assert re.search(r"process 1/2 builds rows 4-7 of every global batch of 8", outs[1][1])
    assert re.search(r"base_lm/layers/gate_proj .*'data'", outs[0][1])  # the placement table (process 0's log)
    rows = {w: [json.loads(x) for x in (tmp_path / w / "metrics.jsonl").read_text().splitlines() if x.strip()]
            for w in ("one", "two")}
    assert [r["step"] for r in rows["two"]] == [r["step"] for r in rows["one"]] == [1, 2, 4]
    for a, b in zip(rows["two"], rows["one"], strict=True):
        assert a["fl_nll"] > 0 and a["fl_nll"] == pytest.approx(b["fl_nll"], rel=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert json.loads(outs[0][0].strip().splitlines()[-1])["step"] == 4
