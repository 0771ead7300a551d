"""The function-space loss (dnd_jax/function_loss.py): exact against torch + peft, sharded, resumable, refused early."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import tiny
from dnd_jax import function_loss, jax_lm, lora_train, sharding, testing, trainer, zoo
from dnd_jax import tasks as tasks_lib
from dnd_jax.errors import InputError
from dnd_jax.weights import layout as layout_lib
from dnd_jax.weights import normalization

TASKS = ("arc_e", "piqa", "boolq")
BASE_SHARDED = ((r"base_lm/layers/(gate|up)_proj", "shard_dim(axis='model', dim=1)|fsdp(axis='data')"),
                (r"base_lm/layers/down_proj", "shard_dim(axis='model', dim=2)|fsdp(axis='data')"),
                (r"base_lm/.*", "fsdp(axis='data')"),
                (r".*/kernel", "shard_dim(axis='model', dim=-1)"), (r".*", "replicate"))
pytestmark = pytest.mark.usefixtures("compile_cache")


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory, tiny_base) -> Path:
    return testing.make_synthetic_zoo(tmp_path_factory.mktemp("flzoo"), tasks=TASKS, base_model=tiny_base.to_dict())


def _config(zoo_dir: Path, tiny_base, **overrides):
    c = tiny.get_config()
    c.base_model = dict(kind="hf_dir", path=tiny_base.path, name=tiny_base.name)
    c.zoo_workdir = str(zoo_dir)
    c.holdout = ("boolq",)
    c.total_steps, c.ckpt_steps, c.eval_steps, c.log_steps = 6, 3, 6, 1
    c.function_loss.weight = 0.5
    c.function_loss.pool = 8
    c.function_loss.max_len = 48
    for k, v in overrides.items():
        c[k] = v
    return c


def test_detokenize_jax_equals_detokenize(zoo_dir):
    sd = zoo.load_state_dict(zoo.checkpoints(zoo_dir, "arc_e")[0])
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, (4, 16))
    tokens, _ = layout_lib.tokenize_batch(layout, [sd, sd])
    want = layout_lib.detokenize(layout, tokens)
    got = jax.jit(lambda t: layout_lib.detokenize_jax(layout, t))(tokens)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k])
        np.testing.assert_array_equal(want[k][0], sd[k])


def test_lora_from_tokens_takes_every_factor_or_refuses():
    """peft's saved and in-memory (adapter-named) keys give the same pairs; a tensor that is not a LoRA
    factor, or a factor without its pair, is refused instead of silently left out of the loss."""
    rng = np.random.default_rng(0)
    m = "base_model.model.model.layers.0.self_attn.q_proj"
    sd = {f"{m}.lora_A.weight": rng.normal(size=(4, 8)), f"{m}.lora_B.weight": rng.normal(size=(8, 4))}
    named = {k.replace(".weight", ".default.weight"): v for k, v in sd.items()}
    for d in (sd, named):
        lay = layout_lib.build_layout({k: v.shape for k, v in d.items()}, (4, 4))
        tokens = jnp.asarray(layout_lib.tokenize(lay, d)[0])[None]
        (mod, (a, b)), = function_loss.lora_from_tokens(lay, tokens).items()
        assert mod == "model.layers.0.self_attn.q_proj"
        np.testing.assert_allclose(np.asarray(a)[0], sd[f"{m}.lora_A.weight"], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(b)[0], sd[f"{m}.lora_B.weight"], rtol=1e-6)
    for bad, match in (({**sd, "model.norm.weight": rng.normal(size=(8,))}, "is not a LoRA A/B factor"),
                       ({f"{m}.lora_A.weight": sd[f"{m}.lora_A.weight"]}, "has lora_A of .* but not its other")):
        lay = layout_lib.build_layout({k: v.shape for k, v in bad.items()}, (4, 4))
        with pytest.raises(InputError, match=match):
            function_loss.lora_from_tokens(lay, jnp.zeros((1, *lay.grid_shape)))


def test_loss_is_the_torch_answer_loss_of_that_adapter(zoo_dir, tiny_base):
    """denormalize(pred) -> layout -> LoRA -> base LM equals peft loading the same adapter (tolerance 1e-5)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = zoo.checkpoints(zoo_dir, "piqa")[1]
    sd = zoo.load_state_dict(ckpt)
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, (4, 16))
    tokens, mask = layout_lib.tokenize_batch(layout, [sd])
    norm = normalization.Normalizer.fit(np.concatenate([tokens, 0.5 * tokens]), mask, "per_element")
    pred = norm.normalize(tokens)
    tok = AutoTokenizer.from_pretrained(tiny_base.path)
    exs = tasks_lib.load_examples("piqa", "train", limit=3)
    enc = lora_train.encode_pairs(tok, [tasks_lib.training_pair(e, "cloze", tok) for e in exs], 48)
    batch = lora_train.collate(enc, tok.pad_token_id)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base.path, torch_dtype=torch.float32),
                                      str(ckpt)).eval()
    with torch.no_grad():
        want = float(lora_train.answer_loss(model, batch))
    cfg, params = jax_lm.load(tiny_base.path)
    max_answer = max(min(n, len(seq) - 1) for seq, n in enc)
    loss = function_loss.make_loss(cfg, layout, norm, scaling=2.0, max_answer=max_answer)  # alpha 8 / r 4
    ids = jnp.asarray(batch.input_ids.numpy())[None]
    lengths = jnp.asarray(batch.attention_mask.numpy().sum(1))[None]
    ans = jnp.asarray([min(n, len(seq) - 1) for seq, n in enc])[None]  # as load_examples: the scored tokens
    assert int(ans.max()) == 47  # a PIQA solution fills the 48-token window: its first token is not scored
    with jax.default_matmul_precision("highest"):
        got = float(jax.jit(loss)(jnp.asarray(pred), params, 0.0, ids, lengths, ans))
    assert got == pytest.approx(want, rel=1e-5)
    # A shorter max_answer scores each answer's last tokens only: a different number.
    short = function_loss.make_loss(cfg, layout, norm, 2.0, max_answer=1)
    assert float(short(jnp.asarray(pred), params, 0.0, ids, lengths, jnp.minimum(ans, 1))) != pytest.approx(want)


def test_examples_and_draws(zoo_dir, tiny_base):
    from transformers import AutoTokenizer

    c = _config(zoo_dir, tiny_base)
    ex = function_loss.load_examples(c, ["arc_e", "piqa"], AutoTokenizer.from_pretrained(tiny_base.path))
    assert ex.ids.shape == (2, 8, 48) and list(ex.count) == [8, 8]
    assert (ex.answer_len >= 1).all() and (ex.answer_len <= ex.max_answer).all()
    assert (ex.lengths <= 48).all() and (ex.answer_len < ex.lengths).all()
    a = ex.sample(np.array([0, 1, 1]), step=5, seed=0, n=2)
    b = ex.sample(np.array([0, 1, 1]), step=5, seed=0, n=2)
    d = ex.sample(np.array([0, 1, 1]), step=6, seed=0, n=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, d, strict=True))
    assert a[0].shape == (3, 2, 48)
    # rows draw from their own task's examples
    for row, t in enumerate([0, 1, 1]):
        for j in range(2):
            assert any(np.array_equal(a[0][row, j], ex.ids[t, i]) for i in range(8))


def test_training_logs_both_terms_sharded_equals_unsharded_and_resumes_exactly(zoo_dir, tiny_base, tmp_path):
    one = jax.devices()[:1]
    c1 = _config(zoo_dir, tiny_base, mesh=(("data", -1), ("model", 1)))
    full = trainer.train_and_evaluate(c1, tmp_path / "one", devices=one)
    rows = full["history"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert r["fl_nll"] > 0 and r["loss"] == pytest.approx(r["mse"] + 0.5 * r["fl_nll"], rel=1e-5)
    # On 4x2 devices, with the base LM split too (config.sharding's rules over base_lm/... paths): FSDP over
    # 'data' for every weight, and the MLP's hidden dimension over 'model' as well.
    c8 = _config(zoo_dir, tiny_base, mesh=(("data", 4), ("model", 2)), min_shard_size=256,
                 sharding=BASE_SHARDED)
    placed = trainer.place_state(c8, sharding.make_mesh(c8.mesh), {function_loss.BASE_PREFIX: jax_lm.abstract_params(
        jax_lm.read_config(tiny_base.path))})
    specs = sharding.describe(placed.shardings)
    assert specs["base_lm/embed"] == "P(None, 'data')" and not placed.unsplit  # 259 x 32: 32 divides
    assert specs["base_lm/layers/up_proj"] == "P(None, 'model', 'data')"
    assert specs["base_lm/layers/down_proj"] == "P(None, 'data', 'model')"
    assert placed.bytes_per_device() < placed.total_bytes() / 3
    sharded = trainer.train_and_evaluate(c8, tmp_path / "eight")
    for a, b in zip(sharded["history"], rows, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["fl_nll"] == pytest.approx(b["fl_nll"], rel=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 sharded["params"], full["params"])

    # Stopped after step 4 (checkpoint at 3) and resumed: the same examples are drawn, the same weights result.
    trainer.train_and_evaluate(c1, tmp_path / "killed", devices=one, max_steps=4)
    resumed = trainer.train_and_evaluate(c1, tmp_path / "killed", devices=one)
    assert [{k: v for k, v in r.items() if k != "step_time"} for r in resumed["history"]] == \
        [{k: v for k, v in r.items() if k != "step_time"} for r in rows]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 resumed["params"], full["params"])
    # A run saved before function_loss joined the recipe is the weight-0 run: it resumes under weight 0 only.
    assert trainer.with_added_keys({})["function_loss"] == function_loss.DEFAULTS


def test_bfloat16_base_lm_trains_like_float32(zoo_dir, tiny_base, tmp_path):
    """function_loss.dtype='bfloat16': the same run, its NLL within bfloat16's error of float32's."""
    one = jax.devices()[:1]
    mesh = (("data", -1), ("model", 1))
    f32 = trainer.train_and_evaluate(_config(zoo_dir, tiny_base, mesh=mesh, total_steps=3), tmp_path / "f32",
                                     devices=one)["history"]
    c = _config(zoo_dir, tiny_base, mesh=mesh, total_steps=3)
    c.function_loss.dtype = "bfloat16"
    bf16 = trainer.train_and_evaluate(c, tmp_path / "bf16", devices=one)["history"]
    for a, b in zip(bf16, f32, strict=True):
        assert a["fl_nll"] == pytest.approx(b["fl_nll"], rel=1e-2) and a["fl_nll"] != b["fl_nll"]
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-2)
    # A run saved as float32 does not resume as bfloat16: the dtype is part of the recipe.
    with pytest.raises(trainer.ResumeMismatchError, match="function_loss"):
        trainer.train_and_evaluate(c, tmp_path / "f32", devices=one)


def test_similarity_center_is_added_before_the_adapter_is_built(zoo_dir, tiny_base, tmp_path):
    c = _config(zoo_dir, tiny_base, mesh=(("data", -1), ("model", 1)), total_steps=2)
    c.center.mode = "similarity"
    c.center.temperature = 0.1
    rows = trainer.train_and_evaluate(c, tmp_path / "sim", devices=jax.devices()[:1])["history"]
    # Step 1 is evaluated before any update: with the center added, its NLL differs from the mean-centered
    # run's (the same init, data and examples; test above: 6.87...).
    mean = _config(zoo_dir, tiny_base, mesh=(("data", -1), ("model", 1)))
    first = trainer.train_and_evaluate(mean, tmp_path / "mean", devices=jax.devices()[:1], max_steps=1)["history"][0]
    assert rows[0]["mse"] != pytest.approx(first["mse"], rel=1e-6)  # targets are residuals from the centers
    assert rows[0]["fl_nll"] > 0 and rows[0]["fl_nll"] != pytest.approx(first["fl_nll"], rel=1e-6)


@pytest.mark.parametrize("overrides,match", [
    ({"weight": -1.0}, "function_loss.weight must be"),
    ({"examples": 0}, "function_loss.examples must be"),
    ({"max_answer": -2}, "function_loss.max_answer must be"),
    ({"dtype": "float16"}, "function_loss.dtype must be one of"),
])
def test_bad_settings_are_refused_before_any_work(zoo_dir, tiny_base, tmp_path, overrides, match):
    c = _config(zoo_dir, tiny_base)
    for k, v in overrides.items():
        c.function_loss[k] = v
    with pytest.raises(trainer.ConfigError, match=match):  # from plan.validate
        trainer.train_and_evaluate(c, tmp_path / "bad")
    assert not (tmp_path / "bad" / trainer.CKPT_DIR).exists()


def test_a_zoo_of_another_base_model_is_refused(tmp_path, tiny_base):
    other = testing.make_synthetic_zoo(tmp_path / "z", tasks=TASKS)  # claims the placeholder base model
    with pytest.raises(trainer.ConfigError, match="the zoo was trained on synthetic"):
        trainer.train_and_evaluate(_config(other, tiny_base), tmp_path / "gen", devices=jax.devices()[:1])
