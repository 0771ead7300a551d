"""What an experiment's evaluation really cost: every (target, metric, system) cell with the wall seconds
its cache entry took, from the run's own records (no re-measuring).

    python bench/experiment_costs.py --workdir workdir/math --out docs/results/math
    python bench/experiment_costs.py --workdir workdir/smollm2 --out /tmp/costs   # the commonsense run

Reads ``W/results/<target>/results.json`` (each target's report: its systems and their adapter hashes),
``W/eval_cache/*.json`` (each entry's ``wall_s``: the scoring only, not the model merge) and
``W/experiment_stages.json`` (each stage's wall time over its runs and peak RSS). Writes
``eval_costs.json`` and ``eval_costs.md`` into ``--out``. A cell whose entry another cell shares (the
``nearest`` baseline is one of the training LoRAs; a cross-domain report reuses its target's base and
DnD entries) is counted once, under the first; an entry from an earlier run whose wall was not recorded
has none. A decoding resumed from its journal counts the seconds of every run (since session 19); one
resumed from an older journal counts only its last run's problems and says so. Entries written before
session 19 do not say whether they were resumed: their wall can be the last run's alone. Wall seconds of
a 1-core shard are about its CPU seconds; beside other work they are an upper figure.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from dnd_jax import assets  # noqa: E402

WORKDIR = flags.DEFINE_string("workdir", None, "the experiment's workdir (its output root)")
OUT = flags.DEFINE_string("out", None, "folder for eval_costs.json / eval_costs.md")


def cells(workdir: Path) -> list[dict]:
    """Every evaluated (target, metric, system) of the workdir's per-target reports, with its entry's cost."""
    rows = []
    for cell in common.report_cells(workdir):
        row = {k: cell[k] for k in ("report", "task", "metric", "system", "kind")}
        if cell["entry"] is None:
            rows.append(row | {"wall_s": None, "note": cell["note"]})
        elif cell["shared_with"] is not None:
            rows.append(row | {"wall_s": None, "note": f"same entry as {cell['shared_with']}"})
        else:
            record = json.loads(cell["entry"].read_text())
            wall, n = record.get("wall_s"), len(record.get("ids", ()))
            resumed = record.get("resumed") or {}
            if resumed and resumed.get("wall_s") is None:  # its earlier runs' seconds are not known
                n -= resumed["texts"]
                row["note"] = f"resumed with {resumed['texts']} texts decoded by earlier runs: wall of the rest only"
            rows.append(row | {"n": n, "wall_s": wall, "s_per_example": wall / n if wall is not None and n else None})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per (report, metric): how many systems were scored, their total wall and the median per system."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r.get("wall_s") is not None:
            groups.setdefault((r["report"], r["metric"]), []).append(r["wall_s"])
    return [{"report": rep, "metric": m, "systems": len(w), "total_wall_s": sum(w),
             "median_wall_s_per_system": statistics.median(w)} for (rep, m), w in sorted(groups.items())]


def markdown(rows: list[dict], groups: list[dict], stages: dict) -> str:
    lines = ["# Evaluation costs of this experiment, from its own records", "",
             "Written by `python bench/experiment_costs.py`. Wall seconds of each cache entry's scoring (a 1-core",
             "shard's wall is about its CPU time); the model merge and report writing are not in them.", "",
             "## Per report and metric", "",
             "| report | metric | systems scored | total wall (s) | median per system (s) |", "|---|---|---|---|---|"]
    lines += [f"| {g['report']} | {g['metric']} | {g['systems']} | {g['total_wall_s']:.0f} | "
              f"{g['median_wall_s_per_system']:.0f} |" for g in groups]
    if stages:
        lines += ["", "## Stages (`experiment_stages.json`: wall over every run of the stage, peak RSS)", "",
                  "| stage | wall (s) | runs | peak RSS (GB) |", "|---|---|---|---|"]
        lines += [f"| {name} | {s['wall_s']:.0f} | {len(s.get('runs', []))} | {s.get('peak_rss_gb', 0):.2f} |"
                  for name, s in sorted(stages.items())]
    lines += ["", "## Every cell", "", "| report | metric | system | n | wall (s) | s per example | note |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['wall_s']:.1f}" if r.get("wall_s") is not None else "-"
        per = f"{r['s_per_example']:.2f}" if r.get("s_per_example") is not None else "-"
        lines.append(f"| {r['report']} | {r['metric']} | {r['system']} | {r.get('n', '-')} | {wall} | {per} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    workdir, out = common.workdir_and_out(WORKDIR.value, OUT.value)
    try:
        rows = cells(workdir)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    stages_path = workdir / "experiment_stages.json"
    stages = json.loads(stages_path.read_text()) if stages_path.is_file() else {}
    groups = summary(rows)
    out.mkdir(parents=True, exist_ok=True)
    assets.write_json_atomic(out / "eval_costs.json", {"workdir": str(workdir), "summary": groups, "cells": rows,
                                                       "stages": stages})
    assets.write_text_atomic(out / "eval_costs.md", markdown(rows, groups, stages))
    print(markdown(rows, groups, stages).split("## Every cell")[0])
    print(f"wrote {out / 'eval_costs.json'} and {out / 'eval_costs.md'}")


if __name__ == "__main__":
    app.run(main)
