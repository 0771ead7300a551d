"""bench/compare_results.py: the regeneration check passes when only DnD moved and fails when a baseline did."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results(merged: float, dnd: float, tag: str = "merged-8f03f69ffbb81cc6", targets=("arc_c",)) -> dict:
    cell = lambda acc: {"acc": acc, "n": 200}  # noqa: E731
    return {"targets": {t: {"systems": {"merged": {"cloze": cell(merged)}, "dnd": {"cloze": cell(dnd)},
                                        "lora:arc_e": {"cloze": cell(0.3)}},
                            "system_info": {"merged": {"adapter": f"w/eval_cache/adapters/{tag}"}}} for t in targets}}


def _run(tmp_path, old: dict, new: dict, *flags: str) -> subprocess.CompletedProcess:
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    return subprocess.run([sys.executable, str(ROOT / "bench" / "compare_results.py"), "--old", str(tmp_path / "old.json"),
                           "--new", str(tmp_path / "new.json"), "--out", str(tmp_path / "r.md"), *flags],
                          capture_output=True, text=True)


def test_only_dnd_moved_passes_and_a_moved_baseline_fails(tmp_path):
    ok = _run(tmp_path, _results(0.30, 0.30), _results(0.30, 0.315))
    assert ok.returncode == 0 and "| arc_c | dnd | cloze | 30.0 | 31.5 | +1.5 | generated |" in ok.stdout
    assert "Every baseline scores exactly as before" in (tmp_path / "r.md").read_text()
    bad = _run(tmp_path, _results(0.30, 0.30), _results(0.31, 0.30))
    assert bad.returncode == 1 and "baseline arc_c/merged/cloze moved 30.0 -> 31.0" in bad.stdout
    missing = _run(tmp_path, _results(0.30, 0.30), {"targets": {}})
    assert missing.returncode == 1 and "target arc_c missing" in missing.stdout


def test_merged_content_tags_say_whether_the_zoo_is_bit_identical(tmp_path):
    same = _run(tmp_path, _results(0.30, 0.30), _results(0.30, 0.31))
    assert "content tags equal on 1 of 1 targets (the zoo's final LoRAs are bit-identical)" in same.stdout
    other = _run(tmp_path, _results(0.30, 0.30), _results(0.30, 0.31, tag="merged-0000"))
    assert other.returncode == 0 and "equal on 0 of 1 targets: arc_c merged-8f03f69ffbb81cc6 -> merged-0000" in other.stdout


def test_partial_run_lists_pending_targets_and_still_checks_the_rest(tmp_path):
    old = _results(0.30, 0.30, targets=("arc_c", "obqa"))
    ok = _run(tmp_path, old, _results(0.30, 0.32), "--partial")
    assert ok.returncode == 0 and "Not regenerated yet (run in progress): obqa." in ok.stdout
    assert "exactly as before (on the targets regenerated so far)" in ok.stdout and "--partial" in ok.stdout
    assert _run(tmp_path, old, _results(0.30, 0.32)).returncode == 1  # without --partial: obqa is missing
    assert _run(tmp_path, old, _results(0.29, 0.32), "--partial").returncode == 1  # a moved baseline still fails
