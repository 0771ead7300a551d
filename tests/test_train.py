"""Generator training on a synthetic zoo: conditions, batches, overfitting, sharding, resume, errors.

Tolerance for sharded (mesh data=4 x model=2 over 8 CPU devices) vs unsharded (1 device) runs:
losses within rtol 1e-4 and params within atol 1e-5 (XLA may reorder reductions across shards).
A killed-and-resumed run must match an uninterrupted one exactly (same devices, same programs).
"""
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from dnd_jax import conditions, input_pipeline, testing, trainer, zoo
from dnd_jax.weights import layout as layout_lib

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("compile_cache")


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return testing.make_synthetic_zoo(tmp_path_factory.mktemp("zoo"), tasks=("arc_e", "piqa", "boolq"))


def _config(zoo_dir: Path, **overrides):
    c = tiny.get_config()
    c.zoo_workdir = str(zoo_dir)
    c.log_steps = 5
    for k, v in overrides.items():
        c[k] = v
    return c


def _rows(history):
    return [{k: v for k, v in r.items() if k != "step_time"} for r in history]


def test_conditions_shape_padding_and_cache(zoo_dir, monkeypatch):
    c = _config(zoo_dir)
    emb = conditions.encode_prompts(["a short one", "a somewhat longer prompt " * 20], c)
    assert emb.shape == (2, c.conditions.max_len, 384) and emb.dtype == np.float32
    _, counts = conditions.encode(["a short one"], c)
    assert 0 < counts[0] < c.conditions.max_len and not emb[0, counts[0]:].any()
    first, _ = conditions.task_conditions(zoo_dir, "piqa", c)
    assert first.shape == (16, c.conditions.max_len, 384)
    cached = list((zoo_dir / "conditions").glob("piqa-*.npz"))
    assert len(cached) == 1
    monkeypatch.setattr(conditions, "encode", lambda *a, **k: pytest.fail("cache miss"))
    again, _ = conditions.task_conditions(zoo_dir, "piqa", c)
    np.testing.assert_array_equal(first, again)


def test_batches_are_a_function_of_seed_and_step(zoo_dir):
    c = _config(zoo_dir, holdout=("boolq",))
    data = input_pipeline.load(zoo_dir, c, trainer.training_tasks(c))
    assert data.tasks == ["arc_e", "piqa"]
    assert len(data.val_tokens) == 2 and len(data.train_tokens) == 6  # last checkpoint per task held out
    assert data.ckpt_dirs["arc_e"][-1] == zoo.checkpoints(zoo_dir, "arc_e")[-1].name
    a = input_pipeline.batch_indices(data, 7, 8, 4, seed=0)
    b = input_pipeline.batch_indices(data, 7, 8, 4, seed=0)
    d = input_pipeline.batch_indices(data, 8, 8, 4, seed=0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], d[1])
    ckpt, prompts = a
    for i in range(8):  # prompts come from the checkpoint's own task, without repeats
        assert len(set(prompts[i])) == 4 and prompts[i].max() < len(data.conds[data.train_task[ckpt[i]]])
    # Normalized targets: zero on padding, roughly standardized on real positions.
    assert not data.train_tokens[:, ~data.mask].any()
    assert 0.5 < data.train_tokens[:, data.mask].std() < 1.5


def test_overfits_and_sharded_matches_unsharded(zoo_dir, tmp_path):
    assert jax.device_count() == 8
    cfg8 = _config(zoo_dir, mesh=(("data", 4), ("model", 2)), min_shard_size=1024, ckpt_steps=60, eval_steps=30)
    r8 = trainer.train_and_evaluate(cfg8, tmp_path / "sharded")
    cfg1 = _config(zoo_dir, mesh=(("data", -1), ("model", 1)), ckpt_steps=60, eval_steps=30)
    r1 = trainer.train_and_evaluate(cfg1, tmp_path / "single", devices=jax.devices()[:1])

    losses8 = [r["loss"] for r in r8["history"]]
    assert losses8[0] / losses8[-1] >= 10, losses8  # a tiny generator overfits a tiny zoo
    assert r8["val_loss"] < 0.2 * losses8[0]
    # Some kernels really were split over 'model'.
    specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(r8["params"])}
    assert any("model" in s for s in specs), specs
    np.testing.assert_allclose(losses8, [r["loss"] for r in r1["history"]], rtol=1e-4)
    np.testing.assert_allclose(r8["val_loss"], r1["val_loss"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 r8["params"], r1["params"])


def test_killed_and_resumed_equals_uninterrupted(zoo_dir, tmp_path):
    one = jax.devices()[:1]
    cfg = _config(zoo_dir, mesh=(("data", -1), ("model", 1)), total_steps=40, ckpt_steps=20, eval_steps=20)
    full = trainer.train_and_evaluate(cfg, tmp_path / "full", devices=one)
    # "Killed" at step 27: checkpoint 20 exists, metrics already hold step 25.
    killed = trainer.train_and_evaluate(cfg, tmp_path / "killed", devices=one, max_steps=27)
    assert killed["step"] == 27 and killed["history"][-1]["step"] == 25
    resumed = trainer.train_and_evaluate(cfg, tmp_path / "killed", devices=one)
    assert resumed["step"] == 40
    assert _rows(resumed["history"]) == _rows(full["history"])  # exact, no duplicated steps
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 full["params"], resumed["params"])
    # A finished run returns at once with the saved generator.
    again = trainer.train_and_evaluate(cfg, tmp_path / "full", devices=one)
    assert again["step"] == 40 and _rows(again["history"]) == _rows(full["history"])
    # A different recipe in the same workdir is refused.
    with pytest.raises(trainer.ConfigError, match="another config"):
        trainer.train_and_evaluate(_config(zoo_dir, mesh=(("data", -1), ("model", 1)), total_steps=40,
                                         ckpt_steps=20, lr=0.5), tmp_path / "full", devices=one)


def test_load_generator_round_trip(zoo_dir, tmp_path):
    cfg = _config(zoo_dir, holdout=("boolq",), total_steps=10, ckpt_steps=5, eval_steps=10)
    result = trainer.train_and_evaluate(cfg, tmp_path / "gen", devices=jax.devices()[:1])
    gen = trainer.load_generator(tmp_path / "gen")
    meta = gen.metadata
    assert gen.step == 10 and meta["step"] == 10
    assert meta["train_tasks"] == ["arc_e", "piqa"] and meta["holdout"] == ["boolq"]
    assert meta["conditions"] == {"num_prompts": 4, "max_len": 16, "dim": 384}
    assert meta["encoder"]["kind"] == "minilm" and len(meta["encoder"]["sha"]) == 16
    assert meta["lora"]["r"] == 4 and meta["base_model"]["name"] == "synthetic"
    assert gen.config.conditions.num_prompts == 4 and tuple(gen.layout.token_shape) == (4, 16)
    assert trainer.load_generator(tmp_path / "gen", step=5).step == 5
    with pytest.raises(FileNotFoundError):
        trainer.load_generator(tmp_path / "gen", step=7)

    prompts = zoo.prompts(zoo_dir, "boolq")[:4]
    cond = np.stack([conditions.encode_prompts(prompts, gen.config)])
    tokens = np.asarray(gen.model.apply(gen.params, cond))
    np.testing.assert_allclose(tokens, np.asarray(gen.model.apply(result["params"], cond)), atol=1e-6)
    sd = layout_lib.detokenize(gen.layout, gen.normalizer.denormalize(tokens)[0])
    ref = zoo.load_state_dict(zoo.checkpoints(zoo_dir, "boolq")[0])
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ref.items()}
    assert (tmp_path / "gen" / "metrics.jsonl").is_file() and any((tmp_path / "gen" / "tb").iterdir())


@pytest.mark.parametrize("overrides, match", [
    ({"tasks": ("arc_e", "nope")}, "unknown task 'nope'"),
    ({"holdout": ("hellaswag",)}, "not in config.tasks"),
    ({"tasks": ("arc_e", "piqa", "boolq", "hellaswag"), "holdout": ("hellaswag",)}, "not in the zoo"),
    ({"tasks": ("arc_e", "piqa", "boolq", "obqa")}, "not in the zoo"),
    ({"batch_size": 6}, "not divisible by the data axis"),
    ({"mesh": (("data", -1), ("model", 3))}, "does not divide"),
    ({"model_name": "nope"}, "unknown model_name"),
    ({"val_checkpoints_per_task": 4}, "leaves none to train on"),
    ({"token_weights": "bogus"}, "token_weights"),
])
def test_bad_configs_fail_before_compute(zoo_dir, tmp_path, overrides, match):
    cfg = _config(zoo_dir, **overrides)
    with pytest.raises(trainer.ConfigError, match=match):
        trainer.train_and_evaluate(cfg, tmp_path / "w")
    assert not (tmp_path / "w" / trainer.CKPT_DIR).exists()


@pytest.mark.parametrize("token_shape, match", [((4, 0), "positive"), ((4, 16, 2), "two positive"),
                                                 ((64, 64), "padding")])
def test_bad_token_shapes(zoo_dir, tmp_path, token_shape, match):
    cfg = _config(zoo_dir)
    cfg.layout.token_shape = token_shape
    with pytest.raises(trainer.ConfigError, match=match):
        trainer.validate(cfg, tmp_path)


def test_mismatching_checkpoint_is_named(zoo_dir, tmp_path):
    """A zoo checkpoint whose tensors differ from the first one's fails loading, naming the folder."""
    import shutil

    from dnd_jax import assets

    bad_zoo = tmp_path / "bad"
    shutil.copytree(zoo_dir / "zoo", bad_zoo / "zoo")
    ckpt = zoo.checkpoints(bad_zoo, "piqa")[1]
    tensors = zoo.load_state_dict(ckpt)
    tensors.pop(sorted(tensors)[0])
    from safetensors.numpy import save_file

    save_file(tensors, str(ckpt / zoo.ADAPTER_WEIGHTS))
    meta = zoo.checkpoint_meta(ckpt) | {"sha256": assets.file_sha256(ckpt / zoo.ADAPTER_WEIGHTS)}
    assets.write_json_atomic(ckpt / zoo.CKPT_META, meta)
    cfg = _config(bad_zoo)
    with pytest.raises(layout_lib.LayoutMismatchError, match=f"{ckpt.name}.*missing key"):
        input_pipeline.load(bad_zoo, cfg, trainer.training_tasks(cfg))


def test_cli_rejects_bad_config(zoo_dir, tmp_path):
    env = testing.subprocess_env()
    proc = subprocess.run(
        [sys.executable, "-m", "dnd_jax.train", "--config", str(REPO / "configs/tiny.py") + ":holdout=nope",
         "--workdir", str(tmp_path / "w"), f"--config.zoo_workdir={zoo_dir}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode != 0
    assert "unknown task 'nope'" in proc.stderr
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_the_suites_compile_level_trains_like_xlas_default(zoo_dir, tmp_path):
    """The suite compiles at -O0 (``testing.TEST_XLA_FLAGS``) to save time; a run at XLA's default level,
    as production compiles, logs the same losses, gradient norms and validation loss (to rtol 1e-5)."""
    history = {}
    for name, flags in (("tests", testing.TEST_XLA_FLAGS), ("default", "")):
        workdir = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "dnd_jax.train", "--config", str(REPO / "configs/tiny.py"), "--workdir",
             str(workdir), f"--config.zoo_workdir={zoo_dir}", "--config.total_steps=6", "--config.log_steps=1",
             "--config.eval_steps=6", "--config.ckpt_steps=6"],
            capture_output=True, text=True, cwd=REPO, env=testing.subprocess_env() | {"XLA_FLAGS": flags}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        history[name] = trainer.read_metrics(workdir)
    assert [r["step"] for r in history["tests"]] == [r["step"] for r in history["default"]] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(history["tests"], history["default"], strict=True):
        for key in ("loss", "grad_norm") + (("val_loss",) if "val_loss" in b else ()):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    assert "val_loss" in history["default"][-1]
