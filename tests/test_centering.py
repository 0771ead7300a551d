"""Similarity centering (issue 13, item 5): the generator predicts a residual from the prompt-weighted
mean of the *other* training tasks, and generation adds the target's center back."""
import shutil

import numpy as np
import pytest

from configs import tiny
from dnd_jax import conditions, errors, generator, input_pipeline, testing, trainer, zoo
from dnd_jax.weights import centering

TASKS = ("arc_e", "piqa", "boolq", "obqa")


def test_directions_ignore_padding_rows():
    rng = np.random.default_rng(0)
    cond = np.zeros((2, 5, 4))
    cond[0, :3] = rng.normal(size=(3, 4))
    cond[1, :5] = rng.normal(size=(5, 4))
    d = centering.sentence_directions(cond)
    want0 = cond[0, :3].mean(0) / np.linalg.norm(cond[0, :3].mean(0))
    np.testing.assert_allclose(d[0], want0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    # The same prompt padded more (longer L) keeps its direction.
    longer = np.concatenate([cond, np.zeros((2, 3, 4))], axis=1)
    np.testing.assert_allclose(centering.direction(longer), centering.direction(cond), atol=1e-12)


def test_weights_softmax_leave_one_out_and_limits():
    dirs = np.eye(3)
    w = centering.weights(np.array([1.0, 0.0, 0.0]), dirs, 0.05, exclude=0)
    assert w[0] == 0 and w.sum() == pytest.approx(1.0) and w[1] == pytest.approx(w[2])
    w = centering.weights(np.array([0.9, 0.1, 0.0]), dirs, 1e-3)
    assert w[0] == pytest.approx(1.0)  # temperature -> 0: the nearest task
    w = centering.weights(np.array([0.9, 0.1, 0.0]), dirs, 1e6)
    np.testing.assert_allclose(w, 1 / 3, atol=1e-5)  # temperature -> inf: the plain mean
    with pytest.raises(ValueError, match="positive"):
        centering.weights(dirs[0], dirs, 0.0)


def test_fit_and_subtract_match_a_direct_computation(monkeypatch):
    monkeypatch.setattr(centering, "_CHUNK", 7)  # several GEMM chunks over 2 x 3 x 5 = 30 columns
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(7, 2, 3, 5)).astype(np.float32)
    task_of = np.array([0, 0, 1, 1, 2, 2, 2])
    conds = [rng.normal(size=(4, 6, 8)) for _ in range(3)]
    bank = centering.fit(["a", "b", "c"], conds, tokens, task_of, 0.2, 3)
    np.testing.assert_allclose(bank.tokens[2], tokens[4:].mean(0), atol=1e-6)
    np.testing.assert_allclose(bank.dirs[1], centering.direction(conds[1][:3]), atol=1e-6)
    val = rng.normal(size=(3, 2, 3, 5)).astype(np.float32)
    val_of = np.array([0, 1, 2])
    before, val_before = tokens.copy(), val.copy()
    w = centering.subtract_centers(bank, [(tokens, task_of), (val, val_of)])
    assert np.all(np.diag(w) == 0) and np.allclose(w.sum(1), 1)
    for i, t in enumerate(task_of):
        want = before[i] - sum(w[t, j] * bank.tokens[j] for j in range(3))
        np.testing.assert_allclose(tokens[i], want, atol=1e-5)
    np.testing.assert_allclose(val[2], val_before[2] - (w[2, 0] * bank.tokens[0] + w[2, 1] * bank.tokens[1]), atol=1e-5)
    # The generation-time center of task 0's own prompts, with nothing excluded, weighs task 0 most.
    assert np.argmax(centering.weights(centering.direction(conds[0][:3]), bank.dirs, 0.2)) == 0


def test_bank_round_trip_and_tampering(tmp_path):
    rng = np.random.default_rng(2)
    bank = centering.Bank(["a", "b"], rng.normal(size=(2, 3, 4)).astype(np.float32),
                          rng.normal(size=(2, 8)).astype(np.float32), 0.05, 64)
    sha = bank.save(tmp_path / "bank.safetensors")
    back = centering.Bank.load(tmp_path / "bank.safetensors", sha, (3, 4))
    assert back.tasks == ["a", "b"] and back.temperature == 0.05 and back.max_prompts == 64
    np.testing.assert_array_equal(back.tokens, bank.tokens)
    np.testing.assert_array_equal(back.dirs, bank.dirs)
    with pytest.raises(centering.BankError, match="needs"):
        centering.Bank.load(tmp_path / "bank.safetensors", sha, (3, 5))
    data = bytearray((tmp_path / "bank.safetensors").read_bytes())
    data[-3] ^= 1
    (tmp_path / "bank.safetensors").write_bytes(bytes(data))
    with pytest.raises(centering.BankError, match="sha256"):
        centering.Bank.load(tmp_path / "bank.safetensors", sha, (3, 4))
    with pytest.raises(centering.BankError, match="missing"):
        centering.Bank.load(tmp_path / "nope.safetensors", sha, (3, 4))
    assert not list(tmp_path.glob(".bank*"))  # no temp file left behind


def _config(zoo_dir, mode: str):
    c = tiny.get_config()
    c.tasks = TASKS
    c.holdout = ("obqa",)
    c.zoo_workdir = str(zoo_dir)
    c.total_steps, c.ckpt_steps, c.log_steps, c.eval_steps = 4, 4, 2, 4
    c.center.mode = mode
    c.center.temperature = 0.1
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    zoo_dir = testing.make_synthetic_zoo(tmp_path_factory.mktemp("zoo"), tasks=TASKS, num_prompts=12)
    gen_dir = tmp_path_factory.mktemp("gen") / "sim"
    trainer.train_and_evaluate(_config(zoo_dir, "similarity"), gen_dir)
    return zoo_dir, gen_dir


def test_training_targets_are_leave_one_out_residuals(trained):
    zoo_dir, _ = trained
    plain = input_pipeline.load(zoo_dir, _config(zoo_dir, "mean"), list(TASKS[:3]))
    sim = input_pipeline.load(zoo_dir, _config(zoo_dir, "similarity"), list(TASKS[:3]))
    assert plain.bank is None and sim.bank.tasks == list(TASKS[:3])
    np.testing.assert_array_equal(plain.train_task, sim.train_task)
    dirs = np.stack([centering.direction(c[:256]) for c in plain.conds])
    means = np.stack([plain.train_tokens[plain.train_task == t].mean(0) for t in range(3)])
    for row in (0, len(plain.train_tokens) - 1):
        t = plain.train_task[row]
        w = centering.weights(dirs[t], dirs, 0.1, exclude=t)
        np.testing.assert_allclose(sim.train_tokens[row], plain.train_tokens[row] - np.tensordot(w, means, 1),
                                   atol=1e-5)
    t = sim.val_task[0]
    w = centering.weights(dirs[t], dirs, 0.1, exclude=t)
    np.testing.assert_allclose(sim.val_tokens[0], plain.val_tokens[0] - np.tensordot(w, means, 1), atol=1e-5)


def test_zero_decoder_generates_the_similarity_weighted_merge(trained, tmp_path):
    """With the decoder's output zeroed, the adapter is sum_j w_j * mean LoRA of task j, w from the prompts."""
    import jax

    zoo_dir, gen_dir = trained
    gen = generator.Generator.load(gen_dir)
    assert gen.bank is not None and gen.meta["center"]["tasks"] == list(TASKS[:3])
    gen.params = jax.tree.map(np.zeros_like, gen.params)
    prompts = list(zoo.prompts(zoo_dir, "obqa"))
    adapter = gen.generate(prompts, seed=1)

    cfg = _config(zoo_dir, "similarity")
    d = centering.direction(conditions.encode_prompts(prompts, cfg))
    train_dirs = np.stack([centering.direction(conditions.task_conditions(zoo_dir, t, cfg)[0][:256])
                           for t in TASKS[:3]])
    w = centering.weights(d, train_dirs, 0.1)
    k_val = int(cfg.val_checkpoints_per_task)
    want = {}
    for j, t in enumerate(TASKS[:3]):
        ckpts = zoo.checkpoints(zoo_dir, t)[:-k_val] if k_val else zoo.checkpoints(zoo_dir, t)
        mean = {k: np.mean([zoo.load_state_dict(c)[k] for c in ckpts], axis=0) for k in gen.layout.keys}
        for k, v in mean.items():
            want[k] = want.get(k, 0) + w[j] * v
    for k in gen.layout.keys:
        np.testing.assert_allclose(adapter.state_dict[k], want[k], rtol=1e-4, atol=1e-5)
    # A trained decoder moves off that merge (it learned a residual).
    trained_gen = generator.Generator.load(gen_dir)
    trained_adapter = trained_gen.generate(prompts, seed=1)
    assert any(not np.allclose(trained_adapter.state_dict[k], want[k], atol=1e-6) for k in gen.layout.keys)
    # center_only: the trained generator's starting point, exactly the zeroed decoder's adapter.
    start = trained_gen.generate_many([prompts], seed=1, center_only=True)[0]
    for k in gen.layout.keys:
        np.testing.assert_array_equal(start.state_dict[k], adapter.state_dict[k])
    trained_gen.bank = None  # a mean-centered generator has no center to start from
    with pytest.raises(generator.GenerateError, match="center_only needs a similarity-centered generator"):
        trained_gen.generate_many([prompts], center_only=True)


def test_tampered_or_missing_bank_is_refused(trained, tmp_path):
    _, gen_dir = trained
    copy = tmp_path / "g"
    shutil.copytree(gen_dir, copy, ignore=shutil.ignore_patterns(".lock*", "*.lock"))
    bank = copy / centering.BANK_FILE
    data = bytearray(bank.read_bytes())
    data[len(data) // 2] ^= 1
    bank.write_bytes(bytes(data))
    with pytest.raises(errors.IntegrityError, match="sha256"):
        generator.Generator.load(copy)
    bank.unlink()
    with pytest.raises(errors.IntegrityError, match="missing"):
        generator.Generator.load(copy)


def test_center_joins_the_recipe_without_breaking_old_runs(trained):
    """A run saved before config.center existed resumes under the default ('mean') and only under it."""
    zoo_dir, gen_dir = trained
    cfg = _config(zoo_dir, "mean")
    cfg.center = tiny.get_config().center  # the default: mode 'mean'
    fp = {"train_tasks": list(TASKS[:3])}
    meta = {"recipe": {k: v for k, v in trainer._recipe(cfg).items() if k != "center"}, "data": fp}
    assert trainer._resume_diff(meta, cfg, fp) == []
    assert trainer._resume_diff(meta, _config(zoo_dir, "similarity"), fp) == ["config.center"]
    assert trainer._resume_diff(meta, _config(zoo_dir, "mean"), fp) == ["config.center"]  # other temperature
    # A similarity run saved before center.directions existed resumes under 'encoder' (what it used) only.
    sim = _config(zoo_dir, "similarity")
    old = {"recipe": trainer._recipe(sim) | {"center": {k: v for k, v in sim.center.to_dict().items()
                                                         if k != "directions"}}, "data": fp}
    assert trainer._resume_diff(old, sim, fp) == []
    sim.center.directions = "sentence"
    assert trainer._resume_diff(old, sim, fp) == ["config.center"]


def test_bad_center_settings_are_refused_before_training(trained, tmp_path):
    zoo_dir, _ = trained
    for key, value, msg in (("mode", "nearest", "center.mode"), ("temperature", 0.0, "center.temperature"),
                              ("directions", "tokens", "center.directions")):
        cfg = _config(zoo_dir, "similarity")
        cfg.center[key] = value
        with pytest.raises(trainer.ConfigError, match=msg):
            trainer.train_and_evaluate(cfg, tmp_path / key)
    cfg = _config(zoo_dir, "similarity")
    cfg.tasks, cfg.holdout = ("arc_e", "obqa"), ("obqa",)
    with pytest.raises(trainer.ConfigError, match="at least 2 training tasks"):
        trainer.train_and_evaluate(cfg, tmp_path / "one")
    assert not (tmp_path / "one" / centering.BANK_FILE).exists()


def test_sentence_directions_center_on_the_similarity_merges_weights(trained, tmp_path):
    """center.directions='sentence': the bank's directions and the target's are MiniLM embeddings of the
    whole prompts, so the center weighs the training tasks exactly as the similarity-weighted merge does."""
    from dnd_jax import baselines

    zoo_dir, _ = trained
    cfg = _config(zoo_dir, "similarity")
    cfg.center.directions = "sentence"
    gen_dir = tmp_path / "sentence"
    trainer.train_and_evaluate(cfg, gen_dir)
    gen = generator.Generator.load(gen_dir)
    assert gen.meta["center"]["directions"] == "sentence"
    prompts = list(zoo.prompts(zoo_dir, "obqa"))
    start = gen.generate_many([prompts], seed=1, center_only=True)[0]
    w, _ = baselines.similarity_weights(prompts, {t: zoo.prompts(zoo_dir, t) for t in TASKS[:3]},
                                        baselines.minilm_embedder(), 0.1)
    data = input_pipeline.load(zoo_dir, _config(zoo_dir, "mean"), list(TASKS[:3]))
    means = np.stack([data.train_tokens[data.train_task == t].mean(0) for t in range(3)])
    want = gen.normalizer.denormalize(np.tensordot([w[t] for t in TASKS[:3]], means, 1).astype(np.float32))
    from dnd_jax.weights import layout as layout_lib

    want = layout_lib.detokenize(gen.layout, np.asarray(want, np.float32) * gen.layout.mask())
    for k in gen.layout.keys:
        np.testing.assert_allclose(start.state_dict[k], want[k], rtol=1e-4, atol=1e-6)
    # The encoder-direction generator (the fixture) weighs them differently on the same prompts.
    enc = generator.Generator.load(trained[1]).generate_many([prompts], seed=1, center_only=True)[0]
    assert any(not np.allclose(enc.state_dict[k], start.state_dict[k], atol=1e-6) for k in gen.layout.keys)
    # Its training targets are the residuals from those leave-one-out centers (the pool's own cosines).
    sim = input_pipeline.load(zoo_dir, cfg, list(TASKS[:3]))
    dirs = baselines.mean_directions(baselines.minilm_embedder(), [zoo.prompts(zoo_dir, t) for t in TASKS[:3]])
    np.testing.assert_allclose(sim.bank.dirs, dirs, atol=1e-6)
    row = 0
    t = data.train_task[row]
    lw = centering.weights(dirs[t], dirs, 0.1, exclude=t)
    np.testing.assert_allclose(sim.train_tokens[row], data.train_tokens[row] - np.tensordot(lw, means, 1), atol=1e-5)
