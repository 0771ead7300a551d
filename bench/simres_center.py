"""Where does the similarity-centered generator (variant ``simres``) start, and what does its decoder add?

A ``simres`` generator's adapter is ``center(prompts) + decoder(prompts)``: the center is the
similarity-weighted mean of the training tasks' LoRA factors (weights from the generator's own encoder
directions, leave-one-out in training), the decoder's output a learned correction. This evaluates the
**center alone** (:meth:`dnd_jax.generator.Generator.generate_many` with ``center_only=True``) on the
curve's targets, under the curve's evaluation settings and cache, and pairs it question by question
with the similarity-weighted merge (simmerge), the merge and the full simres adapter:

- ``center - simmerge``: does the generator start where the simmerge baseline is (its weights come
  from 32-token encoder states and average factors, simmerge's from MiniLM on whole prompts and
  folds ``B A``)?
- ``simres - center``: what the trained decoder's correction adds (below 0: it costs accuracy).

Needs the scaling run of the variant at that K (``python -m dnd_jax.scaling --config
configs/smollm2_many.py --workdir workdir/many --sizes=152 --variant simres
--config.center.mode=similarity``).

    python bench/simres_center.py --workdir workdir/many --k 152 --out docs/scaling/variants/simres/center
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
from dnd_jax import assets, base_model, plan, scaling_curve, scoring, zoo  # noqa: E402

SYSTEMS = ("simmerge", "merged", "dnd")  # dnd: the full simres adapter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--k", type=int, default=152)
    ap.add_argument("--variant", default="simres")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    workdir = Path(args.workdir)
    config = smollm2_many.get_config()
    res_path = workdir / "scaling" / "variants" / args.variant / "results.json"
    if not res_path.is_file():
        sys.exit(f"error: {res_path} does not exist; run the scaling curve's variant '{args.variant}' first")
    res = json.loads(res_path.read_text())
    pool = res["pools"].get(str(args.k))
    if pool is None:
        sys.exit(f"error: {res_path} has no pool K = {args.k} (it has {sorted(res['pools'], key=int)})")
    gen_dir = workdir / "scaling" / f"K{args.k:03d}" / f"generator-{args.variant}"
    metric = res["protocol"]["metrics"][0]

    from dnd_jax import generator

    gen = generator.Generator.load(gen_dir)
    if gen.bank is None:
        sys.exit(f"error: the generator at {gen_dir} is not similarity-centered; nothing to separate")
    ref = base_model.resolve(config.base_model, workdir)
    t0 = time.perf_counter()
    rows = {}
    for target in res["protocol"]["targets"]:
        path = workdir / "scaling" / f"K{args.k:03d}" / "adapters" / f"{args.variant}_center_{target}"
        if not (path / zoo.ADAPTER_WEIGHTS).is_file():
            prompts = plan.condition_prompts(config, target)
            gen.generate_many([prompts], seed=int(config.generate.seed), center_only=True)[0].save(path, overwrite=True)
        rec = scaling_curve.evaluate_system(ref, path, target, metric, config, workdir)
        systems = pool["targets"][target]["systems"]
        rows[target] = {"center": rec["correct"], **{s: systems[s][metric]["correct"] for s in SYSTEMS}}
        print(f"{target}: center {100 * rec['accuracy']:.1f}", flush=True)

    n_boot = int(config.eval.bootstrap)
    pairs = {"center - simmerge": ("center", "simmerge"), "center - merged": ("center", "merged"),
             "simres - center": ("dnd", "center"), "simres - simmerge": ("dnd", "simmerge")}
    out = {"k": args.k, "variant": args.variant, "generator": str(gen_dir), "metric": metric,
           "wall_s": round(time.perf_counter() - t0, 1),
           "accuracy": {t: {s: float(np.mean(v)) for s, v in r.items()} for t, r in rows.items()},
           "per_target": {}, "mean": {}}
    for label, (a, b) in pairs.items():
        ab = [(rows[t][a], rows[t][b]) for t in sorted(rows)]
        out["mean"][label] = scaling_curve.stratified_paired_bootstrap(ab, n_boot)
        for t in sorted(rows):
            out["per_target"].setdefault(t, {})[label] = scoring.paired_bootstrap(rows[t][a], rows[t][b], n_boot)

    cols = ["center", *SYSTEMS]
    lines = [f"# `{args.variant}` at K = {args.k}: the similarity center alone vs. with the decoder's correction", "",
             f"Produced by `python bench/simres_center.py --workdir {args.workdir} --k {args.k} --variant {args.variant} "
             f"--out {args.out}` "
             f"({out['wall_s']:.0f} s here). {metric} accuracy on the first {int(config.eval.limit)} test questions; "
             "paired differences in points with 95% CIs (mean: stratified over the targets). `dnd` is the full "
             f"`{args.variant}` adapter (center + decoder).", "",
             "| | " + " | ".join(pairs) + " |", "|---" * (len(pairs) + 1) + "|",
             "| mean over targets | " + " | ".join(scaling_curve.ci_cell(out["mean"][p]) for p in pairs) + " |", "",
             "| target | " + " | ".join(cols) + " | " + " | ".join(pairs) + " |", "|---" * (len(cols) + len(pairs) + 1) + "|"]
    for t in res["protocol"]["targets"]:
        acc = out["accuracy"][t]
        lines.append(f"| {t} | " + " | ".join(f"{100 * acc[c]:.1f}" for c in cols) + " | "
                     + " | ".join(scaling_curve.ci_cell(out["per_target"][t][p]) for p in pairs) + " |")
    mean_acc = {c: 100 * float(np.mean([out["accuracy"][t][c] for t in rows])) for c in cols}
    lines += ["", "Mean accuracy: " + ", ".join(f"{c} {v:.1f}" for c, v in mean_acc.items()) + "."]
    out["mean_accuracy"] = mean_acc
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    assets.write_json_atomic(dest / "results.json", out)
    assets.write_text_atomic(dest / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
