"""Two runs of the leave-one-out experiment side by side: which systems' accuracies moved.

    python bench/compare_results.py --old docs/results/results.json --new workdir/docs_results/results.json \
        --out docs/results/regeneration.md

Made for the regeneration with unscored conditions (issue 13, item 4): only generation changed, so the
baselines (base, training LoRAs, merged, nearest, oracle) must score exactly as before and only the DnD
rows may move. Prints the table and exits 1 if a baseline moved or a target/system/metric of the old run
is missing from the new one (unless ``--allow_moved_baselines``). ``--partial``: a run still in progress;
old targets it has not reached yet are listed, not counted as problems.

It also compares the merged adapters' content tags (``merged-<tag>``: a hash of the training LoRAs' sha256,
``dnd_jax.baselines``): equal tags mean the new run's zoo holds bit-identical final LoRAs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GENERATED = ("dnd",)  # systems whose adapters the generator makes; every other system is a baseline


def compare(old: dict, new: dict, partial: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(Markdown table rows, problems, old targets not in a ``partial`` new run): one row per target x
    system x metric of the old run."""
    rows, problems, pending = [], [], []
    for target, o in sorted(old["targets"].items()):
        n = new["targets"].get(target)
        if n is None and partial:
            pending.append(target)
            continue
        if n is None or "systems" not in o:
            problems += [f"target {target} missing from the new run"] if n is None else []
            continue
        for system, metrics in sorted(o["systems"].items()):
            for metric, ov in sorted(metrics.items()):
                nv = n.get("systems", {}).get(system, {}).get(metric)
                if nv is None:
                    problems.append(f"{target}/{system}/{metric} missing from the new run")
                    continue
                diff = 100 * (nv["acc"] - ov["acc"])
                moved = abs(diff) > 1e-9 or nv["n"] != ov["n"]
                kind = "generated" if system.split(":")[0] in GENERATED else "baseline"
                if moved and kind == "baseline":
                    problems.append(f"baseline {target}/{system}/{metric} moved {100 * ov['acc']:.1f} -> "
                                    f"{100 * nv['acc']:.1f} (n {ov['n']} -> {nv['n']})")
                if moved or kind == "generated":
                    rows.append(f"| {target} | {system} | {metric} | {100 * ov['acc']:.1f} | {100 * nv['acc']:.1f} | "
                                f"{diff:+.1f} | {kind} |")
    return rows, problems, pending


def merged_tags(old: dict, new: dict) -> list[tuple[str, str, str]]:
    """(target, old tag, new tag) of the ``merged`` system in both runs (the adapter folder's name)."""
    out = []
    for target, o in sorted(old["targets"].items()):
        n = new["targets"].get(target, {})
        a, b = (r.get("system_info", {}).get("merged", {}).get("adapter") for r in (o, n))
        if a and b:
            out.append((target, Path(a).name, Path(b).name))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--out", default="")
    ap.add_argument("--allow_moved_baselines", action="store_true")
    ap.add_argument("--partial", action="store_true", help="the new run is in progress: list the old targets it "
                    "has not reached instead of failing on them")
    a = ap.parse_args()
    old, new = (json.loads(Path(p).read_text()) for p in (a.old, a.new))
    rows, problems, pending = compare(old, new, a.partial)
    n_checked = sum(len(m) for t, r in old["targets"].items() if t not in pending for m in r.get("systems", {}).values())
    tags = merged_tags(old, new)
    same = [t for t, x, y in tags if x == y]
    tag_line = (f"Merged adapters' content tags equal on {len(same)} of {len(tags)} targets"
                + (" (the zoo's final LoRAs are bit-identical)." if tags and len(same) == len(tags) else
                   ": " + ", ".join(f"{t} {x} -> {y}" for t, x, y in tags if x != y) + "."))
    lines = ["# Regenerated leave-one-out results against the previous run", "",
             f"`python bench/compare_results.py --old {a.old} --new {a.new}" + (" --partial" if a.partial else "")
             + (f" --out {a.out}" if a.out else "") + "`",
             "", f"{n_checked} (target, system, metric) cells compared; listed: every generated (DnD) cell and any "
             "cell that moved.", "", "| target | system | metric | old % | new % | new - old | kind |",
             "|---|---|---|---|---|---|---|", *rows, "",
             *([tag_line, ""] if tags else []),
             *([f"Not regenerated yet (run in progress): {', '.join(pending)}.", ""] if pending else []),
             (f"**Every baseline scores exactly as before{' (on the targets regenerated so far)' if pending else ''}.**"
              if not problems else
              "**Problems:**\n\n" + "\n".join(f"- {p}" for p in problems)), ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 1 if problems and not a.allow_moved_baselines else 0


if __name__ == "__main__":
    sys.exit(main())
