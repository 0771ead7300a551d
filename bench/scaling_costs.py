"""Two cost levers of the scaling curve, measured: packed cloze scoring and sharded zoo collection.

1. ``packed``: cloze accuracy with each question's choices packed into one row (shared context once,
   4D mask; ``config.eval.packed``) against one row per choice, on the first ``--n`` test questions of
   each target with the base SmolLM2: seconds, speedup, the largest log-likelihood difference and the
   number of changed predictions.
2. ``zoo``: LoRA steps of the many-task zoo recipe (batch 8, <= 96 tokens) with torch on 2 threads in
   one process, against two 1-thread processes side by side (``collect --shard=I/2``): seconds per
   step and tasks-steps per second.

Run on a quiet machine (``/work/notes/quiet.sh`` pauses the background jobs here). Writes JSON and
Markdown to ``--out``.

    python bench/scaling_costs.py --out docs/scaling/costs --n 48
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ("arc_c", "obqa", "arc_e", "piqa", "boolq", "hellaswag", "winogrande", "sciq")


def _setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    from configs import smollm2_many
    from dnd_jax import base_model

    cfg = smollm2_many.get_config()
    ref = base_model.resolve(cfg.base_model, None)
    return cfg, ref


def packed_bench(n: int, threads: int) -> dict:
    import numpy as np

    from dnd_jax import base_model, scoring, tasks

    _, ref = _setup(threads)
    model, tok = base_model.load(ref)
    model.eval()
    out = {}
    for task in TARGETS:
        ex = tasks.load_examples(task, "test", n)
        res = {}
        for packed in (False, True):
            t0 = time.perf_counter()
            sc = scoring.cloze_scores(model, tok, ex, 16, progress=False, packed=packed, pack_min_saving=0.0)
            res[packed] = (time.perf_counter() - t0, sc)
        a = np.concatenate([s["loglik"] for s in res[False][1]])
        b = np.concatenate([s["loglik"] for s in res[True][1]])
        pa, pb = scoring.cloze_predictions(res[False][1])[1], scoring.cloze_predictions(res[True][1])[1]
        enc = [scoring.encode_cloze(tok, e) for e in ex]
        out[task] = {"n": n, "unpacked_s": round(res[False][0], 2), "packed_s": round(res[True][0], 2),
                     "speedup": round(res[False][0] / res[True][0], 2), "token_saving": round(scoring.packing_saving(enc), 3),
                     "packed_by_default": scoring.packing_saving(enc) >= scoring.PACKING_MIN_SAVING,
                     "max_abs_loglik_diff": float(np.abs(a - b).max()), "changed_predictions": int(sum(
                         x != y for x, y in zip(pa, pb, strict=True)))}
        print(task, out[task], flush=True)
    return out


def _lora_steps(threads: int, task: str, steps: int) -> float:
    from dnd_jax import base_model, lora_train, tasks

    cfg, ref = _setup(threads)
    model, tok = base_model.load(ref)
    lc = cfg.lora
    model = lora_train.make_lora_model(model, lc.r, lc.alpha, lc.dropout,
                                       base_model.resolve_target_modules(lc.target_modules, ref), 0)
    ex = list(tasks.load_examples(task, "train"))
    zc = cfg.zoo
    r = lora_train.train_lora(model, tok, ex, answer_format=cfg.answer_format, max_len=zc.max_len,
                              batch_size=zc.batch_size, lr=zc.lr, weight_decay=0.0, warmup_steps=5,
                              total_steps=steps, seed=0, keep_step=lambda s: False, on_keep=None, desc=task)
    return r["wall_time_s"] / steps


def zoo_bench(task: str, steps: int) -> dict:
    def child(threads: int) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        return subprocess.Popen([sys.executable, __file__, "--_lora", f"{threads},{task},{steps}"], env=env,
                                stdout=subprocess.PIPE, text=True)

    def result(p: subprocess.Popen) -> float:
        out, _ = p.communicate()
        return float(out.strip().splitlines()[-1])

    one = result(child(2))
    pair = [child(1), child(1)]
    each = [result(p) for p in pair]
    return {"task": task, "steps": steps, "one_process_2_threads_s_per_step": round(one, 3),
            "two_1_thread_shards_s_per_step": [round(x, 3) for x in each],
            "throughput_gain": round(2 / max(each) * one, 2)}


def markdown(res: dict, cmd: str) -> str:
    lines = ["# Scaling-curve cost levers (measured)", "", f"Command: `{cmd}`", "",
             "## Packed cloze scoring (base SmolLM2-135M, 1 thread)", "",
             "| target | n | unpacked (s) | packed (s) | speedup | tokens saved | packed by default | max abs. loglik diff | "
             "changed predictions |", "|---|---|---|---|---|---|---|---|---|"]
    for t, r in res["packed"].items():
        lines.append(f"| {t} | {r['n']} | {r['unpacked_s']} | {r['packed_s']} | {r['speedup']} | "
                     f"{100 * r['token_saving']:.0f}% | {'yes' if r['packed_by_default'] else 'no'} | "
                     f"{r['max_abs_loglik_diff']:.1e} | {r['changed_predictions']} |")
    z = res["zoo"]
    lines += ["", "## Zoo collection: one 2-thread process vs two 1-thread shards", "",
              f"Task `{z['task']}`, {z['steps']} LoRA steps of the many-task recipe: one process with 2 torch "
              f"threads {z['one_process_2_threads_s_per_step']} s/step; two 1-thread processes side by side "
              f"{z['two_1_thread_shards_s_per_step']} s/step each: **{z['throughput_gain']}x** the LoRA steps "
              f"per second (`collect --shard=0/2` and `--shard=1/2`).", "",
              "Timings are single runs on this 2-core machine with the background jobs paused (quiet.sh); the "
              "log-likelihood and prediction columns are exact.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/scaling/costs")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zoo_task", default="mmlu_anatomy")
    ap.add_argument("--zoo_steps", type=int, default=6)
    ap.add_argument("--part", choices=("all", "zoo", "packed"), default="all",
                    help="measure one part only (merged into --out's results.json)")
    ap.add_argument("--_lora", default="")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args._lora:
        threads, task, steps = args._lora.split(",")
        print(_lora_steps(int(threads), task, int(steps)))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    cmds = res.pop("commands", {})
    cmd = "python bench/scaling_costs.py " + " ".join(sys.argv[1:])
    if args.part in ("all", "zoo"):
        res["zoo"], cmds["zoo"] = zoo_bench(args.zoo_task, args.zoo_steps), cmd
    if args.part in ("all", "packed"):
        res["packed"], cmds["packed"] = packed_bench(args.n, args.threads), cmd
    res["commands"] = cmds
    path.write_text(json.dumps(res, indent=1))
    if "zoo" in res and "packed" in res:
        (out / "README.md").write_text(markdown(res, " ; ".join(sorted(set(cmds.values())))))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
