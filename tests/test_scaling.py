"""The task-scaling curve: merge recipes fold exactly, similarity weights, and the verb end to end (tiny)."""
import json

import numpy as np
import pytest
import torch

from configs import tiny
from dnd_jax import baselines, evaluate, plan, scaling, scaling_curve, tasks, zoo
from dnd_jax.testing import make_synthetic_zoo


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_zoo(tmp_path_factory.mktemp("synth"), tasks=("arc_e", "piqa", "boolq"))


def _logits(ref, adapter):
    with evaluate.model_with_adapter(ref, adapter) as (model, tok):
        ids = torch.tensor([tok("The sky is blue and the grass is green.")["input_ids"]])
        with torch.no_grad():
            return model(input_ids=ids).logits.double().numpy()


def test_merge_recipe_folds_exactly_like_the_merged_adapter(synth, tiny_base, tmp_path):
    ckpts = [zoo.final_checkpoint(synth, t) for t in ("arc_e", "piqa", "boolq")]
    for weights in (None, [0.6, 0.3, 0.1]):
        spec = baselines.write_merge_spec(ckpts, tmp_path / f"spec{weights is None}", weights)
        exact = baselines.merge_adapters(ckpts, tmp_path / f"exact{weights is None}", weights)
        assert baselines.is_merge_spec(spec) and not baselines.is_merge_spec(exact)
        base, got, want = _logits(tiny_base, None), _logits(tiny_base, spec), _logits(tiny_base, exact)
        assert np.abs(got - base).max() > 1e-3  # the merge changes the model
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # W + sum_k w_k s_k B_k A_k, checked directly on one weight matrix
    spec = tmp_path / "specFalse"
    with evaluate.model_with_adapter(tiny_base, spec) as (model, _):
        folded = model.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()
    with evaluate.model_with_adapter(tiny_base, None) as (model, _):
        w0 = model.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    want = w0.copy()
    for wk, c in zip([0.6, 0.3, 0.1], ckpts, strict=True):
        sd, s = zoo.load_state_dict(c), baselines.lora_scaling(zoo.adapter_config(c))
        want += wk * s * sd[f"{key}.lora_B.weight"].astype(np.float64) @ sd[f"{key}.lora_A.weight"].astype(np.float64)
    np.testing.assert_allclose(folded, want, atol=1e-5)
    # same recipe elsewhere -> same evaluation-cache identity; other weights -> another
    assert evaluate.adapter_hash(spec) == baselines.merge_spec_hash(spec) != evaluate.adapter_hash(tmp_path / "specTrue")


def test_merge_recipe_refuses_bad_weights_and_changed_sources(synth, tiny_base, tmp_path):
    ckpts = [zoo.final_checkpoint(synth, t) for t in ("arc_e", "piqa")]
    for bad in ([0.5], [0.7, 0.7], [1.5, -0.5], [float("nan"), 1.0]):
        with pytest.raises(ValueError, match="merge weights"):
            baselines.write_merge_spec(ckpts, tmp_path / "bad", bad)
    # Signed (affine) weights only when asked for: folded exactly as W + sum_k w_k s_k B_k A_k, w_2 < 0.
    signed = baselines.write_merge_spec(ckpts, tmp_path / "signed", [1.5, -0.5], signed=True)
    with pytest.raises(ValueError, match="finite numbers summing to 1"):
        baselines.write_merge_spec(ckpts, tmp_path / "bad", [1.5, -0.4], signed=True)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    with evaluate.model_with_adapter(tiny_base, signed) as (model, _):
        folded = model.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()
    with evaluate.model_with_adapter(tiny_base, None) as (model, _):
        want = model.model.layers[0].self_attn.q_proj.weight.detach().double().numpy()
    for wk, c in zip([1.5, -0.5], ckpts, strict=True):
        sd, sc = zoo.load_state_dict(c), baselines.lora_scaling(zoo.adapter_config(c))
        want += wk * sc * sd[f"{key}.lora_B.weight"].astype(np.float64) @ sd[f"{key}.lora_A.weight"].astype(np.float64)
    np.testing.assert_allclose(folded, want, atol=1e-5)
    spec = baselines.write_merge_spec(ckpts, tmp_path / "spec")
    data = bytearray((ckpts[1] / zoo.ADAPTER_WEIGHTS).read_bytes())
    data[-8:] = b"\x00\x00\xc0\x7f\x00\x00\xc0\x7f"  # two NaNs at the end of the last tensor
    (ckpts[1] / zoo.ADAPTER_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="changed since"):
        with evaluate.model_with_adapter(tiny_base, spec):
            pass


def test_similarity_weights_interpolate_between_merged_and_nearest():
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "t": [0.9, 0.1]}

    def embed(texts):
        return np.array([vecs[t[0]] for t in texts], float)

    cands = {"a": ["a1", "a2"], "b": ["b1"]}
    w, sims = baselines.similarity_weights(["t1"], cands, embed, temperature=0.05)
    assert sims["a"] > sims["b"] and w["a"] > 0.99 and abs(sum(w.values()) - 1) < 1e-12
    w_hot, _ = baselines.similarity_weights(["t1"], cands, embed, temperature=1e6)
    assert abs(w_hot["a"] - 0.5) < 1e-6
    with pytest.raises(ValueError, match="temperature"):
        baselines.similarity_weights(["t1"], cands, embed, temperature=0)


def test_simmerge_baseline_is_a_weighted_recipe(synth):
    vecs = {"arc_e": [1.0, 0.0, 0.0], "boolq": [0.0, 1.0, 0.0], "target": [0.8, 0.2, 0.0]}

    def embed(texts):
        return np.array([vecs["target"] if t.startswith("T:") else vecs["arc_e"] if "science" in t else vecs["boolq"]
                         for t in texts], float)

    (sim,) = baselines.build_baselines(synth, "piqa", ["simmerge"], training_tasks=["arc_e", "boolq"],
                                       target_prompts=["T: a question"], embed=embed)
    spec = json.loads((baselines.Path(sim.adapter) / baselines.MERGE_SPEC).read_text())
    w = {s["path"].split("/")[-2]: s["weight"] for s in spec["sources"]}
    assert sim.name == "simmerge" and w["arc_e"] > 0.99 > w["boolq"] and abs(sum(w.values()) - 1) < 1e-9
    with pytest.raises(baselines.InputError, match="target_prompts"):
        baselines.build_baselines(synth, "piqa", ["simmerge"], training_tasks=["arc_e", "boolq"])


def test_stratified_bootstrap_and_training_sample():
    a = [[1, 1, 0, 1], [0, 1, 1, 1, 1, 0]]
    b = [[0, 1, 0, 1], [0, 0, 1, 1, 1, 0]]
    res = scaling.stratified_paired_bootstrap(list(zip(a, b, strict=True)), n_boot=500)
    assert res["diff"] == pytest.approx((0.25 + 1 / 6) / 2) and res["ci"][0] <= res["diff"] <= res["ci"][1]
    same = scaling.stratified_paired_bootstrap([(a[0], a[0])], n_boot=100)
    assert same["diff"] == 0 and same["ci"] == [0, 0]
    pool = [f"t{i}" for i in range(30)]
    s = scaling.training_sample(pool, 12)
    assert s == pool[:12] and scaling.training_sample(pool[:30], 12) == s  # one sample for every pool >= 12
    assert scaling.training_sample(pool[:5], 12) == pool[:5]


def _config():
    config = tiny.get_config()
    config.tasks = ("piqa", "arc_e", "boolq", "hellaswag", "obqa")
    config.experiment.holdouts = ("piqa",)
    config.experiment.cross_domain = ()
    config.experiment.pool_order = ("arc_e", "boolq", "hellaswag", "obqa")
    config.experiment.pool_sizes = (2, 4)
    config.total_steps = 10
    config.ckpt_steps = 10
    config.eval_steps = 10
    config.eval.limit = 6
    config.eval.bootstrap = 100
    config.scaling = dict(metrics=("cloze",), temperature=0.05, mean_sample=3, seed=0, geometry=True)
    return config


def test_scaling_curve_end_to_end_and_resume(tmp_path, monkeypatch, condition_spy):
    from dnd_jax import collect

    workdir, docs = tmp_path / "w", tmp_path / "docs"
    config = _config()
    collect.collect(config, workdir, only=["piqa", "arc_e", "boolq"])  # K=4's pool is not collected yet
    st = scaling.zoo_status(config, workdir)
    assert st["targets_collected"] == ["piqa"] and st["pool_collected_prefix"] == 2 and st["ready_pool_sizes"] == [2]
    assert st["lora_step_wall_s"]["min"] > 0 and "| arc_e |" in scaling.status_markdown(st)
    seen = condition_spy
    res = scaling.run(config, workdir, str(docs))
    assert list(res["pools"]) == [2] and "2 of 4" in res["skipped"][4]
    # The target's adapter (and the in-sample fit's) come from unscored prompts: none of the 6 scored questions.
    scored = {e.prompt for e in tasks.load_examples("piqa", "test", 6)}
    assert seen and not any(set(ps) & scored for ps in seen)
    assert any(set(ps) <= {e.prompt for e in tasks.load_examples("piqa", "test")[6:]} for ps in seen)
    row = res["pools"][2]["targets"]["piqa"]
    for name in ("dnd", "merged", "simmerge", "nearest", "train_mean", "span_oracle"):
        assert row["systems"][name]["cloze"]["n"] == 6
    assert row["nearest_task"] in ("arc_e", "boolq") and row["train_mean_sample"] == ["arc_e", "boolq"]
    merged = json.loads((workdir / "scaling/K002/adapters/merged" / baselines.MERGE_SPEC).read_text())
    assert [s["weight"] for s in merged["sources"]] == [0.5, 0.5]
    cmp = res["comparisons"][2]["cloze"]
    assert set(cmp["mean"]) == set(scaling.COMPARISONS) - {"simmerge_tuned"} and cmp["mean"]["merged"]["targets"] == 1
    # The span oracle: pool K's LoRAs with the geometry's affine weights, as a folded recipe, paired with merged.
    spec = json.loads((workdir / "scaling/K002/adapters/span_oracle_piqa" / baselines.MERGE_SPEC).read_text())
    span_w = res["pools"][2]["geometry"]["piqa"]["span_weights"]
    assert [s["weight"] for s in spec["sources"]] == [span_w[t] for t in ("arc_e", "boolq")]
    assert sum(span_w.values()) == pytest.approx(1.0) and row["span_oracle_weight_l1"] >= 1.0 - 1e-9
    assert cmp["ceiling"]["mean"]["diff"] == pytest.approx(
        np.mean(row["systems"]["span_oracle"]["cloze"]["correct"]) - np.mean(row["systems"]["merged"]["cloze"]["correct"]))
    geo = res["pools"][2]["geometry"]["piqa"]
    assert 0.0 <= geo["span_fraction"] <= 1.0 + 1e-9 and -1 <= geo["dnd_cos_to_offset"] <= 1
    fit = res["pools"][2]["fit"]  # in-sample: the generator's adapters for its own training tasks
    assert sorted(fit["tasks"]) == ["arc_e", "boolq"] and -1 <= fit["mean_cos_to_offset"] <= 1
    assert fit["mean_rel_err"] >= 0 and (workdir / "scaling/K002/fit/arc_e/adapter_model.safetensors").is_file()
    # Geometry and fit come from one pass over the checkpoints: the same figures as two separate analyses.
    from dnd_jax import weight_space

    pool = scaling.pools(config)[2]
    alone = weight_space.analyse(workdir, {t: pool for t in fit["tasks"]},
                                 {"dnd": {t: workdir / "scaling/K002/fit" / t for t in fit["tasks"]}},
                                 checkpoints_per_task=1, subsets_per_size=1)["targets"]
    for t, v in fit["tasks"].items():
        assert v["cos_to_offset"] == pytest.approx(alone[t]["generated"]["dnd"]["cos_to_offset"], abs=1e-9)
    alone = weight_space.analyse(workdir, {"piqa": pool}, {"dnd": {"piqa": scaling.dnd_dir(workdir, 2, "piqa")}},
                                 checkpoints_per_task=1, subsets_per_size=1)["targets"]["piqa"]
    assert geo["span_fraction"] == pytest.approx(alone["span_fraction"], abs=1e-9)
    assert geo["dnd_rel_err"] == pytest.approx(alone["generated"]["dnd"]["rel_err"], abs=1e-9)
    for f in ("results.json", "results.md", "curve.png"):
        assert (docs / f).is_file()
    assert list((workdir / "embedding_cache").glob("minilm-*/*.safetensors"))  # prompts encoded once, kept
    assert "correct" not in (docs / "results.json").read_text()
    assert "| piqa | 2 |" in (docs / "results.md").read_text() and "| span_oracle - merged |" in (
        docs / "results.md").read_text()
    assert f"| {fit['mean_cos_to_offset']:+.3f} | {fit['mean_rel_err']:.3f} |" in (docs / "results.md").read_text()
    assert -1 <= geo["simmerge_cos_to_offset"] <= 1 and geo["dnd_rel_err"] >= 0
    geos = res["pools"][2]["geometry"].values()
    step_cells = " | ".join(f"{np.mean([g[f'{s}_step_rel_norm'] for g in geos]):.3f}" for s in ("dnd", "simmerge"))
    assert "| DnD step length | simmerge step length |" in (docs / "results.md").read_text()
    assert f"| {step_cells} |" in (docs / "results.md").read_text()

    collect.collect(config, workdir, only=["hellaswag", "obqa"])
    again = scaling.run(config, workdir, str(docs))
    assert sorted(again["pools"]) == [2, 4] and not again["skipped"]
    # A generator trained earlier keeps its training time (the logged steps), not the resume's seconds.
    assert again["pools"][2]["train_wall_s"] == res["pools"][2]["train_wall_s"] > 0
    # simmerge_tuned from K = 3 on: the pool-tuned kernel of the target's cosines, as a folded recipe.
    k4 = again["pools"][4]
    assert "simmerge_tuned" not in again["pools"][2]["targets"]["piqa"]["systems"]
    assert k4["targets"]["piqa"]["systems"]["simmerge_tuned"]["cloze"]["n"] == 6
    kernel = k4["simmerge_tuned"]
    assert kernel["temperature"] in baselines.KERNEL_TEMPERATURES and kernel["mix"] in baselines.KERNEL_MIXES
    spec = json.loads((workdir / "scaling/K004/adapters/simmerge_tuned_piqa" / baselines.MERGE_SPEC).read_text())
    embed = baselines.minilm_embedder()
    dirs = baselines.mean_directions(embed, [zoo.prompts(workdir, t) for t in k4["pool"]])
    sims = baselines.mean_directions(embed, [plan.condition_prompts(config, "piqa")]) @ dirs.T
    np.testing.assert_allclose([s["weight"] for s in spec["sources"]],
                               baselines.kernel_weights(sims[0], kernel["temperature"], kernel["mix"]), atol=1e-9)
    assert "simmerge_tuned" in again["comparisons"][4]["cloze"]["mean"]
    assert "simmerge_tuned" not in again["comparisons"][2]["cloze"]["mean"]
    # K=2 was resumed from disk: the same generated adapter and the same (cached) numbers
    assert again["pools"][2]["targets"]["piqa"]["systems"]["dnd"]["cloze"]["correct"] == \
        row["systems"]["dnd"]["cloze"]["correct"]
    # A full rerun's interim reports keep the pools it has not reached yet (nothing vanishes mid-run).
    written = []
    real_write = scaling_curve.write
    monkeypatch.setattr(scaling_curve, "write", lambda res, *a, **k: (written.append(sorted(res["pools"])),
                                                                       real_write(res, *a, **k)))
    scaling.run(config, workdir, str(docs))
    monkeypatch.undo()
    assert written and all(keys == [2, 4] for keys in written)
    # --sizes reruns one pool and keeps the others (same protocol) in the report.
    only4 = scaling.run(config, workdir, str(docs), only_sizes=[4])
    assert sorted(only4["pools"]) == [2, 4] and sorted(only4["comparisons"]) == [2, 4]
    assert only4["pools"][2]["targets"]["piqa"]["systems"]["dnd"]["cloze"]["correct"] == \
        row["systems"]["dnd"]["cloze"]["correct"]
    assert "| piqa | 2 |" in (docs / "results.md").read_text() and "| piqa | 4 |" in (docs / "results.md").read_text()
    saved = (workdir / "scaling/results.json").read_text()
    stored = json.loads(saved)
    # A pool measured before a generator setting existed (here center.directions) was measured under its
    # default: it stays in the report.
    del stored["protocol"]["generator_settings"]["center"]["directions"]
    (workdir / "scaling/results.json").write_text(json.dumps(stored))
    assert sorted(scaling.run(config, workdir, only_sizes=[4])["pools"]) == [2, 4]
    stored["protocol"]["eval_limit"] = 99  # measured under another protocol: not carried into the report
    (workdir / "scaling/results.json").write_text(json.dumps(stored))
    assert sorted(scaling.run(config, workdir, only_sizes=[4])["pools"]) == [4]
    (workdir / "scaling/results.json").write_text(saved)
    with pytest.raises(scaling.InputError, match="not among"):
        scaling.run(config, workdir, only_sizes=[3])

    # A generator variant: its own generator and DnD adapters, paired against the default DnD.
    variant = _config()
    variant.lr = config.lr * 3
    res_v = scaling.run(variant, workdir, str(docs), only_sizes=[2], variant="lr3", default_config=config)
    assert (workdir / "scaling/K002/generator-lr3").is_dir()
    assert (scaling.dnd_dir(workdir, 2, "piqa", "lr3") / "adapter_model.safetensors").is_file()
    assert (workdir / "scaling/K002/fit/lr3_boolq/adapter_model.safetensors").is_file()
    assert res_v["protocol"]["variant_overrides"] == {"lr": [config.lr, variant.lr]}
    vrow = res_v["pools"][2]["targets"]["piqa"]["systems"]
    assert vrow["dnd_default"]["cloze"]["correct"] == row["systems"]["dnd"]["cloze"]["correct"]
    assert vrow["merged"]["cloze"]["correct"] == row["systems"]["merged"]["cloze"]["correct"]  # same baseline
    assert scaling.VARIANT_COMPARISON in res_v["comparisons"][2]["cloze"]["mean"]
    assert (docs / "variants/lr3/results.md").is_file() and (docs / "results.json").is_file()
    index = (docs / "variants.md").read_text()
    assert "| default | – | 2 |" in index and "| default | – | 4 |" in index and "| lr3 | `lr`=" in index
    assert (docs / "variants.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "variants.png" in index
    # The similarity-centered generator as a variant: its bank beside it, its in-sample fit flagged.
    simres = _config()
    simres.center.mode = "similarity"
    res_s = scaling.run(simres, workdir, str(docs), only_sizes=[2], variant="simres", default_config=config)
    assert (workdir / "scaling/K002/generator-simres/center_bank.safetensors").is_file()
    assert res_s["protocol"]["variant_overrides"] == {"center.mode": ["mean", "similarity"]}
    assert res_s["pools"][2]["fit"]["self_centered"] and not res["pools"][2]["fit"]["self_centered"]
    assert "similarity-centered generator" in (docs / "variants/simres/results.md").read_text()
    fixed = _config()
    fixed.eval.limit = 5
    with pytest.raises(scaling.InputError, match="generator only"):
        scaling.run(fixed, workdir, variant="x", default_config=config)
    with pytest.raises(scaling.InputError, match="--variant"):
        scaling.run(variant, workdir, variant="../up", default_config=config)


def test_cli_variant_refuses_data_overrides(tmp_path):
    """--variant compares the command line's config with the file's own: a changed eval is refused (exit 2)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dnd_jax.scaling", "--config", "configs/smollm2_many.py",
                           "--workdir", str(tmp_path), "--variant", "v", "--config.eval.limit=50"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "generator only" in proc.stderr and "['eval']" in proc.stderr


def test_memoized_embedder_encodes_each_text_once():
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts])

    memo = baselines.memoized(embed)
    a = memo(["x", "yy", "x"])
    b = memo(["yy", "zzz"])
    assert calls == [["x", "yy"], ["zzz"]]  # duplicates and known texts are never re-encoded
    np.testing.assert_array_equal(a, [[1, 1], [2, 1], [1, 1]])
    np.testing.assert_array_equal(b, embed(["yy", "zzz"]))
    cands = {"t1": ["x", "yy"], "t2": ["zzz"]}
    assert baselines.similarity_weights(["x"], cands, memo) == baselines.similarity_weights(["x"], cands, embed)


def test_embedding_cache_survives_the_process_bit_for_bit_and_ignores_bad_shards(tmp_path):
    rng = np.random.default_rng(0)
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return rng.normal(size=(len(texts), 3)) / 7.0  # values with every mantissa bit in use

    cache = tmp_path / "emb"
    first = baselines.memoized(embed, cache)
    a = first(["alpha", "beta"])
    b = first(["gamma"])
    assert len(list(cache.glob("*.safetensors"))) == 2 and not list(cache.glob(".*"))
    # A new process (a new memo on the same folder): nothing is encoded again, the vectors are identical.
    second = baselines.memoized(embed, cache)
    got = second(["gamma", "alpha", "beta"])
    assert len(calls) == 2
    np.testing.assert_array_equal(got, np.concatenate([b, a]))
    # A write killed before its rename leaves a temporary file, never read; a truncated or tampered
    # shard is ignored with a warning and its texts are encoded again.
    (cache / ".deadbeef.123.tmp").write_bytes(b"half a shard")
    shard_b = next(p for p in cache.glob("*.safetensors")
                   if baselines._read_embedding_shard(p)[0].shape[0] == 1)
    shard_b.write_bytes(shard_b.read_bytes()[:-5])
    with pytest.warns(UserWarning, match="ignoring embedding cache shard"):
        third = baselines.memoized(embed, cache)
    np.testing.assert_array_equal(third(["alpha", "beta"]), a)
    assert len(calls) == 2
    fresh = third(["gamma"])
    assert calls[-1] == ["gamma"] and not np.array_equal(fresh, b)  # re-encoded (this embedder is random)
    from safetensors.numpy import save_file

    bad = cache / "tampered.safetensors"
    save_file({"sha256": np.zeros((1, 32), np.uint8), "vectors": np.full((1, 3), np.nan)}, str(bad))
    with pytest.warns(UserWarning, match="not finite"):
        baselines.memoized(embed, cache)


def test_curve_settings_do_not_retrain_generators():
    """config.scaling (simmerge temperature, metrics, ...) changes evaluation only: a generator saved under
    other settings (even one saved when config.scaling was part of the recipe) resumes; a real change does not."""
    from dnd_jax import trainer

    config = _config()
    fp = {"train_tasks": ["piqa", "arc_e"]}
    saved = {"recipe": trainer._recipe(config) | {"scaling": {"temperature": 0.05}}, "data": fp}
    other = _config()
    other.scaling.temperature = 0.5
    assert "scaling" not in trainer._recipe(other)
    assert trainer._resume_diff(saved, other, fp) == []
    other.lr = config.lr * 2
    assert trainer._resume_diff(saved, other, fp) == ["config.lr"]


def test_tuned_kernel_is_chosen_without_the_targets_by_leave_one_out():
    rng = np.random.default_rng(0)
    centers, dirs = rng.normal(size=(2, 50)), np.eye(2)
    cluster = np.array([0, 0, 0, 1, 1, 1])
    updates = centers[cluster] + 0.1 * rng.normal(size=(6, 50))
    gram = updates @ updates.T
    # Prompts that tell the clusters apart: a sharp kernel rebuilds a left-out task from its own cluster.
    sims = dirs[cluster] @ dirs[cluster].T
    best = baselines.tune_kernel(gram, sims)
    assert best["mix"] == 1.0 and best["temperature"] <= 0.2 and best["loo_rel"] < 0.1
    assert best["loo_rel"] == min(g["loo_rel"] for g in best["grid"]) and len(best["grid"]) == 35
    # Uninformative prompts: every kernel is the uniform merge, exactly; ties go to the flattest kernel.
    flat = baselines.tune_kernel(gram, np.ones((6, 6)))
    assert flat["loo_rel"] == pytest.approx(1.0, abs=1e-12) and flat["temperature"] == max(baselines.KERNEL_TEMPERATURES)
    w = baselines.kernel_weights(np.array([0.9, 0.1, 0.5]), 0.1, 0.5)
    assert w.sum() == pytest.approx(1.0) and w.argmax() == 0 and w.min() >= 0.5 / 3
    with pytest.raises(ValueError, match="K >= 3"):
        baselines.tune_kernel(gram[:2, :2], sims[:2, :2])


def test_relative_distance_is_the_squared_distance_over_the_uniform_merges():
    rng = np.random.default_rng(1)
    updates = rng.normal(size=(5, 30))
    gram = updates @ updates.T
    pool, target = [0, 2, 3], 4
    w = np.array([[0.5, 0.2, 0.3], [1 / 3, 1 / 3, 1 / 3], [1.5, -0.5, 0.0]])
    got = baselines.relative_distance(gram, pool, target, w)
    uniform = np.sum((updates[pool].mean(0) - updates[target]) ** 2)
    want = [np.sum((wi @ updates[pool] - updates[target]) ** 2) / uniform for wi in w]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert got[1] == pytest.approx(1.0)


def test_comparison_cis_do_not_depend_on_the_targets_stored_order():
    """results.json sorts its keys: a pool read back from it must get the CIs a freshly measured one got."""
    rng = np.random.default_rng(1)

    def row(n):
        return {"systems": {name: {"cloze": {"correct": rng.integers(0, 2, n).astype(float).tolist()}}
                            for name in ("dnd", "merged")}}

    targets = {"piqa": row(30), "arc_e": row(50)}
    refs = {t: {"cloze": {}} for t in targets}
    fresh = scaling.compare({"pools": {6: {"targets": targets}}, "refs": refs})
    stored = scaling.compare({"pools": {6: {"targets": dict(sorted(targets.items()))}}, "refs": refs})
    assert list(fresh[6]["cloze"]["mean"]) == ["merged"] and fresh == stored
    # The report lists targets in the protocol's order for every K, however a pool's rows are stored.
    acc = {"acc": 0.5, "ci": [0.4, 0.6], "n": 30}
    pools = {k: {"targets": {t: {"systems": {"dnd": {"cloze": acc}}} for t in order}}
             for k, order in ((6, ["piqa", "arc_e"]), (12, ["arc_e", "piqa"]))}
    md = scaling.markdown({"protocol": {"targets": ["piqa", "arc_e"], "pool_sizes": [6, 12], "eval_limit": 30,
                                        "temperature": 0.05, "mean_sample": 6, "metrics": ["cloze"]},
                           "pools": pools, "refs": {t: {"cloze": {}} for t in ("piqa", "arc_e")}, "comparisons": {}})
    rows = [line.split(" | ")[0:2] for line in md.splitlines() if line.startswith(("| piqa", "| arc_e"))]
    assert rows == [["| piqa", "6"], ["| arc_e", "6"], ["| piqa", "12"], ["| arc_e", "12"]]


def test_train_seconds_sums_the_logged_step_times(tmp_path):
    from dnd_jax import trainer

    assert trainer.train_seconds(tmp_path) is None
    rows = [{"step": 1, "step_time": 9.0}, {"step": 10, "step_time": 1.0}, {"step": 20, "step_time": 0.5, "val_loss": 1.0}]
    (tmp_path / trainer.METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert trainer.train_seconds(tmp_path) == pytest.approx(9.0 + 9 * 1.0 + 10 * 0.5)


def test_a_memo_reads_what_another_process_encoded_since_it_started(tmp_path):
    """Two memos on one folder (two processes): the second, created before the first encoded anything, gets
    the first's vectors bit for bit instead of encoding the texts again (its own encoder would differ)."""
    rng = np.random.default_rng(1)
    calls = []

    def embed(texts):
        calls.append(list(texts))
        return rng.normal(size=(len(texts), 3)) / 7.0  # a different vector on every call

    cache = tmp_path / "emb"
    late = baselines.memoized(embed, cache)  # started first, with an empty folder
    early = baselines.memoized(embed, cache)
    a = early(["alpha", "beta"])
    got = late(["beta", "alpha", "gamma"])  # alpha and beta from early's shard; only gamma encoded here
    assert calls == [["alpha", "beta"], ["gamma"]]
    np.testing.assert_array_equal(got[:2], a[::-1])
    np.testing.assert_array_equal(early(["gamma"]), got[2:])  # and back: early reads late's shard
    assert len(calls) == 2


def test_failed_embedding_shard_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    def broken(arrays, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", broken)
    memo = baselines.memoized(lambda texts: np.ones((len(texts), 2)), tmp_path / "emb")
    with pytest.raises(OSError, match="disk full"):
        memo(["a"])
    assert list((tmp_path / "emb").iterdir()) == []


def test_variants_plot_draws_each_variants_mean_difference_and_ci(tmp_path, monkeypatch):
    """variants.png: per variant, DnD - merged (left) and DnD - simmerge (right) in points against K, CIs as
    asymmetric error bars, variants nudged apart along K; a comparison a run lacks is left out, not drawn as 0."""
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", lambda self, x, y, yerr=None, **kw: (
        drawn.append((kw["label"], list(x), list(y), [list(e) for e in yerr])), real(self, x, y, yerr=yerr, **kw))[1])
    c = lambda d, lo, hi: {"diff": d, "ci": [lo, hi]}  # noqa: E731
    series = {"fl1": [(152, c(0.016, 0.002, 0.030), c(-0.016, -0.034, 0.001)), (25, c(0.01, 0.0, 0.02), None)],
              "default": [(6, c(-0.008, -0.015, -0.002), c(0.009, -0.006, 0.023))]}
    scaling_curve.plot_variants(series, tmp_path / "v.png")
    assert (tmp_path / "v.png").is_file()
    merged = {name: (x, y, e) for name, x, y, e in drawn[:2]}
    assert merged["default"][0] == [6] and merged["default"][1] == pytest.approx([-0.8])
    assert merged["fl1"][0] == pytest.approx([25 * 1.04, 152 * 1.04]) and merged["fl1"][1] == pytest.approx([1.0, 1.6])
    assert merged["fl1"][2] == [pytest.approx([1.0, 1.4]), pytest.approx([1.0, 1.4])]
    simmerge = {name: (x, y) for name, x, y, _ in drawn[2:]}
    assert simmerge["fl1"][0] == pytest.approx([152 * 1.04]) and simmerge["fl1"][1] == pytest.approx([-1.6])
