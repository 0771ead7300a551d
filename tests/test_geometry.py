"""Weight-update geometry: Gram matrices from rank-r factors equal dense dW inner products."""
import numpy as np
import pytest

from dnd_jax import baselines, report, testing, weight_space, zoo
from dnd_jax.weights import lora


def _random_factors(rng, ranks_scalings, shapes):
    out = []
    for r, s in ranks_scalings:
        out.append({m: (rng.normal(size=(r, i)).astype(np.float32), s * rng.normal(size=(o, r)).astype(np.float32))
                    for m, (o, i) in shapes.items()})
    return out


def test_update_gram_matches_dense_products():
    rng = np.random.default_rng(0)
    shapes = {"q": (6, 5), "down": (4, 7)}
    adapters = _random_factors(rng, [(2, 1.0), (4, 0.5), (3, 2.0)], shapes)
    gram = lora.update_gram(adapters)
    dense = [np.concatenate([(b @ a).ravel() for _, (a, b) in sorted(ad.items())]) for ad in adapters]
    want = np.array([[x @ y for y in dense] for x in dense])
    np.testing.assert_allclose(gram, want, rtol=1e-5)


def test_update_gram_rejects_other_modules():
    rng = np.random.default_rng(0)
    a, b = _random_factors(rng, [(2, 1.0)], {"q": (3, 3)}), _random_factors(rng, [(2, 1.0)], {"k": (3, 3)})
    with pytest.raises(ValueError, match="other modules"):
        lora.update_gram(a + b)


def test_lora_factors_scales_b_and_names_a_missing_pair():
    sd = {"m.lora_A.weight": np.ones((2, 3)), "m.lora_B.weight": np.ones((4, 2))}
    a, b = lora.lora_factors(sd, 2.0)["m"]
    assert a.shape == (2, 3) and np.all(b == 2.0)
    with pytest.raises(ValueError, match="m.lora_B.weight"):
        lora.lora_factors({"m.lora_A.weight": np.ones((2, 3))}, 1.0)


def test_span_fraction_in_and_out_of_span():
    x = np.eye(4)  # four orthonormal "adapters"
    space = weight_space.Space(x @ x.T)
    e = [space.point(i) for i in range(4)]
    assert space.span_fraction(e[0] + 2 * e[1], [e[0], e[1]]) == pytest.approx(1.0)
    assert space.span_fraction(e[2], [e[0], e[1]]) == pytest.approx(0.0, abs=1e-12)
    assert space.span_fraction(e[0] + e[2], [e[0], e[1], e[0] + e[1]]) == pytest.approx(0.5)  # redundant basis
    np.testing.assert_allclose(space.projection(e[0] + 2 * e[1] + e[2], [e[0], e[1]]), [1.0, 2.0], atol=1e-12)


def test_analyse_synthetic_zoo(tmp_path):
    tasks = ("arc_e", "piqa", "boolq", "obqa")
    w = testing.make_synthetic_zoo(tmp_path / "w", tasks=tasks, num_ckpts=4, noise=0.01)
    replica = testing.make_synthetic_zoo(tmp_path / "replica", tasks=tasks, num_ckpts=4, noise=0.01)  # same seed
    train = ["arc_e", "piqa", "boolq"]
    merged = baselines.merge_adapters([zoo.final_checkpoint(w, t) for t in train], tmp_path / "merged")
    generated = {"own": {"obqa": zoo.final_checkpoint(w, "obqa")}, "merged": {"obqa": merged},
                 "again": {"obqa": zoo.final_checkpoint(w, "obqa")}}
    combos = {"self": {"obqa": {"obqa": 1.0}}, "pair": {"obqa": {"arc_e": 0.7, "piqa": 0.3}}}
    res = weight_space.analyse(w, {"obqa": train}, generated, checkpoints_per_task=4, replicas={"same": replica},
                               reference="own", combinations=combos)
    row = res["targets"]["obqa"]
    assert row["training_tasks"] == train
    assert 0.0 <= row["span_fraction"] <= 1.0
    assert row["generated"]["own"]["cos_to_offset"] > 0.99 and row["generated"]["own"]["rel_err"] < 0.05
    # The merged adapter is the training mean up to checkpoint noise: (almost) no step, rel_err ~ 1.
    assert row["generated"]["merged"]["move_from_train_mean_rel"] < 0.1
    assert row["generated"]["merged"]["rel_err"] == pytest.approx(1.0, abs=0.1)
    # An identical replica zoo reproduces the offset exactly.
    assert row["generated"]["replica:same"]["cos_to_offset"] == pytest.approx(1.0, abs=1e-6)
    assert row["generated"]["replica:same"]["rel_err"] == pytest.approx(0.0, abs=1e-6)
    # Against the reference ("own"): the same adapter again is identical; the merged one barely stepped.
    assert row["generated"]["again"]["cos_to_reference_step"] == pytest.approx(1.0, abs=1e-9)
    assert row["generated"]["again"]["diff_from_reference_rel"] == pytest.approx(0.0, abs=1e-6)
    assert row["generated"]["merged"]["diff_from_reference_rel"] == pytest.approx(1.0, abs=0.1)
    assert "cos_to_reference_step" not in row["generated"]["own"]
    # Weighted combinations of task points: the target's own mean is its offset exactly; a mix of
    # training tasks steps inside their span.
    assert row["generated"]["self"]["cos_to_offset"] == pytest.approx(1.0, abs=1e-9)
    assert row["generated"]["self"]["rel_err"] == pytest.approx(0.0, abs=1e-9)
    assert row["generated"]["pair"]["step_span_fraction"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="outside the analysis"):
        weight_space.analyse(w, {"obqa": train}, {}, checkpoints_per_task=1,
                             combinations={"x": {"obqa": {"hellaswag": 1.0}}})
    # span_weights: the affine combination of the training updates closest to the target's; its error is
    # exactly the unreachable share, and no other affine weighting gets closer.
    sw = row["span_weights"]
    assert list(sw) == train and sum(sw.values()) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    others = {f"r{i}": {"obqa": dict(zip(train, [sw[t] + d for t, d in zip(train, v - v.mean(), strict=True)],
                                         strict=True))} for i, v in enumerate(rng.normal(0, 0.3, (5, 3)))}
    again = weight_space.analyse(w, {"obqa": train}, {}, checkpoints_per_task=4,
                                 combinations={"span": {"obqa": sw}} | others)["targets"]["obqa"]["generated"]
    assert again["span"]["rel_err"] == pytest.approx(1.0 - row["span_fraction"], abs=1e-9)
    assert all(again[f"r{i}"]["rel_err"] > again["span"]["rel_err"] for i in range(5))
    curve = row["span_curve"]
    assert [c["k"] for c in curve] == [1, 2, 3]
    assert all(0 <= c["min"] <= c["mean"] <= c["max"] <= 1 + 1e-9 for c in curve)
    assert curve[-1]["mean"] == pytest.approx(row["span_fraction"])
    assert np.allclose(np.diag(res["offset_cosine"]), 1.0)

    report.write_geometry(res, tmp_path / "out")
    for f in ("geometry.json", "geometry.md", "geometry.png"):
        assert (tmp_path / "out" / f).is_file()
    md = (tmp_path / "out" / "geometry.md").read_text()
    assert "| obqa |" in md and "| obqa | again | +1.000 | 0.000 |" in md
    assert res["reference"] == "own" and "reference adapter r (label `own`)" in md


def test_cli_malformed_replica_names_the_flag(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "dnd_jax.geometry", "--config", "configs/tiny.py",
                           "--workdir", str(tmp_path), "--replica", "no-equals-sign"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--replica expects label=folder, got 'no-equals-sign'" in proc.stderr


def test_no_targets_is_a_user_error_not_an_empty_gram(tmp_path):
    from dnd_jax.errors import InputError

    with pytest.raises(InputError, match="no held-out targets"):
        weight_space.analyse(tmp_path, {}, {})
