"""The experiment end to end on the tiny config: every stage runs, reports are written, reruns are free."""
import json

from configs import tiny
from dnd_jax import experiment


def _config():
    config = tiny.get_config()
    config.total_steps = 10
    config.ckpt_steps = 10
    config.experiment.holdouts = ("piqa",)
    config.experiment.cross_domain = ()
    config.experiment.baselines = ("base", "training_loras", "merged", "nearest", "oracle")
    config.eval.limit = 6
    config.eval.bootstrap = 200
    return config


def test_experiment_end_to_end_and_resume(tmp_path):
    workdir, docs = tmp_path / "w", tmp_path / "docs"
    results = experiment.run(_config(), workdir, docs=str(docs))
    res = results["targets"]["piqa"]
    systems = res["systems"]
    for name in ("base", "training_loras_mean", "merged", "nearest", "oracle", "dnd"):
        for metric in ("cloze", "mc"):
            entry = systems[name][metric]
            assert 0.0 <= entry["acc"] <= 1.0 and entry["n"] == 6, (name, metric)
    assert res["speed"]["oracle_train_wall_s"] > 0 and res["speed"]["generate_wall_s"] > 0
    for f in ("results.json", "results.md", "results.png"):
        assert (docs / f).is_file()
    md = (docs / "results.md").read_text()
    assert "| piqa |" in md and "DnD" in md
    stages = json.loads((workdir / "experiment_stages.json").read_text())
    assert {"collect", "train/piqa", "evaluate/piqa"} <= set(stages)

    # A rerun finds every stage done: the same numbers, no retraining (generator step unchanged).
    again = experiment.run(_config(), workdir)
    assert again["targets"]["piqa"]["systems"]["dnd"]["cloze"]["acc"] == systems["dnd"]["cloze"]["acc"]
    assert json.loads((workdir / "experiment_stages.json").read_text())["train/piqa"]["wall_s"] < 30


def test_generator_config_excludes_target_and_cross_domain():
    config = _config()
    config.tasks = ("arc_e", "piqa", "boolq", "sciq")
    config.experiment.cross_domain = ("sciq",)
    assert experiment.training_tasks(config, "piqa") == ["arc_e", "boolq"]
    assert experiment.training_tasks(config, "sciq") == ["arc_e", "piqa", "boolq"]
