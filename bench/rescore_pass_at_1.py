"""pass@1 again from an experiment's cached greedy texts, under the sandbox's current limits.

    python bench/rescore_pass_at_1.py --workdir workdir/coding --out docs/results/coding

When the sandbox changes (its limits, its guard) the decoded texts do not, so this needs no model and no
decoding: it reruns the programs of every cached pass@1 entry of the experiment and reports, per target
report and system, how many passed when the entry was scored (with the limits its key recorded) and how
many pass now (``generative.SANDBOX_LIMITS``), and every problem whose verdict changed. Writes
``pass_at_1_rescored.json`` and ``.md`` into ``--out``; the cache is only read.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from dnd_jax import assets, generative, sandbox  # noqa: E402


def _define_flags() -> dict:
    """The CLI's flags (defined only when run as a script, so tests can load this module beside others)."""
    return {"workdir": flags.DEFINE_string("workdir", None, "the experiment's workdir (its output root)"),
            "out": flags.DEFINE_string("out", None, "folder for pass_at_1_rescored.json / .md")}


def recorded_limits(key: dict) -> dict | None:
    """The sandbox limits a pass@1 entry was scored with, from its cache key (where they were kept until
    ``generative.SETTINGS`` version 2, or where they are now)."""
    return key.get("sandbox") or (key.get("generative") or {}).get("sandbox")


def rescore(record: dict, limits: sandbox.Limits, workers: int) -> dict:
    """One pass@1 cache record's texts run again under ``limits``: counts and the problems that changed."""
    from dnd_jax.task_sources import math_code

    task, ids, texts, before = record["task"], record["ids"], record["texts"], record["correct"]
    if not (len(ids) == len(texts) == len(before)):
        raise ValueError(f"{task}: {len(ids)} ids, {len(texts)} texts and {len(before)} verdicts")
    programs = [math_code.python_program(task, i, t) for i, t in zip(ids, texts, strict=True)]
    results = sandbox.run_many(programs, limits, workers)
    changed = [{"id": i, "before": then, "now": r.status}
               for i, then, was, r in zip(ids, record["status"], before, results, strict=True) if bool(was) != r.passed]
    return {"n": len(ids), "passed_before": sum(bool(c) for c in before),
            "passed_now": sum(r.passed for r in results), "changed": changed,
            "limits_before": recorded_limits(record.get("key") or {})}


def collect(workdir: Path, limits: sandbox.Limits, workers: int) -> list[dict]:
    """A row per (report, system) with a pass@1 entry of its own (an entry shared with an earlier row is skipped)."""
    rows = []
    for cell in common.report_cells(workdir):
        if cell["metric"] != "pass@1" or cell["entry"] is None or cell.get("shared_with"):
            continue
        record = json.loads(cell["entry"].read_text())
        if "texts" not in record:
            continue
        rows.append({"report": cell["report"], "system": cell["system"]} | rescore(record, limits, workers))
    return rows


def markdown(rows: list[dict], limits: dict) -> str:
    before = sorted({json.dumps(r["limits_before"], sort_keys=True) for r in rows})
    lines = ["# pass@1 rescored from the cached texts", "",
             "Written by `python bench/rescore_pass_at_1.py`: every cached pass@1 program run again in the sandbox",
             f"(no model, no decoding). Limits now: `{json.dumps(limits, sort_keys=True)}`; when scored: "
             + ", ".join(f"`{b}`" for b in before) + ".", "",
             "| report | system | n | passed when scored | passed now | changed (id: then -> now) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        changed = ", ".join(f"{c['id']}: {c['before']} -> {c['now']}" for c in r["changed"]) or "none"
        lines.append(f"| {r['report']} | {r['system']} | {r['n']} | {r['passed_before']} | {r['passed_now']} | "
                     f"{changed} |")
    return "\n".join(lines) + "\n"


def main(fl: dict) -> None:
    workdir, out = common.workdir_and_out(fl["workdir"].value, fl["out"].value)
    limits = generative.SANDBOX_LIMITS
    workers = max(1, min(2, len(os.sched_getaffinity(0))))
    # its command and the host's load before the programs run (write adds the load after)
    result = common.Result("pass_at_1_rescored", workdir=str(workdir), limits=dataclasses.asdict(limits))
    try:
        rows = collect(workdir, limits, workers)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if not rows:
        raise app.UsageError(f"no pass@1 entry with texts in {workdir}")
    md = markdown(rows, result["limits"])
    result["rows"] = rows
    result.write(out)
    assets.write_text_atomic(out / "pass_at_1_rescored.md", md)
    print(md)
    print(f"wrote {out / 'pass_at_1_rescored.md'}")


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(lambda argv: main(_FLAGS))
