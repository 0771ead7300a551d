"""Reference levels for a generator's ``fl_nll`` (the function-space loss it logs during training).

On the training tasks of one curve pool, the answer NLL per token (exactly the quantity the
function-space loss computes, :func:`dnd_jax.function_loss.make_loss`) of their first
``--examples`` train examples under three adapters:

- ``base``: no adapter;
- ``mean``: the mean of the pool's LoRA checkpoints in weight-token space (what a generator whose
  normalized output is 0 produces: the uniform merge of factors);
- ``own``: the task's own LoRA (its last checkpoint): what a generator that fits its training set
  exactly in weight space would produce.

A generator's ``fl_nll`` between ``mean`` and ``own`` shows how far the function-space term has moved
it from the mean toward its training tasks' own adapters. ``--generator NAME=PATH`` (repeatable) adds
the adapter each trained generator makes for the task from the task's zoo prompts (in-sample: the
pool's tasks trained it), on the same examples.

    python bench/function_loss_reference.py --workdir workdir/many --k 152 --tasks 24 \
        --out docs/scaling/variants/function_loss_reference.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: configs/, dnd_jax/


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--k", type=int, default=152)
    ap.add_argument("--tasks", type=int, default=24, help="evaluate every (K / tasks)-th pool task")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--max_len", type=int, default=64)
    ap.add_argument("--generator", action="append", default=[], help="NAME=GENERATOR_WORKDIR (repeatable)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    from transformers import AutoTokenizer

    from configs import smollm2_many
    from dnd_jax import base_model, function_loss, jax_lm, scaling_curve, zoo
    from dnd_jax.weights import layout as layout_lib
    from dnd_jax.weights import lora as lora_lib
    from dnd_jax.weights import normalization

    t0 = time.perf_counter()
    workdir = Path(args.workdir)
    config = smollm2_many.get_config()
    pool = list(config.experiment.pool_order)[: args.k]
    cfg = scaling_curve.pool_config(config, pool)
    cfg.function_loss.pool = args.examples
    cfg.function_loss.max_len = args.max_len
    chosen = pool[:: max(1, len(pool) // args.tasks)][: args.tasks]

    ckpts = {t: zoo.checkpoints(workdir, t) for t in pool}
    first = zoo.load_state_dict(ckpts[pool[0]][0])
    layout = layout_lib.build_layout({k: v.shape for k, v in first.items()}, tuple(cfg.layout.token_shape))
    total = np.zeros(layout.grid_shape, np.float64)
    n = 0
    for t in pool:  # the mean over every pool checkpoint, as the generator's normalizer computes it
        for c in ckpts[t][:-1]:  # the last checkpoint of each task is its validation one
            total += layout_lib.tokenize(layout, zoo.load_state_dict(c))[0]
            n += 1
    mean = (total / n).astype(np.float32)

    ref = base_model.resolve(cfg.base_model, workdir)
    lm_cfg, params = jax_lm.load(ref.path)
    tok = AutoTokenizer.from_pretrained(ref.path)
    ex = function_loss.load_examples(cfg, chosen, tok)
    scaling = lora_lib.lora_scaling(zoo.task_manifest(workdir, pool[0])["lora"])
    ident = normalization.Normalizer.identity(layout.mask())
    loss = jax.jit(function_loss.make_loss(lm_cfg, layout, ident, scaling, ex.max_answer, remat=False))

    def nll(tokens: np.ndarray | None, i: int) -> float:
        ids, lens, ans = (jnp.asarray(a[i][None]) for a in (ex.ids, ex.lengths, ex.answer_len))
        if tokens is None:  # the base model: a zero adapter
            tokens = np.zeros(layout.grid_shape, np.float32)
        return float(loss(jnp.asarray(tokens)[None], params, 0.0, ids, lens, ans))

    from dnd_jax import generator as generator_lib

    gens = {}
    for spec in args.generator:
        name, _, path = spec.partition("=")
        if not name or not path:
            sys.exit(f"error: --generator wants NAME=PATH, got '{spec}'")
        gens[name] = generator_lib.Generator.load(path)
    rows = []
    for i, t in enumerate(chosen):
        own = layout_lib.tokenize(layout, zoo.load_state_dict(ckpts[t][-1]))[0]
        row = {"task": t, "base": nll(None, i), "mean": nll(mean, i), "own": nll(own, i)}
        for name, gen in gens.items():
            adapter = gen.generate_many([zoo.prompts(workdir, t)], seed=int(config.generate.seed))[0]
            row[name] = nll(layout_lib.tokenize(layout, adapter.state_dict)[0], i)
        rows.append(row)
        print(row, flush=True)
    avg = {k: float(np.mean([r[k] for r in rows])) for k in ("base", "mean", "own", *gens)}
    out = {"command": " ".join(["python", "bench/function_loss_reference.py", *sys.argv[1:]]),
           "k": args.k, "tasks": len(chosen), "examples_per_task": args.examples, "max_len": args.max_len,
           "mean_nll_per_answer_token": avg, "per_task": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    print(avg)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
