"""The README's compact results tables from a results.json (point estimates; the CIs are in results.md).

    python bench/readme_table.py                                  # commonsense: docs/results/results.json
    python bench/readme_table.py --domain math                    # docs/results/math/results.json
    python bench/readme_table.py --domain coding --results path/to/results.json

``tests/test_readme_tables.py`` checks that each README table is exactly this for its docs/results file,
and that the README has no math or coding table before that domain's results.json exists.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NamedTuple

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnd_jax import report  # noqa: E402


class Domain(NamedTuple):
    results: Path  # its results.json in the repo
    names: dict[str, str]  # target -> the README's name for it, in the table's order
    metrics: tuple[str, ...]  # metric-major row order


# The commonsense leave-one-out's targets as the README names them, in its order.
COMMONSENSE = {"arc_c": "ARC-c", "arc_e": "ARC-e", "boolq": "BoolQ", "hellaswag": "HellaSwag", "obqa": "OBQA",
               "piqa": "PIQA", "winogrande": "WinoGrande", "sciq": "SciQ (cross-domain)"}
# configs/smollm2_math.py: GSM8K and prealgebra held out in turn; GSM8K's generator on ARC-c (cross-domain).
MATH = {"gsm8k": "GSM8K", "minerva_math_prealgebra": "MATH prealgebra",
        "arc_c<-gsm8k": "ARC-c (GSM8K's generator)"}
# configs/smollm2_coding.py: three languages held out in turn; Python's adapter also scored on HumanEval and
# MBPP (evalplus prompt); Python's generator on ARC-c (cross-domain).
CODING = {"mt_mbpp_python": "MBPP Python", "codex_humaneval": "HumanEval", "codex_mbpp": "MBPP (evalplus)",
          "mt_mbpp_javascript": "MBPP JavaScript", "mt_mbpp_rust": "MBPP Rust",
          "arc_c<-mt_mbpp_python": "ARC-c (Python's generator)"}

DOMAINS = {
    "commonsense": Domain(ROOT / "docs" / "results" / "results.json", COMMONSENSE, ("cloze", "mc")),
    "math": Domain(ROOT / "docs" / "results" / "math" / "results.json", MATH, ("bpb", "exact_match", "cloze")),
    "coding": Domain(ROOT / "docs" / "results" / "coding" / "results.json", CODING, ("bpb", "pass@1", "cloze")),
}

DOMAIN = flags.DEFINE_enum("domain", "commonsense", list(DOMAINS), "which experiment's table")
RESULTS = flags.DEFINE_string("results", None, "a results.json (default: the domain's file under docs/results)")


def table(results: dict, domain: str) -> str:
    """The README's table for ``domain`` from its results."""
    d = DOMAINS[domain]
    return report.headline_markdown(results, d.names, d.metrics)


def main(argv) -> None:
    del argv
    path = Path(RESULTS.value) if RESULTS.value else DOMAINS[DOMAIN.value].results
    print(table(json.loads(path.read_text()), DOMAIN.value), end="")


if __name__ == "__main__":
    app.run(main)
