"""How close DnD's decoded outputs are to each baseline's: identical greedy texts, problem by problem.

    python bench/decoded_agreement.py --workdir workdir/math --out docs/results/math
    python bench/decoded_agreement.py --workdir workdir/coding --out docs/results/coding

Scores say how often two systems are right; this says whether they decode the same thing. For every
per-target report and decoding metric (exact match, pass@1: the cache entries that keep their texts), each
system's mean text length, score, how many of its texts are empty (the stop sequences cut them at their
first character) and how many open with a Markdown code fence (a code model ending the block where the solution
should be, to write prose), and for DnD against every other decoded system: on how many problems
the two greedy texts are identical, on how many both extract the same answer (exact match only), and how
many problems both, only DnD, or only the other get right. Reads the run's records only (no model).
Writes ``decoded_agreement.json`` and ``decoded_agreement.md`` into ``--out``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from dnd_jax import assets  # noqa: E402


def _define_flags() -> dict:
    """The CLI's flags (defined only when run as a script, so tests can load this module beside others)."""
    return {"workdir": flags.DEFINE_string("workdir", None, "the experiment's workdir (its output root)"),
            "out": flags.DEFINE_string("out", None, "folder for decoded_agreement.json / .md"),
            "system": flags.DEFINE_string("system", "dnd", "the system compared with every other decoded system")}


def agreement(records: dict[str, dict], system: str = "dnd") -> dict:
    """``records``: system -> its cache record (``texts``, ``correct``, optionally ``pred``), on the same problems.

    Returns per system its mean text length (characters), score, empty texts (after the stop sequences' cut)
    and texts that open with a code fence (``` after leading whitespace), and per other system the counts of
    identical texts, equal extracted answers (where both records have ``pred``; a problem where neither text
    yields an answer is not counted as agreeing), both correct, only ``system`` correct and only
    the other correct.
    """
    ref = records[system]
    n = len(ref["texts"])
    out = {"n": n, "systems": {}, "versus": {}}
    for name, r in records.items():
        if len(r["texts"]) != n or len(r["correct"]) != n:
            raise ValueError(f"{name} has {len(r['texts'])} texts and {len(r['correct'])} scores, {system} {n}")
        out["systems"][name] = {"mean_chars": sum(map(len, r["texts"])) / n if n else 0.0,
                                "score": sum(r["correct"]) / n if n else 0.0,
                                "empty": sum(not t.strip() for t in r["texts"]),
                                "opens_with_fence": sum(t.lstrip().startswith("```") for t in r["texts"])}
        if name == system:
            continue
        pairs = list(zip(ref["correct"], r["correct"], strict=True))
        row = {"identical_texts": sum(a == b for a, b in zip(ref["texts"], r["texts"], strict=True)),
               "both_correct": sum(bool(a and b) for a, b in pairs),
               "only_" + system: sum(bool(a and not b) for a, b in pairs),
               "only_other": sum(bool(b and not a) for a, b in pairs)}
        if "pred" in ref and "pred" in r:
            row["same_answer"] = sum(a is not None and a == b for a, b in zip(ref["pred"], r["pred"], strict=True))
        out["versus"][name] = row
    return out


def collect(workdir: Path, system: str = "dnd") -> list[dict]:
    """One agreement table per (report, decoding metric) where ``system`` was decoded."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for cell in common.report_cells(workdir):
        if cell["entry"] is not None:
            groups.setdefault((cell["report"], cell["metric"]), {})[cell["system"]] = cell["entry"]
    tables = []
    for (report, metric), paths in sorted(groups.items()):
        records = {name: json.loads(p.read_text()) for name, p in paths.items()}
        if system not in records or "texts" not in records[system]:
            continue  # not a decoding metric (bpb, cloze), or the system was not scored
        records = {name: r for name, r in records.items() if "texts" in r}
        tables.append({"report": report, "metric": metric} | agreement(records, system))
    return tables


def markdown(tables: list[dict], system: str) -> str:
    lines = ["# How close the decoded outputs are", "",
             f"Written by `python bench/decoded_agreement.py`. Greedy texts of `{system}` against every other decoded",
             "system, problem by problem: identical texts (character for character), the same extracted answer",
             "(exact match only; both texts must yield one), and who is right where. Empty: texts the stop",
             "sequences cut at their first character; fence: texts that open with ``` (the model ends the code",
             "block where the solution should be and writes prose after it).", ""]
    for t in tables:
        lines += [f"## {t['report']}, {t['metric']} ({t['n']} problems)", "",
                  "| system | mean chars | empty | fence | score (%) | identical texts | same answer | both right | "
                  f"only {system} right | only this one right |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, s in t["systems"].items():
            v = t["versus"].get(name)
            cells = ["–"] * 5 if v is None else [
                str(v["identical_texts"]), str(v.get("same_answer", "–")), str(v["both_correct"]),
                str(v["only_" + system]), str(v["only_other"])]
            lines.append(f"| {name} | {s['mean_chars']:.0f} | {s['empty']} | {s['opens_with_fence']} | "
                         f"{100 * s['score']:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(fl: dict) -> None:
    workdir, out = common.workdir_and_out(fl["workdir"].value, fl["out"].value)
    system = fl["system"].value
    try:
        tables = collect(workdir, system)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if not tables:
        raise app.UsageError(f"no decoding metric with texts for {system!r} in {workdir}")
    md = markdown(tables, system)
    out.mkdir(parents=True, exist_ok=True)
    assets.write_json_atomic(out / "decoded_agreement.json", {"workdir": str(workdir), "system": system,
                                                              "tables": tables})
    assets.write_text_atomic(out / "decoded_agreement.md", md)
    print(md)
    print(f"wrote {out / 'decoded_agreement.json'} and {out / 'decoded_agreement.md'}")


if __name__ == "__main__":
    _flags = _define_flags()
    app.run(lambda argv: main(_flags))
