"""Is a re-collected zoo bit-identical to the one behind a results.json? Compares, per target, the merged
adapter's content tag (``dnd_jax.baselines.merged_tag``: the training LoRAs' sha256) that the old run
recorded with the one this zoo gives, next to each task's first and final training loss.

    python bench/zoo_tags.py --config configs/smollm2_commonsense.py --workdir workdir/smollm2 \\
        --results docs/results/results.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnd_jax import baselines, plan, zoo  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a configs/*.py file (its get_config())")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--results", required=True, help="the old run's results.json")
    a = ap.parse_args()
    config = importlib.import_module("configs." + Path(a.config).stem).get_config()
    old = json.loads(Path(a.results).read_text())
    print("| target | recorded merged tag | this zoo's | same |\n|---|---|---|---|")
    for target, r in old["targets"].items():
        recorded = (r.get("system_info", {}).get("merged") or {}).get("adapter")
        if not recorded:
            continue
        train = [t for t in plan.target_training_tasks(config, target) if t != target]
        tag = "merged-" + baselines.merged_tag(train, {t: zoo.final_checkpoint(a.workdir, t) for t in train})
        print(f"| {target} | {Path(recorded).name} | {tag} | {'yes' if Path(recorded).name == tag else 'no'} |")
    print("\n| task | first loss | final loss |\n|---|---|---|")
    for t in config.tasks:
        m = zoo.task_manifest(a.workdir, t)
        print(f"| {t} | {m['first_loss']:.3f} | {m['final_loss']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
