"""An honest speedup: LoRA training time needed to reach the *generated* adapter's accuracy.

"Generate vs train the oracle LoRA" divides by the whole training run, even when a few steps (or
none) already match what DnD gives. The speedup a user gets is the training time to reach DnD's own
accuracy on the target, divided by the generation time.

Two modes:

    # bounds from stored results (no zoo needed): step 0 = base model, step N = the oracle LoRA
    python bench/speedup.py --results docs/results/results.json

    # the curve: score every zoo checkpoint of the target (and the base model as step 0)
    python bench/speedup.py --config configs/smollm2_commonsense.py --workdir workdir/smollm2 \\
        --task arc_c --dnd_acc 0.30 --limit 200

With only the two end points, the steps needed are 0 when DnD is not above the base model (training
is not needed to match it), more than N when DnD is above the oracle, and otherwise somewhere in
(0, N]: the bound is reported as such. A zoo keeping checkpoints from step 1 (``config.zoo``
``pretrain_steps=0, save_every=1``) pins the step. Accuracies at n=200 carry about +-3 points of
noise; "reaches" compares point estimates. Writes ``docs/bench/speedup*.json``.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def steps_to_reach(curve: Sequence[tuple[int, float]], target: float) -> tuple[int, int | None]:
    """(lo, hi): the first step reaching ``target`` lies in (lo, hi] (hi None: not reached by the last).

    ``curve`` is (step, accuracy) with step 0 the untrained model; reached at step 0 gives (0, 0).
    """
    pts = sorted(curve)
    if not pts:
        raise ValueError("empty curve")
    prev = None
    for step, acc in pts:
        if acc >= target:
            return (step, step) if prev is None or step == 0 else (prev, step)
        prev = step
    return pts[-1][0], None


def describe(lo: int, hi: int | None, step_s: float, gen_s: float) -> dict:
    """Training seconds to match DnD (bounds) and the speedup over generation (bounds)."""
    out = {"steps_lo_exclusive": lo, "steps_hi": hi, "train_s_per_step": step_s}
    if hi == 0:
        out.update(train_s_hi=0.0, speedup_hi=0.0, reading="the untrained base model already matches DnD")
    elif hi is None:
        out.update(train_s_lo=lo * step_s, speedup_lo=lo * step_s / gen_s,
                   reading=f"not reached within {lo} steps: the speedup is at least the full-run ratio")
    else:
        out.update(train_s_lo=(lo + 1) * step_s, train_s_hi=hi * step_s, speedup_lo=(lo + 1) * step_s / gen_s,
                   speedup_hi=hi * step_s / gen_s,
                   reading=(f"reached at step {hi}" if hi - lo == 1 else f"reached after {lo} and by {hi} steps"))
    return out


def bounds_from_results(results: dict, metric: str, total_steps: int, gen_s: float | None) -> dict:
    out = {}
    for task, t in results["targets"].items():
        sysm = t["systems"]
        if not all(k in sysm and metric in sysm[k] for k in ("base", "dnd", "oracle")):
            continue
        base, dnd, oracle = (sysm[k][metric]["accuracy"] for k in ("base", "dnd", "oracle"))
        speed = t.get("speed", {})
        train_s = float(speed["oracle_train_wall_s"])
        g = float(gen_s if gen_s is not None else speed["generate_wall_s"])
        lo, hi = steps_to_reach([(0, base), (total_steps, oracle)], dnd)
        out[task] = {"base": base, "dnd": dnd, "oracle": oracle, "n": t.get("limit"), "oracle_train_s": train_s,
                     "generate_s": g,
                     "full_run_speedup": train_s / g, **describe(lo, hi, train_s / total_steps, g)}
    return out


def curve_from_zoo(config, workdir: str, task: str, metric: str, limit: int) -> tuple[list[tuple[int, float]], dict]:
    """(step, accuracy) of the base model (step 0) and every zoo checkpoint of ``task``, and its manifest."""
    from dnd_jax import base_model, evaluate, zoo

    ref = base_model.resolve(config.base_model, workdir)
    cache = Path(workdir) / "eval_cache"
    bs = int(config.eval.batch_size)
    curve = [(0, evaluate.evaluate_adapter(ref, None, task, metric, limit, bs, cache, progress=False)["accuracy"])]
    for ckpt in zoo.checkpoints(workdir, task):
        step = int(zoo.checkpoint_meta(ckpt)["step"])
        acc = evaluate.evaluate_adapter(ref, ckpt, task, metric, limit, bs, cache, progress=False)["accuracy"]
        curve.append((step, acc))
    manifest = json.loads((zoo.task_dir(workdir, task) / "manifest.json").read_text())
    return curve, manifest


def curve_from_cache(workdir: str, task: str, metric: str, limit: int) -> tuple[list[tuple[int, float]], dict, list[int]]:
    """The curve from the scores already in ``workdir/eval_cache`` (no model loaded, nothing evaluated):
    (step, accuracy) of the base model and of every zoo checkpoint scored there, its manifest, and the
    checkpoint steps that have no stored score."""
    from dnd_jax import zoo

    stored = {}
    for f in (Path(workdir) / "eval_cache").glob(f"{task}-{metric}-*.json"):
        d = json.loads(f.read_text())
        if d.get("task") == task and d.get("metric") == metric and d.get("limit") == limit and d.get("split") == "test":
            stored[d.get("adapter")] = sum(d["correct"]) / len(d["correct"])
    curve, missing = [], []
    if None in stored:
        curve.append((0, stored[None]))
    for ckpt in zoo.checkpoints(workdir, task):
        step = int(zoo.checkpoint_meta(ckpt)["step"])
        key = next((k for k in stored if k and Path(k).resolve() == Path(ckpt).resolve()), "")
        if key:
            curve.append((step, stored[key]))
        else:
            missing.append(step)
    manifest = json.loads((zoo.task_dir(workdir, task) / "manifest.json").read_text())
    return curve, manifest, missing


def _cold_start_s() -> float | None:
    for p in sorted(common.DOCS.glob("cold_start_*.json")):
        return float(json.loads(p.read_text())["cold"]["wall_s"]["min"])
    return None


def _define_flags() -> None:
    """Flags, defined only when run as a script (tests import this module)."""
    flags.DEFINE_string("results", "", "results.json of dnd_jax.experiment (bounds mode).")
    flags.DEFINE_string("metric", "cloze", "Accuracy metric.")
    flags.DEFINE_string("workdir", "", "Folder holding zoo/ (curve mode).")
    flags.DEFINE_string("task", "", "Target task (curve mode).")
    flags.DEFINE_float("dnd_acc", None, "DnD's accuracy on the target (curve mode).")
    flags.DEFINE_float("generate_s", None, "Generation seconds (default: cold_start json's cold minimum).")
    flags.DEFINE_integer("limit", 200, "Test examples (curve mode).")
    flags.DEFINE_bool("cached_only", False, "Curve mode: only the scores already in W/eval_cache (evaluate nothing).")
    flags.DEFINE_string("name", "", "Result name.")
    flags.DEFINE_string("note", "", "A remark printed under the table (e.g. how loaded the oracle's training was).")
    flags.DEFINE_string("out", str(common.DOCS), "Output folder.")


def main(argv) -> None:
    del argv
    F = flags.FLAGS  # noqa: N806
    gen_s = F.generate_s
    if F.results:
        results = json.loads(Path(F.results).read_text())
        zcfg = results["config"]["zoo"]
        total = int(zcfg["pretrain_steps"]) + int(zcfg["save_steps"])
        res = common.Result(F.name or "speedup_bounds", mode="bounds", source=F.results, metric=F.metric,
                            total_steps=total)
        res["targets"] = bounds_from_results(results, F.metric, total, gen_s)
        if F.note:
            res["note"] = F.note
        if (cold := _cold_start_s()) is not None:
            res["cold_start_now_s"] = cold
        res.write(F.out)
        for t, r in res["targets"].items():
            print(f"{t:<11} base {r['base']:.3f} dnd {r['dnd']:.3f} oracle {r['oracle']:.3f}: {r['reading']}")
        return
    if not (F.workdir and F.task and F.dnd_acc is not None):
        raise SystemExit("give --results FILE, or --config, --workdir, --task and --dnd_acc")
    config = flags.FLAGS["config"].value
    missing = []
    if F.cached_only:
        curve, manifest, missing = curve_from_cache(F.workdir, F.task, F.metric, F.limit)
    else:
        curve, manifest = curve_from_zoo(config, F.workdir, F.task, F.metric, F.limit)
    gen_s = gen_s if gen_s is not None else _cold_start_s()
    if gen_s is None:
        raise SystemExit("no generation time: pass --generate_s or run bench/cold_start.py first")
    step_s = float(manifest["train_wall_time_s"]) / int(manifest["total_steps"])
    lo, hi = steps_to_reach(curve, float(F.dnd_acc))
    res = common.Result(F.name or f"speedup_{F.task}", mode="curve", task=F.task, metric=F.metric,
                        limit=F.limit, dnd_acc=F.dnd_acc, curve=curve, generate_s=gen_s, unscored_steps=missing,
                        **describe(lo, hi, step_s, gen_s))
    res.write(F.out)
    print(json.dumps({k: v for k, v in res.items() if k not in ("host", "curve")}, indent=1))


if __name__ == "__main__":
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config (curve mode).", lock_config=False)
    _define_flags()
    app.run(main)
