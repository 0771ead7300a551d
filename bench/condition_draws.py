"""How much DnD's score depends on which unlabeled prompts condition it: one adapter per draw.

    python bench/condition_draws.py --config configs/smollm2_commonsense.py --workdir workdir/smollm2 \
        --seeds 0,1,2,3,4 --out docs/results/condition_draws

For every target of the experiment whose generator is trained (``W/generators/<target>``), each seed draws
``conditions.num_prompts`` of the target's unscored prompts (``plan.condition_prompts``; seed 0 is the
experiment's own adapter), generates an adapter into ``W/draws/<target>/seed<N>`` and scores it on the
experiment's questions (``config.eval``; cached in ``W/eval_cache``, so the merged baseline and seed 0 are
free). Reports, per target and metric: each draw's accuracy, their mean, standard deviation and range, and
each draw's paired difference to the merged adapter with its CI, so that a DnD - merged difference can be
read against the spread that the draw alone makes. Resumable: finished adapters and evaluations are reused.
``--shard=I/N`` takes every N-th target from the I-th (``launch/queue.sh`` runs two, one core each, then the
report run, which finds every adapter and score cached).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnd_jax import assets, base_model, baselines, evaluation, plan, scoring  # noqa: E402


def _define_flags() -> dict:
    """The CLI's flags (defined only when run as a script, so tests can import this module)."""
    return {
        "config": config_flags.DEFINE_config_file("config", None, "the experiment's config", lock_config=False),
        "workdir": flags.DEFINE_string("workdir", None, "the experiment's workdir (zoo, generators, evaluation cache)"),
        "seeds": flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "condition draws (generate.seed values)"),
        "targets": flags.DEFINE_list("targets", [], "targets (default: every held-out and cross-domain target "
                                     "with a trained generator)"),
        "metrics": flags.DEFINE_list("metrics", [], "metrics (default: config.eval.metrics that apply)"),
        "out": flags.DEFINE_string("out", "", "folder for condition_draws.json and .md (printed only when empty)"),
        "shard": flags.DEFINE_string("shard", None, "I/N: only every N-th target from the I-th (one process per "
                                     "core; no --out: a run without --shard then reads every draw from the caches)"),
    }


def draw_adapters(config, workdir: Path, target: str, seeds: list[int]) -> dict[int, Path]:
    """The adapters that ``target``'s generator makes from draws ``seeds`` of its unscored prompts (the
    generator is loaded once, and only if an adapter is missing)."""
    from dnd_jax import generator

    out = {seed: workdir / "draws" / target / f"seed{seed}" for seed in seeds}
    missing = [seed for seed, path in out.items() if not (path / "adapter_model.safetensors").is_file()]
    if missing:
        gen = generator.Generator.load(workdir / "generators" / target)
        prompts = plan.condition_prompts(config, target)
        for seed in missing:
            gen.generate_many([prompts], seed=seed)[0].save(out[seed], overwrite=True)
    return out


def study(config, workdir: Path, targets: list[str], seeds: list[int], metrics: list[str]) -> dict:
    ec = config.eval
    ref = base_model.resolve(config.base_model, workdir)
    out = {"seeds": seeds, "limit": int(ec.limit), "num_prompts": int(config.conditions.num_prompts), "targets": {}}
    for target in targets:
        ms = evaluation.applicable_metrics(target, metrics or list(ec.metrics))
        merged = baselines.build_baselines(workdir, target, ["merged"],
                                           training_tasks=plan.target_training_tasks(config, target))[0]
        kw = dict(limit=int(ec.limit), batch_size=int(ec.batch_size), cache_dir=workdir / "eval_cache",
                  max_new_tokens=int(ec.max_new_tokens), n_boot=int(ec.bootstrap), seed=int(config.seed),
                  progress=False, packed=bool(ec.get("packed", False)))
        ref_res = evaluation.evaluate_adapter_metrics(ref, merged.adapter, target, ms, **kw)
        rows: dict[str, dict] = {m: {"draws": {}} for m in ms}
        for seed, adapter in draw_adapters(config, workdir, target, seeds).items():
            res = evaluation.evaluate_adapter_metrics(ref, adapter, target, ms, **kw)
            for m in ms:
                pb = scoring.paired_bootstrap(res[m]["correct"], ref_res[m]["correct"], int(ec.bootstrap), int(config.seed))
                rows[m]["draws"][str(seed)] = {"acc": res[m]["accuracy"], "minus_merged": pb["diff"], "ci": pb["ci"]}
        for m in ms:
            accs = np.array([d["acc"] for d in rows[m]["draws"].values()])
            rows[m] |= {"merged": ref_res[m]["accuracy"], "mean": float(accs.mean()), "std": float(accs.std(ddof=1))
                        if len(accs) > 1 else 0.0, "min": float(accs.min()), "max": float(accs.max())}
        out["targets"][target] = rows
        print(f"[draws] {target}: " + ", ".join(f"{m} {100 * r['mean']:.1f} +- {100 * r['std']:.1f}"
                                               for m, r in rows.items()), flush=True)
    return out


def markdown(res: dict) -> str:
    lines = [f"# DnD across condition draws ({len(res['seeds'])} draws of {res['num_prompts']} unscored prompts)", "",
             "| target | metric | merged | DnD per draw | mean | sd | range | DnD - merged per draw |",
             "|---|---|---|---|---|---|---|---|"]
    for t, rows in res["targets"].items():
        for m, r in rows.items():
            per = " / ".join(f"{100 * d['acc']:.1f}" for d in r["draws"].values())
            diffs = " / ".join(f"{100 * d['minus_merged']:+.1f}" for d in r["draws"].values())
            lines.append(f"| {t} | {m} | {100 * r['merged']:.1f} | {per} | {100 * r['mean']:.1f} | {100 * r['std']:.1f} | "
                         f"{100 * (r['max'] - r['min']):.1f} | {diffs} |")
    return "\n".join(lines) + "\n"


def main(fl: dict) -> None:
    from dnd_jax import collection
    from dnd_jax.errors import InputError

    config, workdir = fl["config"].value, Path(fl["workdir"].value)
    targets = fl["targets"].value or [t for t in (*config.experiment.holdouts, *config.experiment.cross_domain)
                                      if (workdir / "generators" / t).is_dir()]
    try:
        part = collection.parse_shard(fl["shard"].value)
    except InputError as e:
        raise app.UsageError(str(e)) from None
    if part is not None:
        if fl["out"].value:
            raise app.UsageError("--out is written by the run without --shard (every shard's draws are cached by then)")
        targets = targets[part[0]::part[1]]
    res = study(config, workdir, targets, [int(s) for s in fl["seeds"].value], fl["metrics"].value)
    res["command"] = "python bench/condition_draws.py " + " ".join(sys.argv[1:])
    md = markdown(res)
    print(md)
    if fl["out"].value:
        out = Path(fl["out"].value)
        out.mkdir(parents=True, exist_ok=True)
        assets.write_json_atomic(out / "condition_draws.json", res)
        assets.write_text_atomic(out / "condition_draws.md", md)


if __name__ == "__main__":
    _flags = _define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(lambda argv: main(_flags))
