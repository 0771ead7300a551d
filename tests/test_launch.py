"""The cluster launchers issue the right commands (no TPU pod or SLURM cluster here: fake ``gcloud`` / ``srun``).

``launch/local_multiprocess.sh`` is run for real by ``tests/test_multiprocess.py``.
"""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Arguments a user could pass: a space, quotes, a glob and a dollar must reach dnd_jax.train unchanged.
ARGS = ["--config", "configs/qwen25_0p5b_commonsense.py:holdout=arc_c", "--workdir", "gs://bucket/run one",
        "--config.note=it's $HOME *"]


def _recorder(path: Path, log: Path) -> Path:
    """An executable that appends its argv (JSON) to ``log``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def test_tpu_pod_runs_train_on_every_worker_with_the_arguments_intact(tmp_path):
    bin_dir, gcloud_log, python_log = tmp_path / "bin", tmp_path / "gcloud.jsonl", tmp_path / "python.jsonl"
    _recorder(bin_dir / "gcloud", gcloud_log)
    repo = tmp_path / "worker repo"
    _recorder(repo / ".venv/bin/python", python_log)  # what the worker's venv python receives
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TPU": "my-v5e-64", "ZONE": "us-west4-a",
           "REPO": str(repo).replace(" ", "\\ ")}
    proc = subprocess.run(["bash", str(REPO / "launch/tpu_pod.sh"), *ARGS], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    [call] = _calls(gcloud_log)
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "my-v5e-64", "--zone", "us-west4-a", "--worker=all"]
    assert call[8] == "--command" and len(call) == 10
    # Each worker's shell runs the remote command: train gets the user's arguments, and 'auto'.
    remote = subprocess.run(["bash", "-c", call[9]], env=env, capture_output=True, text=True, timeout=60)
    assert remote.returncode == 0, remote.stderr
    assert _calls(python_log) == [["-m", "dnd_jax.train", *ARGS, "--coordinator_address=auto"]]


def test_tpu_pod_refuses_to_start_without_its_settings(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "gcloud.jsonl"
    _recorder(bin_dir / "gcloud", log)
    env = {k: v for k, v in os.environ.items() if k not in ("TPU", "ZONE")}
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    proc = subprocess.run(["bash", str(REPO / "launch/tpu_pod.sh"), *ARGS], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "set TPU to the TPU VM name" in proc.stderr
    assert not log.exists()  # nothing was started


def test_slurm_runs_one_train_task_per_node_with_the_arguments_intact(tmp_path):
    bin_dir, srun_log = tmp_path / "bin", tmp_path / "srun.jsonl"
    _recorder(bin_dir / "srun", srun_log)
    submit = tmp_path / "submit dir"
    submit.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(submit)}
    env.pop("PY", None)
    proc = subprocess.run(["bash", str(REPO / "launch/slurm.sbatch"), *ARGS], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _calls(srun_log) == [["--ntasks-per-node=1", ".venv/bin/python", "-m", "dnd_jax.train", *ARGS,
                                 "--coordinator_address=auto"]]
    header = (REPO / "launch/slurm.sbatch").read_text()
    assert "#SBATCH --ntasks-per-node=1" in header  # one process per node, each with all of its GPUs


def test_auto_coordinator_lets_jax_find_the_cluster(monkeypatch):
    import jax

    from dnd_jax import trainer

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(jax.config, "update", lambda *a: calls.append(("config", a)))
    trainer.init_distributed("auto", None, None)
    assert calls[-1] == ((), {})  # no address, count or id: JAX reads them from the TPU pod / SLURM
    calls.clear()
    trainer.init_distributed("10.0.0.1:1234", 4, 2)
    assert calls[-1] == ((), {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2})
    calls.clear()
    trainer.init_distributed(None, None, None)
    assert calls == []  # a single process joins nothing
