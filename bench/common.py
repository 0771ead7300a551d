"""Shared by the bench/ scripts: repeated timings (min/median/max), host load, JSON results with their command.

Every result file under ``docs/bench/`` records the exact command that produced it, the host (CPU
count and model, load averages before and after) and, per figure, the minimum, median and maximum
over repeats. Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs" / "bench"


def summary(values: list[float]) -> dict:
    """min / median / max / n of a list of measurements."""
    if not values:
        raise ValueError("no measurements")
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def repeat(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
    """Wall seconds of ``fn()`` (its result blocked on when it is a JAX value) over ``repeats`` runs."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return summary(times)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host() -> dict:
    """What the numbers were measured on, and how busy it was (load averages: 1, 5, 15 min)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    return {"cpus": cpus, "cpu": cpu_model(), "machine": platform.machine(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def versions(*names: str) -> dict:
    import importlib.metadata

    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def command() -> str:
    """The command line that is running, relative to the repository root."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    except ValueError:
        pass
    return "python " + " ".join(shlex.quote(a) for a in argv)


class Result(dict):
    """A result dict that knows its command, host and start load; ``write`` adds the end load."""

    def __init__(self, name: str, **fields: Any):
        super().__init__(name=name, command=command(), date=datetime.datetime.now(datetime.timezone.utc)
                         .isoformat(timespec="seconds"), host=host(), **fields)

    def write(self, out: str | Path = DOCS) -> Path:
        self["host"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self['name']}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)
        print(f"wrote {path}")
        return path


def _jsonable(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


def workdir_and_out(workdir: str | None, out: str | None) -> tuple[Path, Path]:
    """The ``--workdir``/``--out`` pair of a script that reads an experiment's records: both given and the
    workdir a folder, else absl's UsageError (a one-line error, exit 1)."""
    from absl import app

    if not workdir or not out:
        raise app.UsageError("--workdir and --out are required")
    if not Path(workdir).is_dir():
        raise app.UsageError(f"--workdir {workdir} is not a folder")
    return Path(workdir), Path(out)


def report_cells(workdir: Path) -> list[dict]:
    """Every scored (target report, metric, system) of an experiment's workdir and the cache entry holding it.

    Reads each per-target report ``W/results/<report>/results.json`` (its systems and their adapter hashes)
    and matches it to ``W/eval_cache/*.json`` by (task, metric, split, limit, adapter hash), keeping the
    newest scoring version (decoding journals, ``*.partial.json``, are not entries). A row: ``report``,
    ``task``, ``metric``, ``system``, ``kind``, ``entry`` (the entry's path, or None with a ``note`` when not
    exactly one matches) and ``shared_with`` (``report/system`` of the first row that used the same entry,
    in report order: the ``nearest`` baseline is one of the training LoRAs, and a cross-domain report reuses
    its target's base and DnD entries). A system not scored on a metric (training LoRAs on decoding
    metrics) has no row. Raises ValueError when the workdir has no report.
    """
    entries: dict[tuple, list[tuple[int, Path]]] = {}
    for path in sorted((workdir / "eval_cache").glob("*.json")):
        if path.name.endswith(".partial.json"):
            continue
        key = json.loads(path.read_text()).get("key")
        if isinstance(key, dict):
            ident = (key.get("task"), key.get("metric"), key.get("split"), key.get("limit"), key.get("adapter_hash"))
            entries.setdefault(ident, []).append((key.get("version", 0), path))
    reports = sorted((workdir / "results").glob("*/results.json"))
    if not reports:
        raise ValueError(f"no per-target reports in {workdir / 'results'} (run the experiment first)")
    rows = []
    seen: dict[Path, str] = {}  # entry -> the first "report/system" that used it
    for path in reports:
        report = json.loads(path.read_text())
        for metric in report["metrics"]:
            for system in report["systems"]:
                if system["name"] not in report["results"].get(metric, {}):
                    continue
                found = entries.get((report["task"], metric, report["split"], report["limit"],
                                     system["adapter_hash"]), [])
                newest = max((v for v, _ in found), default=0)
                found = [p for v, p in found if v == newest]
                row = {"report": path.parent.name, "task": report["task"], "metric": metric,
                       "system": system["name"], "kind": system["kind"], "entry": None, "shared_with": None}
                if len(found) != 1:
                    rows.append(row | {"note": f"{len(found)} cache entries match"})
                    continue
                name = f"{path.parent.name}/{system['name']}"
                first = seen.setdefault(found[0], name)
                rows.append(row | {"entry": found[0], "shared_with": None if first == name else first})
    return rows
