"""README tables that restate a results file are exactly what that file says."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from dnd_jax import report

ROOT = Path(__file__).resolve().parents[1]


def _readme_table(header: str) -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end]) + "\n"


def _bench():
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "bench" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_table_is_docs_results():
    results = json.loads((ROOT / "docs" / "results" / "results.json").read_text())
    want = report.headline_markdown(results, _bench().COMMONSENSE)
    header = want.splitlines()[0]
    assert _readme_table(header) == want  # regenerate with: python bench/readme_table.py


def test_headline_columns_follow_the_systems_present():
    cell = {"acc": 0.5, "n": 2}
    results = {"targets": {"t": {"systems": {"base": {"cloze": cell}, "dnd": {"cloze": {"acc": 0.755, "n": 2}},
                                             "simmerge": {"cloze": cell}}}}}
    table = report.headline_markdown(results, {"t": "T", "absent": "X"}).splitlines()
    assert table[0] == "| held out | metric | base | sim-merge | **DnD** |"
    assert table[2:] == ["| T | cloze | 50.0 | 50.0 | **75.5** |"]  # no mc row: nothing has mc


def test_cli_prints_the_table():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "readme_table.py")], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.startswith("| held out | metric | base |") and "| SciQ (cross-domain) | mc |" in out
