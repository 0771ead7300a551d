"""bench/speedup.py: steps to reach DnD's accuracy, from end points and from a scored zoo curve."""
import json
from pathlib import Path

import pytest

from dnd_jax import testing, zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def speedup():
    return testing.load_bench("speedup")


def test_steps_to_reach(speedup):
    curve = [(0, 0.30), (10, 0.32), (11, 0.35), (12, 0.34), (20, 0.40)]
    assert speedup.steps_to_reach(curve, 0.29) == (0, 0)  # the base model already matches
    assert speedup.steps_to_reach(curve, 0.30) == (0, 0)
    assert speedup.steps_to_reach(curve, 0.31) == (0, 10)  # somewhere in (0, 10]: no checkpoint before 10
    assert speedup.steps_to_reach(curve, 0.35) == (10, 11)  # exactly step 11
    assert speedup.steps_to_reach(curve, 0.36) == (12, 20)
    assert speedup.steps_to_reach(curve, 0.41) == (20, None)  # not reached
    assert speedup.steps_to_reach(list(reversed(curve)), 0.35) == (10, 11)  # order does not matter
    d = speedup.describe(10, 11, step_s=2.0, gen_s=0.5)
    assert d["train_s_lo"] == d["train_s_hi"] == 22.0 and d["speedup_hi"] == 44.0
    assert speedup.describe(0, 0, 2.0, 0.5)["speedup_hi"] == 0.0
    assert speedup.describe(20, None, 2.0, 0.5)["speedup_lo"] == 80.0


def test_bounds_from_the_stored_results(speedup):
    results = json.loads((ROOT / "docs" / "results" / "results.json").read_text())
    out = speedup.bounds_from_results(results, "cloze", 100, None)
    assert out["boolq"]["steps_hi"] == 0  # DnD 43.0 < base 48.5
    assert out["piqa"]["steps_hi"] is None  # DnD 69.0 > oracle 68.0: not reached within the run
    assert (out["hellaswag"]["steps_lo_exclusive"], out["hellaswag"]["steps_hi"]) == (0, 100)  # 40.0 <= 40.5
    arc_c = out["arc_c"]
    assert (arc_c["steps_lo_exclusive"], arc_c["steps_hi"]) == (0, 100)
    assert arc_c["speedup_hi"] == pytest.approx(arc_c["full_run_speedup"])


def test_curve_on_a_tiny_zoo(speedup, tmp_path):
    """Score a synthetic zoo's checkpoints (tiny random Llama) and find the first reaching a target."""
    import ml_collections

    from configs import tiny

    config = tiny.get_config()
    testing.make_synthetic_zoo(tmp_path, tasks=("arc_e",), num_ckpts=3, num_prompts=8)
    curve, manifest = speedup.curve_from_zoo(config, str(tmp_path), "arc_e", "cloze", 8)
    steps = [s for s, _ in curve]
    assert steps == [0] + [int(zoo.checkpoint_meta(c)["step"]) for c in zoo.checkpoints(tmp_path, "arc_e")]
    assert all(0.0 <= a <= 1.0 for _, a in curve) and manifest["total_steps"] == 13
    target = max(a for _, a in curve)
    lo, hi = speedup.steps_to_reach(curve, target)
    first = min(s for s, a in curve if a >= target)
    assert hi == first
    assert isinstance(config, ml_collections.ConfigDict)
