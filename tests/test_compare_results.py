"""bench/compare_results.py: the regeneration check passes when only DnD moved and fails when a baseline did."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results(merged: float, dnd: float) -> dict:
    cell = lambda acc: {"acc": acc, "n": 200}  # noqa: E731
    return {"targets": {"arc_c": {"systems": {"merged": {"cloze": cell(merged)}, "dnd": {"cloze": cell(dnd)},
                                              "lora:arc_e": {"cloze": cell(0.3)}}}}}


def _run(tmp_path, old: dict, new: dict) -> subprocess.CompletedProcess:
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    return subprocess.run([sys.executable, str(ROOT / "bench" / "compare_results.py"), "--old", str(tmp_path / "old.json"),
                           "--new", str(tmp_path / "new.json"), "--out", str(tmp_path / "r.md")],
                          capture_output=True, text=True)


def test_only_dnd_moved_passes_and_a_moved_baseline_fails(tmp_path):
    ok = _run(tmp_path, _results(0.30, 0.30), _results(0.30, 0.315))
    assert ok.returncode == 0 and "| arc_c | dnd | cloze | 30.0 | 31.5 | +1.5 | generated |" in ok.stdout
    assert "Every baseline scores exactly as before" in (tmp_path / "r.md").read_text()
    bad = _run(tmp_path, _results(0.30, 0.30), _results(0.31, 0.30))
    assert bad.returncode == 1 and "baseline arc_c/merged/cloze moved 30.0 -> 31.0" in bad.stdout
    missing = _run(tmp_path, _results(0.30, 0.30), {"targets": {}})
    assert missing.returncode == 1 and "target arc_c missing" in missing.stdout
