"""The README's compact results table from a results.json (point estimates; the CIs are in results.md).

    python bench/readme_table.py --results docs/results/results.json

``tests/test_readme_tables.py`` checks that the README's table is exactly this for docs/results.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnd_jax import report  # noqa: E402

# The commonsense leave-one-out's targets as the README names them, in its order.
COMMONSENSE = {"arc_c": "ARC-c", "arc_e": "ARC-e", "boolq": "BoolQ", "hellaswag": "HellaSwag", "obqa": "OBQA",
               "piqa": "PIQA", "winogrande": "WinoGrande", "sciq": "SciQ (cross-domain)"}

RESULTS = flags.DEFINE_string("results", str(ROOT / "docs" / "results" / "results.json"), "a results.json")


def main(argv) -> None:
    del argv
    print(report.headline_markdown(json.loads(Path(RESULTS.value).read_text()), COMMONSENSE), end="")


if __name__ == "__main__":
    app.run(main)
