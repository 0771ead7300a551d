"""How close can a label-free *weighting* of the pool's LoRAs get to a held-out target's LoRA?

Weight-space headroom behind the scaling curve (issue 13, item 5), no evaluation: for every pool
size K (the curve's nested pools, restricted to the tasks collected so far) and every target h,
the squared distance ``|sum_t w_t dW_t - dW_h|^2`` relative to the uniform merge's (below 1: closer
than merged), for weightings w of the pool's final LoRAs:

- ``simmerge``: softmax over tasks of cos(mean MiniLM prompt embeddings) / 0.05 (the curve's);
- ``kernel``: ``(1 - lam) / K + lam * softmax(cos / T)`` with (T, lam) chosen on the pool alone by
  leave-one-out (:func:`dnd_jax.baselines.tune_kernel`; the curve's ``simmerge_tuned``);
- ``metric_r<R>``: the same with a learned rank-R correction of the embedding metric,
  ``cos_M(a, b) = a^T (I + U V^T) b``, fitted by the same leave-one-out loss (Adam, weight decay);
- ``span_oracle``: the best affine weighting, fitted to dW_h itself (``1 - reachable share``): the
  ceiling for any weighting, not a method.

Inner products come from the LoRA factors (:func:`dnd_jax.weights.lora.update_gram`). Condition
prompts of the targets are the curve's (never scored questions); pool tasks use their zoo prompts.

    python bench/weighting_headroom.py --workdir workdir/many --out docs/scaling/headroom
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: configs/, dnd_jax/

from configs import smollm2_many  # noqa: E402
from dnd_jax import assets, baselines, plan, scaling_curve, weight_space, zoo  # noqa: E402
from dnd_jax.weights.lora import load_factors, update_gram  # noqa: E402


def learned_metric(gram: np.ndarray, emb: np.ndarray, pool: np.ndarray, targets: np.ndarray, rank: int,
                   weight_decay: float, steps: int = 400, seed: int = 0) -> tuple[float, np.ndarray]:
    """Leave-one-out fit of ``softmax(a^T (I + U V^T) b / T)`` mixed with uniform; relative distances of the targets."""
    import jax
    import jax.numpy as jnp
    import optax

    with jax.enable_x64(True):
        k = len(pool)
        g = jnp.asarray(gram[np.ix_(pool, pool)])
        ep, et = jnp.asarray(emb[pool]), jnp.asarray(emb[targets])
        eye = jnp.eye(emb.shape[1])
        off = 1.0 - jnp.eye(k)

        def weights(p, eq, mask):
            s = (eq @ (eye + p["U"] @ p["V"].T) @ ep.T) / p["T"]
            s = jnp.where(mask, -jnp.inf, s) if mask is not None else s
            n = k - 1 if mask is not None else k
            base = off / n if mask is not None else jnp.full((eq.shape[0], k), 1.0 / k)
            return (1 - p["lam"]) * base + p["lam"] * jax.nn.softmax(s, axis=1)

        def d2(w, cross, self_sq):
            return jnp.einsum("ij,jk,ik->i", w, g, w) - 2 * jnp.einsum("ij,ij->i", w, cross) + self_sq

        def loss(p):
            w = weights(p, ep, jnp.eye(k, dtype=bool))
            rel = d2(w, g, jnp.diag(g)) / d2(off / (k - 1), g, jnp.diag(g))
            return jnp.mean(rel) + weight_decay * (jnp.sum(p["U"] ** 2) + jnp.sum(p["V"] ** 2))

        key = jax.random.PRNGKey(seed)
        d = emb.shape[1]
        p = {"U": 0.01 * jax.random.normal(key, (d, rank)), "V": 0.01 * jax.random.normal(jax.random.fold_in(key, 1),
                                                                                          (d, rank)),
             "T": jnp.asarray(0.2), "lam": jnp.asarray(1.0)}
        opt = optax.adam(1e-2)
        state = opt.init(p)

        @jax.jit
        def step(p, state):
            val, grads = jax.value_and_grad(loss)(p)
            upd, state = opt.update(grads, state, p)
            p = optax.apply_updates(p, upd)
            return {**p, "T": jnp.clip(p["T"], 0.01, 10.0), "lam": jnp.clip(p["lam"], 0.0, 1.0)}, state, val

        for _ in range(steps):
            p, state, val = step(p, state)
        w = np.asarray(weights(p, et, None))
    return float(val), np.array([baselines.relative_distance(gram, pool, h, w[i])[0] for i, h in enumerate(targets)])


def span_oracle(gram: np.ndarray, pool: np.ndarray, h: int) -> float:
    """``1 -`` the share of the target's offset from the pool mean inside the span of the pool's offsets."""
    space = weight_space.Space(gram)
    m = space.point(list(pool))
    return 1.0 - space.span_fraction(space.point(int(h)) - m, [space.point(int(t)) - m for t in pool])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ranks", default="8,32", help="learned-metric ranks")
    ap.add_argument("--weight_decay", type=float, default=1e-3)
    args = ap.parse_args()

    config = smollm2_many.get_config()
    pools = scaling_curve.pools(config)
    order = pools[max(pools)]
    done = [t for t in order if scaling_curve.is_collected(args.workdir, t)]
    targets = list(config.experiment.holdouts)
    names = done + targets
    t0 = time.perf_counter()
    gram = update_gram([load_factors(zoo.final_checkpoint(args.workdir, t)) for t in names])
    embed = baselines.memoized(baselines.minilm_embedder())
    emb = np.stack([baselines._mean_direction(embed, list(zoo.prompts(args.workdir, t))[:256]) for t in done] +
                   [baselines._mean_direction(embed, list(plan.condition_prompts(config, t))[:256]) for t in targets])
    setup_s = time.perf_counter() - t0
    sim = emb @ emb.T
    tidx = np.arange(len(done), len(names))
    sizes = sorted({k for k in pools if k <= len(done)} | {len(done)})
    rows = []
    for k in sizes:
        # the first k collected tasks of the pool order (= the curve's pool K while the prefix is collected)
        pool = np.arange(k)
        best = baselines.tune_kernel(gram[np.ix_(pool, pool)], sim[np.ix_(pool, pool)])
        temp, lam = best["temperature"], best["mix"]
        row = {"k": k, "kernel_T": temp, "kernel_lam": lam, "kernel_loo": best["loo_rel"], "targets": {}}
        per = {"simmerge": [baselines.relative_distance(gram, pool, h, baselines.kernel_weights(sim[h, pool], 0.05, 1.0))[0]
                            for h in tidx],
               "kernel": [baselines.relative_distance(gram, pool, h, baselines.kernel_weights(sim[h, pool], temp, lam))[0] for h in tidx],
               "span_oracle": [span_oracle(gram, pool, h) for h in tidx]}
        for rank in [int(r) for r in args.ranks.split(",") if r]:
            loo_m, rel = learned_metric(gram, emb, pool, tidx, rank, args.weight_decay)
            per[f"metric_r{rank}"] = rel.tolist()
            row[f"metric_r{rank}_loo"] = loo_m
        for name, vals in per.items():
            row["targets"][name] = dict(zip(targets, map(float, vals), strict=True))
            row[f"{name}_mean"] = float(np.mean(vals))
        rows.append(row)
        print(f"K={k}: " + ", ".join(f"{n} {row[f'{n}_mean']:.3f}" for n in per), flush=True)
    out = Path(args.out)
    res = {"collected_pool_tasks": len(done), "pool_tasks": len(order), "setup_s": round(setup_s, 1),
           "grid": {"T": baselines.KERNEL_TEMPERATURES, "lam": baselines.KERNEL_MIXES},
           "weight_decay": args.weight_decay, "rows": rows}
    assets.write_json_atomic(out / "results.json", res)
    names_cols = [n for n in rows[0]["targets"]]
    lines = ["# Weight-space headroom of label-free weightings of the pool's LoRAs", "",
             f"`python bench/weighting_headroom.py --workdir workdir/many --out {args.out}` "
             f"({len(done)} of {len(order)} pool tasks collected; pool K = the first K collected tasks of the "
             "curve's order). Mean over the 8 targets of the squared distance to the target's own LoRA, "
             "relative to the uniform merge's (below 1: closer than merged). `kernel`: similarity softmax "
             "mixed with uniform, (T, lam) chosen by leave-one-out on the pool; `metric_rR`: a learned rank-R "
             "metric, same loss; `span_oracle`: fitted to the target's LoRA (a ceiling).", "",
             "| K | " + " | ".join(names_cols) + " | kernel (T, lam) | kernel LOO on the pool |",
             "|---" * (len(names_cols) + 3) + "|"]
    for r in rows:
        lines.append(f"| {r['k']} | " + " | ".join(f"{r[f'{n}_mean']:.3f}" for n in names_cols) +
                     f" | ({r['kernel_T']}, {r['kernel_lam']}) | {r['kernel_loo']:.3f} |")
    last = rows[-1]
    lines += ["", f"Per target at K = {last['k']}:", "", "| target | " + " | ".join(names_cols) + " |",
              "|---" * (len(names_cols) + 1) + "|"]
    for t in targets:
        lines.append(f"| {t} | " + " | ".join(f"{last['targets'][n][t]:.3f}" for n in names_cols) + " |")
    assets.write_text_atomic(out / "README.md", "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
