"""README tables that restate a results file are exactly what that file says."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dnd_jax import report, testing

ROOT = Path(__file__).resolve().parents[1]


def _tables() -> list[list[str]]:
    """Every Markdown table in the README, as its lines."""
    tables, current = [], []
    for line in (ROOT / "README.md").read_text().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _domain_tables(names: dict[str, str]) -> list[str]:
    """The README's results tables (header "| held out | metric |") whose rows name one of ``names``'s targets."""
    shown = set(names.values())
    return ["\n".join(t) + "\n" for t in _tables()
            if t[0].startswith("| held out | metric |") and any(r.split("|")[1].strip() in shown for r in t[2:])]


def _bench():
    return testing.load_bench("readme_table")


@pytest.mark.parametrize("domain", ["commonsense", "math", "coding"])
def test_results_table_is_docs_results(domain):
    """One README table per domain whose results.json is in docs/results, exactly bench/readme_table.py's
    output; none for a domain that has not run (no numbers without their file)."""
    bench = _bench()
    d = bench.DOMAINS[domain]
    found = _domain_tables(d.names)
    if domain == "commonsense":
        assert d.results.exists()
    if not d.results.exists():
        assert found == [], f"a {domain} table in the README but no {d.results.relative_to(ROOT)}"
        return
    want = bench.table(json.loads(d.results.read_text()), domain)
    assert found == [want]  # regenerate with: python bench/readme_table.py --domain <domain>


def test_domain_tables_render_generative_metrics():
    """bpb is stored as minus bits per byte and shown as bits (3 decimals); pass@1 and exact match in percent;
    a cross-domain target's row carries only the metric it was scored on."""
    bench = _bench()
    results = {"targets": {
        "gsm8k": {"systems": {"base": {"bpb": {"acc": -0.6721, "n": 200}, "exact_match": {"acc": 0.015, "n": 200}},
                              "dnd": {"bpb": {"acc": -0.61, "n": 200}, "exact_match": {"acc": 0.02, "n": 200}}}},
        "arc_c<-gsm8k": {"systems": {"base": {"cloze": {"acc": 0.3, "n": 200}}, "dnd": {"cloze": {"acc": 0.28, "n": 200}}}},
    }}
    lines = bench.table(results, "math").splitlines()
    assert lines[0] == "| held out | metric | base | **DnD** |"
    assert lines[2:] == ["| GSM8K | bpb | 0.672 | **0.610** |", "| GSM8K | exact_match | 1.5 | **2.0** |",
                         "| ARC-c (GSM8K's generator) | cloze | 30.0 | **28.0** |"]


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


def test_readme_speed_ratios_follow_from_docs_zoo_and_results():
    """The README's speed ratios are docs/zoo.md's oracle training walls over docs/results' generation walls."""
    walls = {}
    for line in (ROOT / "docs" / "zoo.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[5].isdigit():
            walls[cells[0]] = float(cells[5])
    results = json.loads((ROOT / "docs" / "results" / "results.json").read_text())["targets"]
    ratio = {t: round(walls[t] / r["speed"]["generate_wall_s"]) for t, r in results.items()}
    names = _bench().COMMONSENSE
    readme = " ".join((ROOT / "README.md").read_text().split())
    shown = ", ".join(f"{names[t]} {ratio[t]}x" for t in ("arc_c", "obqa", "piqa", "arc_e", "boolq", "winogrande"))
    assert shown in readme
    assert f"that is {ratio['hellaswag']}x (HellaSwag) to {ratio['sciq']}x (SciQ)" in readme
    assert min(ratio.values()) == ratio["hellaswag"] and max(ratio.values()) == ratio["sciq"]
