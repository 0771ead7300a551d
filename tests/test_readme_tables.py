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


def _rows(header_prefix: str) -> tuple[list[str], list[list[str]]]:
    """The README table whose header starts with ``header_prefix``: (header cells, data rows' cells)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    [start] = [i for i, line in enumerate(lines) if line.startswith(header_prefix)]
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip().strip("*") for c in line.strip().strip("|").split("|")])
    return table[0], table[2:]


def test_quickstart_table_is_docs_quickstart():
    results = json.loads((ROOT / "docs" / "quickstart" / "results.json").read_text())
    target = results["targets"]["arc_c"]
    header, rows = _rows("| ARC-c (n=")
    assert header[0] == f"ARC-c (n={target['limit']})"
    names = {"base": "base", "train-LoRA mean": "training_loras_mean", "best train-LoRA": "best_training_lora",
             "merged": "merged", "sim-merge": "simmerge", "nearest": "nearest", "DnD": "dnd", "oracle": "oracle"}
    assert [r[0] for r in rows] == ["cloze acc %", "mc acc %"]
    for row in rows:
        metric = row[0].split()[0]
        for col, cell in zip(header[1:], row[1:], strict=True):
            acc = target["systems"][names[col.rstrip("*")]][metric]["acc"]
            assert cell == f"{100 * acc:.1f}", (metric, col)


def test_scaling_table_rows_are_docs_scaling_results():
    header, rows = _rows("| K | DnD - merged | DnD - simmerge |")
    docs = (ROOT / "docs" / "scaling" / "results.md").read_text().splitlines()
    assert header[:2] == ["K", "DnD - merged"] and len(rows) >= 6
    for row in rows:
        assert "| " + " | ".join(row) + " |" in docs, row[0]  # K = row[0]: copy it from docs/scaling/results.md
