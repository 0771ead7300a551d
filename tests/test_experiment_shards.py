"""``experiment --shard=I/N``: targets run in separate processes, then an unsharded run writes the report.

Sharded then aggregated == unsharded (every system's every answer), nothing recomputed by the aggregating
run, a shard done with its targets scores the others' baselines, and the locks: a target another live
process works on is refused, a shard beside an unsharded run is refused, a shard before the zoo is
complete is a one-line error.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import tiny
from dnd_jax import errors, experiment, testing

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("piqa", "arc_e")


def _config():
    config = tiny.get_config()
    config.total_steps = 6
    config.ckpt_steps = 6
    config.eval_steps = 6
    config.experiment.holdouts = TARGETS
    config.experiment.cross_domain = ()
    config.experiment.baselines = ("base", "merged")
    config.eval.metrics = ("cloze",)
    config.eval.limit = 5
    config.eval.bootstrap = 50
    return config


def _answers(results: dict) -> dict:
    """Every target's every system's per-question outcomes (what the report's numbers come from)."""
    return {t: {s: {m: (e["acc"], e["n"], e.get("correct")) for m, e in metrics.items()}
                for s, metrics in r["systems"].items()}
            for t, r in results["targets"].items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("unsharded") / "w"
    return workdir, experiment.run(_config(), workdir)


def test_sharded_then_aggregated_equals_unsharded(reference, tmp_path):
    ref_dir, ref = reference
    workdir = tmp_path / "w"
    shutil.copytree(ref_dir / "zoo", workdir / "zoo")  # the zoo only: no generator, adapter or score is shared
    first = experiment.run(_config(), workdir, shard="0/2")
    # Done with piqa, shard 0 scored arc_e's baselines (not its generated adapter: shard 1's), so shard 1
    # found them cached; shard 1 then found nothing of piqa's left to help with.
    assert not (workdir / "generators" / "arc_e").exists()
    second = experiment.run(_config(), workdir, shard="1/2")
    assert list(first["targets"]) == ["piqa"] and list(second["targets"]) == ["arc_e"]
    arc_e = second["targets"]["arc_e"]["systems"]
    assert arc_e["base"]["cloze"]["cached"] and arc_e["merged"]["cloze"]["cached"]
    assert not arc_e["dnd"]["cloze"]["cached"]
    assert not (workdir / "results" / "results.json").exists()  # a shard knows only its targets: no report
    stages = json.loads((workdir / "experiment_stages.json").read_text())
    assert {"train/piqa", "train/arc_e", "evaluate/piqa", "evaluate/arc_e"} <= set(stages)

    t0 = time.perf_counter()
    final = experiment.run(_config(), workdir)
    assert time.perf_counter() - t0 < 60
    assert _answers(final) == _answers(ref) == _answers(first) | _answers(second)
    for t in TARGETS:  # the aggregating run retrained and rescored nothing
        assert len(json.loads((workdir / "experiment_stages.json").read_text())[f"train/{t}"]["runs"]) == 2
        for system, metrics in final["targets"][t]["systems"].items():
            assert all(e["cached"] is True for e in metrics.values()), (t, system)
        a = (workdir / "adapters" / f"dnd_{t}" / "adapter_model.safetensors").read_bytes()
        assert a == (ref_dir / "adapters" / f"dnd_{t}" / "adapter_model.safetensors").read_bytes()
    assert json.loads((workdir / "results" / "results.json").read_text())["targets"].keys() == set(TARGETS)


def test_a_target_held_by_another_process_is_refused(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / "w"
    shutil.copytree(ref_dir / "zoo", workdir / "zoo")
    holder = testing.hold_lock(workdir / ".locks" / "piqa")
    try:
        for shard in ("0/2", None):  # sharded or not, nobody works on a target another process holds
            with pytest.raises(errors.LockedError, match="in use by pid"):
                experiment.run(_config(), workdir, shard=shard)
        assert not (workdir / "generators" / "piqa").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_shard_beside_an_unsharded_run_or_before_the_zoo_is_refused(reference, tmp_path):
    ref_dir, _ = reference
    workdir = tmp_path / "w"
    shutil.copytree(ref_dir / "zoo", workdir / "zoo")
    holder = testing.hold_lock(workdir)
    try:
        with pytest.raises(errors.LockedError, match="shard would collide"):
            experiment.run(_config(), workdir, shard="1/2")
    finally:
        holder.kill()
        holder.wait()
    shutil.rmtree(workdir / "zoo" / "boolq" / sorted(p.name for p in (workdir / "zoo" / "boolq").glob("ckpt_*"))[-1])
    with pytest.raises(errors.InputError, match=r"complete zoo; \['boolq'\] not collected"):
        experiment.run(_config(), workdir, shard="1/2")
    with pytest.raises(errors.InputError, match="--shard must look like I/N"):
        experiment.run(_config(), workdir, shard="2")
    with pytest.raises(errors.InputError, match="--docs is written by the run without --shard"):
        experiment.run(_config(), workdir, shard="0/2", docs=str(tmp_path / "docs"))
    assert not (workdir / "generators").exists()


def test_concurrent_stage_logs_lose_no_entry(tmp_path):
    """Shards add their stage times to one experiment_stages.json: a read-modify-write under a file lock."""
    code = ("import sys; from pathlib import Path; from dnd_jax import pipeline\n"
            "for i in range(40): pipeline._stage_log(Path(sys.argv[1]), f'{sys.argv[2]}/{i}', 1.0)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name], cwd=REPO,
                              env=dict(os.environ, PYTHONPATH=str(REPO))) for name in ("a", "b", "c")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    stages = json.loads((tmp_path / "experiment_stages.json").read_text())
    assert set(stages) == {f"{n}/{i}" for n in "abc" for i in range(40)}


def test_a_failure_while_helping_leaves_the_work_to_its_owner(monkeypatch, capsys):
    """A shard's own targets are done when it helps: an error while helping (here on the first target it helps
    with) is printed with its traceback and the shard goes on with the next, exiting normally."""
    from dnd_jax import evaluation, pipeline

    calls = []

    def help_evaluate(config, workdir, task, **kw):
        calls.append(task)
        if len(calls) == 1:
            raise RuntimeError("boom while helping")
        return 3

    monkeypatch.setattr(evaluation, "help_evaluate", help_evaluate)
    pipeline._help_other_shards(_config(), Path("unused"), ["arc_e", "piqa"])
    assert calls == ["arc_e", "piqa"]
    out, err = capsys.readouterr()
    assert "RuntimeError: boom while helping" in err
    assert "helping with arc_e failed (above); left to the shard that owns arc_e" in out
    assert "helped with piqa (target piqa): 3 cache entries scored here" in out
