"""What does one task's LoRA need? Convergence and reproducibility of the task-specific update vs steps.

For two tasks A and B, LoRAs are trained for ``--steps`` steps with a checkpoint every ``--every``,
twice each (two batch orders, the same LoRA init: the zoo's replica recipe). At every kept step k:

- ``replica_cos_diff``: cos between the two replicas' task-difference updates
  (dW_A - dW_B): how reproducible the task-specific direction is after k steps;
- ``cos_to_final_diff``: cos between the step-k and the final difference (direction convergence);
- ``norm_rel_final``: |dW_A(k) - dW_B(k)| / |dW_A(final) - dW_B(final)|;
- the LoRA step's wall time (unit cost).

The many-task zoo keeps 40 steps per task (configs/smollm2_many.py); this measures what that costs
against 100. Writes JSON + Markdown to ``--out`` (docs/scaling/zoo_recipe).

    python bench/zoo_recipe.py --workdir workdir/zoo_recipe --tasks arc_e,mmlu_high_school_biology \
        --steps 100 --every 10 --out docs/scaling/zoo_recipe
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: configs/, dnd_jax/

from configs import smollm2_many  # noqa: E402
from dnd_jax import collect, geometry, zoo  # noqa: E402


def _config(steps: int, every: int, data_seed: int, max_len: int):
    config = smollm2_many.get_config()
    config.zoo.pretrain_steps = 0
    config.zoo.save_steps = steps
    config.zoo.save_every = every
    config.zoo.data_seed = data_seed
    config.zoo.max_len = max_len
    return config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--tasks", default="arc_e,mmlu_high_school_biology")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--max_len", type=int, default=96)
    ap.add_argument("--out", default="docs/scaling/zoo_recipe")
    args = ap.parse_args()
    task_a, task_b = args.tasks.split(",")
    root = Path(args.workdir)
    walls = {}
    for seed in (0, 1):
        config = _config(args.steps, args.every, seed, args.max_len)
        config.tasks = (task_a, task_b)
        t0 = time.perf_counter()
        collect.collect(config, root / f"seed{seed}", only=[task_a, task_b])
        walls[seed] = time.perf_counter() - t0
    steps = list(range(args.every, args.steps + 1, args.every))
    paths = [root / f"seed{s}" / "zoo" / t / zoo.ckpt_name(k) for s in (0, 1) for t in (task_a, task_b) for k in steps]
    space = geometry.Space(geometry.update_gram([geometry.load_factors(p) for p in paths]))
    n = len(steps)

    def idx(seed: int, task: int, j: int) -> int:
        return (seed * 2 + task) * n + j

    def diff(seed: int, j: int) -> np.ndarray:
        return space.point(idx(seed, 0, j)) - space.point(idx(seed, 1, j))

    rows = []
    for j, k in enumerate(steps):
        rows.append({"step": k, "replica_cos_diff": space.cos(diff(0, j), diff(1, j)),
                     "cos_to_final_diff": space.cos(diff(0, j), diff(0, n - 1)),
                     "norm_rel_final": space.norm(diff(0, j)) / space.norm(diff(0, n - 1)),
                     "replica_cos_update_a": space.cos(space.point(idx(0, 0, j)), space.point(idx(1, 0, j)))})
    per_step = {}
    for seed in (0, 1):
        for t in (task_a, task_b):
            m = zoo.task_manifest(root / f"seed{seed}", t)
            per_step[f"{t}/seed{seed}"] = m["train_wall_time_s"] / m["total_steps"]
    result = {"tasks": [task_a, task_b], "steps": args.steps, "every": args.every, "max_len": args.max_len,
              "rows": rows, "lora_step_wall_s": per_step, "collect_wall_s": walls}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo_recipe.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Zoo recipe: {task_a} vs {task_b}, two batch orders, checkpoints every {args.every} steps", "",
             f"`python bench/zoo_recipe.py --workdir {args.workdir} --tasks {args.tasks} --steps {args.steps} "
             f"--every {args.every} --out {args.out}`", "",
             "| step | replica cos of the task difference | cos to final difference | norm / final | "
             "replica cos of A's update |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['replica_cos_diff']:.3f} | {r['cos_to_final_diff']:.3f} | "
                     f"{r['norm_rel_final']:.2f} | {r['replica_cos_update_a']:.3f} |")
    lines += ["", "LoRA step wall time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in per_step.items()), ""]
    (out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
