"""The experiment end to end on the tiny config: every stage runs, reports are written, reruns are free."""
import json
from pathlib import Path

import pytest

from configs import tiny
from dnd_jax import experiment, testing

ROOT = Path(__file__).resolve().parents[1]


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


def test_experiment_end_to_end_and_resume(tmp_path, condition_spy):
    from dnd_jax import tasks

    workdir, docs = tmp_path / "w", tmp_path / "docs"
    seen = condition_spy
    results = experiment.run(_config(), workdir, docs=str(docs))
    # The held-out adapter is generated from unscored prompts: none of the 6 scored questions.
    scored = {e.prompt for e in tasks.load_examples("piqa", "test", 6)}
    assert len(seen) == 1 and len(seen[0]) >= 32 and not set(seen[0]) & scored
    res = results["targets"]["piqa"]
    systems = res["systems"]
    for name in ("base", "training_loras_mean", "merged", "nearest", "oracle", "dnd"):
        for metric in ("cloze", "mc"):
            entry = systems[name][metric]
            assert 0.0 <= entry["acc"] <= 1.0 and entry["n"] == 6, (name, metric)
    speed = res["speed"]
    assert speed["oracle_train_wall_s"] > 0 and speed["generate_wall_s"] > 0
    assert speed["oracle_train_cpu_s"] > 0 and speed["generate_cpu_s"] > 0  # this zoo recorded CPU time
    assert speed["speedup_cpu"] == pytest.approx(speed["oracle_train_cpu_s"] / speed["generate_cpu_s"])
    for f in ("results.json", "results.md", "results.png"):
        assert (docs / f).is_file()
    md = (docs / "results.md").read_text()
    assert "| piqa |" in md and "DnD" in md
    assert "| oracle LoRA CPU (s) | CPU ratio |" in md  # the speed table shows the contention-proof figure
    stages = json.loads((workdir / "experiment_stages.json").read_text())
    assert {"collect", "train/piqa", "evaluate/piqa"} <= set(stages)
    assert all(0.05 < s["peak_rss_gb"] < 64 for s in stages.values()), stages  # GB, not KiB or bytes
    assert json.loads((docs / "experiment_stages.json").read_text()) == stages  # the docs carry their times

    assert list((workdir / "embedding_cache").glob("minilm-*/*.safetensors"))  # nearest's vectors, kept for reruns
    # A rerun finds every stage done: the same numbers, no retraining (generator step unchanged).
    again = experiment.run(_config(), workdir)
    assert again["targets"]["piqa"]["systems"]["dnd"]["cloze"]["acc"] == systems["dnd"]["cloze"]["acc"]
    train_stage = json.loads((workdir / "experiment_stages.json").read_text())["train/piqa"]
    assert len(train_stage["runs"]) == 2 and train_stage["runs"][1] < 30
    assert train_stage["wall_s"] == pytest.approx(sum(train_stage["runs"]), abs=0.02)

    # A variant (a recipe change) shares the zoo and the evaluation cache; its outputs go elsewhere.
    config = _config()
    config.experiment.variant = "wider"
    config.experiment.baselines = ("base",)
    config.model.hidden_shapes = tuple((h[0], h[1], 2 * h[2]) for h in config.model.hidden_shapes)
    variant = experiment.run(config, workdir)
    root = workdir / "variants" / "wider"
    assert experiment.output_root(config, workdir) == root
    assert (root / "adapters" / "dnd_piqa").is_dir() and (root / "results" / "results.md").is_file()
    for metric in ("cloze", "mc"):
        got, want = variant["targets"]["piqa"]["systems"]["base"][metric], systems["base"][metric]
        assert got["correct"] == want["correct"] and got["acc"] == want["acc"]
    assert not (root / "zoo").exists()

    # bench/condition_draws.py on this workdir: draw 0 is the experiment's own adapter (same bytes, same
    # cached scores, same difference to merged); another draw conditions on other prompts
    draws = testing.load_bench("condition_draws")
    study = draws.study(_config(), workdir, ["piqa"], [0, 1], ["cloze"])
    row = study["targets"]["piqa"]["cloze"]
    first = workdir / "draws" / "piqa" / "seed0" / "adapter_model.safetensors"
    assert first.read_bytes() == (workdir / "adapters" / "dnd_piqa" / "adapter_model.safetensors").read_bytes()
    assert first.read_bytes() != (workdir / "draws" / "piqa" / "seed1" / "adapter_model.safetensors").read_bytes()
    assert row["draws"]["0"]["acc"] == systems["dnd"]["cloze"]["acc"] and row["merged"] == systems["merged"]["cloze"]["acc"]
    assert row["draws"]["0"]["minus_merged"] == pytest.approx(res["paired"]["dnd - merged"]["cloze"]["diff"])
    assert "| piqa | cloze |" in draws.markdown(study)


def test_train_only_trains_the_generators_and_nothing_else(tmp_path):
    from dnd_jax import trainer
    from dnd_jax.errors import InputError

    workdir = tmp_path / "w"
    with pytest.raises(InputError, match="--train_only writes no report"):
        experiment.run(_config(), workdir, docs=str(tmp_path / "docs"), train_only=True)
    assert not workdir.exists()  # refused before the zoo
    out = experiment.run(_config(), workdir, train_only=True)
    gen_dir = workdir / "generators" / "piqa"
    assert out == {"targets": {"piqa": {"generator": str(gen_dir)}}}
    assert trainer.load_generator(gen_dir).step == 10  # a full generator, loadable
    assert not (workdir / "adapters").exists() and not (workdir / "results").exists()
    assert not (workdir / "eval_cache").exists()
    stages = json.loads((workdir / "experiment_stages.json").read_text())
    assert set(stages) == {"collect", "train/piqa"}
    experiment.run(_config(), workdir, train_only=True)  # found trained, not trained again
    runs = json.loads((workdir / "experiment_stages.json").read_text())["train/piqa"]["runs"]
    assert len(runs) == 2 and runs[1] < runs[0]


def test_a_foreign_generator_still_in_training_is_skipped_not_used(tmp_path, capsys):
    """Another experiment's generator (the commonsense one that math and coding score cross-domain) may be in
    training beside the run: an adapter from its partial weights would be cached as the row's for good, so
    it is skipped until it has reached its total_steps (the report run then fills the row in)."""
    from dnd_jax import checkpoint, pipeline, trainer

    zoo_dir = testing.make_synthetic_zoo(tmp_path / "zoo", tasks=("arc_e", "piqa", "boolq"))
    config = _config()
    config.zoo_workdir = str(zoo_dir)
    config.total_steps, config.ckpt_steps = 10, 5
    gen_dir = tmp_path / "other" / "generators" / "sciq"
    assert checkpoint.training_progress(gen_dir) is None
    trainer.train_and_evaluate(config, gen_dir, max_steps=7)  # preempted: step 5 saved, 10 planned
    assert checkpoint.training_progress(gen_dir) == (5, 10)
    out = pipeline.run_foreign_generator(config, tmp_path / "w", "piqa", "commonsense", str(gen_dir))
    assert out == {"skipped": f"generator at {gen_dir} still training (step 5 of 10)"}
    assert "still training (step 5 of 10): skipped" in capsys.readouterr().out
    assert not (tmp_path / "w").exists()  # no adapter generated, nothing scored
    trainer.train_and_evaluate(config, gen_dir)
    assert checkpoint.training_progress(gen_dir) == (10, 10)
    missing = pipeline.run_foreign_generator(config, tmp_path / "w", "piqa", "commonsense", str(tmp_path / "none"))
    assert missing["skipped"].endswith("not found")


def test_generator_config_excludes_target_and_cross_domain():
    config = _config()
    config.tasks = ("arc_e", "piqa", "boolq", "sciq")
    config.experiment.cross_domain = ("sciq",)
    assert experiment.training_tasks(config, "piqa") == ["arc_e", "boolq"]
    assert experiment.training_tasks(config, "sciq") == ["arc_e", "piqa", "boolq"]


def test_speed_entry_uses_cpu_time_only_where_both_sides_recorded_it():
    from dnd_jax import pipeline, report

    gen = {"wall_s": 2.0, "cpu_s": 3.0, "load_s": 1.0}
    old_zoo = pipeline.speed_entry({"train_wall_time_s": 600.0}, gen)  # collected before CPU time was recorded
    assert old_zoo["speedup"] == 300.0 and "speedup_cpu" not in old_zoo
    new_zoo = pipeline.speed_entry({"train_wall_time_s": 600.0, "train_cpu_time_s": 150.0, "torch_threads": 1}, gen)
    assert new_zoo["speedup_cpu"] == 50.0 and new_zoo["oracle_torch_threads"] == 1

    def md(speed: dict) -> str:
        return report.markdown({"targets": {"t": {"systems": {}, "speed": speed}}})

    assert "CPU (s)" not in md(old_zoo)  # old results: wall columns only, and a note saying why
    assert "Wall times only: CPU time was not recorded for both" in md(old_zoo)
    assert "| t | 2.00 | 600 | 300x | 3.00 | 150 | 50x |" in md(new_zoo)
    assert "Wall times only" not in md(new_zoo)
    mixed = report.markdown({"targets": {"a": {"systems": {}, "speed": old_zoo}, "b": {"systems": {}, "speed": new_zoo}}})
    assert "| a | 2.00 | 600 | 300x | – | – | – |" in mixed and "for the targets marked –" in mixed


def test_paired_table_reads_the_same_way_for_bpb_and_accuracy():
    """bpb is stored as minus bits per byte: its paired row shows DnD's bits minus the baseline's (negative =
    better) next to the probability that DnD is not better, the same column as for accuracies."""
    from dnd_jax import report

    paired = {"dnd - base": {"bpb": {"diff": 0.012, "ci": [0.004, 0.02], "p_le_0": 0.001, "n": 200},
                             "cloze": {"diff": 0.03, "ci": [0.005, 0.055], "p_le_0": 0.01, "n": 200}}}
    md = report.markdown({"targets": {"t": {"systems": {}, "paired": paired}}})
    assert "| target | comparison | metric | diff | 95% CI | P(DnD not better) |" in md
    assert "| t | dnd - base | bpb | -0.012 | [-0.020, -0.004] | 0.001 |" in md
    assert "| t | dnd - base | cloze | +3.0 | [+0.5, +5.5] | 0.010 |" in md
    assert "negative difference is DnD better" in md
    assert "negative difference" not in report.markdown(
        {"targets": {"t": {"systems": {}, "paired": {"dnd - base": {"cloze": paired["dnd - base"]["cloze"]}}}}})


def test_experiment_figure_draws_every_metric_scored_primary_first(tmp_path, monkeypatch):
    """A math or coding report's figure has a panel per metric (bits per byte first: the primary metric), each
    with the targets scored on it; a cross-domain cloze row gets its own panel instead of the only one."""
    from dnd_jax import report

    cell = {"acc": -0.6, "ci": [-0.62, -0.58], "n": 200}
    results = {"targets": {
        "gsm8k": {"systems": {"base": {"bpb": cell, "exact_match": {"acc": 0.03, "ci": [0.01, 0.05], "n": 200}},
                              "dnd": {"bpb": cell, "exact_match": {"acc": 0.01, "ci": [0.0, 0.02], "n": 200}}}},
        "arc_c<-gsm8k": {"systems": {"base": {"cloze": {"acc": 0.28, "ci": [0.2, 0.3], "n": 200}},
                                     "dnd": {"cloze": {"acc": 0.27, "ci": [0.2, 0.3], "n": 200}}}}}}
    assert report.figure_metrics(results) == ["bpb", "exact_match", "cloze"]
    axes = []
    real = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path, **kw: (axes.extend(fig.axes), real(fig, path, **kw)))
    report.write(results, tmp_path)
    assert [ax.get_title() for ax in axes] == ["bpb (95% CI)", "exact_match (95% CI)", "cloze (95% CI)"]
    colours = [{c.get_label(): c.patches[0].get_facecolor() for c in ax.containers if getattr(c, "patches", None)}
               for ax in axes]
    assert all(c.keys() == {"base", "DnD"} for c in colours)
    assert colours[0] == colours[1] == colours[2] and colours[0]["base"] != colours[0]["DnD"]  # one per system
    assert axes[0].get_ylim()[0] == pytest.approx(0.9 * 0.58)  # bits per byte: the axis starts near the data
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_condition_draws_shards_split_the_targets_and_leave_the_report_to_a_full_run(monkeypatch):
    """bench/condition_draws.py --shard=I/N: every N-th target from the I-th; with --out it is refused (the run
    without --shard writes the report from the shards' cached adapters and scores)."""
    from types import SimpleNamespace

    from absl import app

    draws = testing.load_bench("condition_draws")
    seen = []
    monkeypatch.setattr(draws, "study", lambda config, workdir, targets, seeds, metrics: seen.append(targets) or
                        {"seeds": seeds, "num_prompts": 1, "targets": {}})

    def flags(shard, out=""):
        return {k: SimpleNamespace(value=v) for k, v in dict(
            config=_config(), workdir="unused", seeds=["0", "1"], targets=["arc_c", "arc_e", "boolq"], metrics=[],
            out=out, shard=shard).items()}

    draws.main(flags("1/2"))
    draws.main(flags(None))
    assert seen == [["arc_e"], ["arc_c", "arc_e", "boolq"]]
    with pytest.raises(app.UsageError, match="--out is written by the run without --shard"):
        draws.main(flags("0/2", out="somewhere"))
    with pytest.raises(app.UsageError, match="--shard"):
        draws.main(flags("2/2"))
