"""The task-scaling curve: does a generated adapter beat averaging, and how does that depend on K?

(Library: the protocol, its results and its report; the command line is ``python -m dnd_jax.scaling``.)

Protocol (``config.experiment``): every target in ``holdouts`` is held out at once; the training
pool of size K is the first K tasks of ``pool_order`` (a seeded permutation of every task outside
the targets' families), for each K in ``pool_sizes``, so pools are nested. For each K whose pool
(and every target) is collected in the zoo:

1. one generator is trained on pool K (``W/scaling/K<K>/generator``; resumable);
2. for every target, systems evaluated on its first ``eval.limit`` test questions (``scaling.metrics``,
   cloze by default):
   - ``dnd``: the adapter generated from the target's condition prompts, which are never scored
     questions (:func:`dnd_jax.plan.condition_prompts`);
   - ``merged``: the uniform average of pool K's final LoRAs;
   - ``simmerge``: the similarity-weighted merge: each pool LoRA weighted by the softmax over tasks of
     cos(mean MiniLM embedding of the target's condition prompts, of the task's zoo prompts) /
     ``scaling.temperature`` (label-free, like DnD; temperature -> inf is merged, -> 0 is nearest);
   - ``simmerge_tuned`` (``scaling.tuned_simmerge``, with the geometry; default generator only): the
     same cosines through ``(1 - mix) / K + mix * softmax(cos / T)`` with (T, mix) chosen on the pool
     alone by leave-one-out reconstruction of each pool task's LoRA from the others' in weight space
     (:func:`dnd_jax.baselines.tune_kernel`): label-free, tuned without the targets;
   - ``nearest``: the pool LoRA with the highest such cosine;
   - ``train_mean``: the per-question mean over the first ``scaling.mean_sample`` LoRAs of the
     pool order (a random sample shared by every pool; :func:`training_sample`), each evaluated on
     its own (the training-LoRA mean);
   - ``base`` and ``oracle`` (the target's own zoo LoRA), once per target;
3. paired bootstrap CIs for DnD - merged, DnD - simmerge, DnD - train_mean and DnD - base per
   (target, K), and their average over targets (questions resampled within each target);
4. the geometry of pool K (:func:`dnd_jax.weight_space.analyse`): the share of each target's offset from
   the pool mean that lies in the span of the pool's offsets (the reachable share), and the cosine
   of DnD's step with that offset;
5. ``span_oracle`` (``scaling.span_oracle``, with the geometry; default generator only): the affine
   combination of pool K's final LoRAs closest in weight space to the target's own LoRA (weights
   summing to 1, possibly negative; ``span_weights`` of :func:`dnd_jax.weight_space.analyse`),
   evaluated like the others and paired against ``merged``. It is fitted to the target's LoRA, so
   it is a ceiling for any method that combines the pool's LoRAs (DnD's outputs stay near their
   span), not a method: if it does not beat ``merged``, no weighting of these LoRAs will.

**Variants** (issue 13, item 5: pushing DnD above averaging): ``--variant=NAME`` with generator
overrides (e.g. ``--config.layout.normalization=per_element``) trains its own generator per K
(``W/scaling/K<K>/generator-NAME``), evaluates only its DnD adapters (the baselines' evaluations are
cached) and adds the paired comparison with the default generator's DnD (``dnd_default``). Results go
to ``W/scaling/variants/NAME`` (and ``DOCS/variants/NAME``), and ``DOCS/variants.md`` tables every
variant's overrides against the default and its mean DnD - X per K. A variant may change the
generator only: overrides of ``tasks``, ``zoo``, ``eval``, ``experiment``, ``scaling``, ``lora``,
``base_model`` or ``answer_format`` are refused.

Merges of many LoRAs are kept as recipes (:func:`dnd_jax.baselines.write_merge_spec`) and folded
into the base weights when evaluated. Every stage is resumable (generator checkpoints, atomic
adapters, cached evaluations); a pool that is not collected yet is skipped and reported.
Outputs: ``W/scaling/results.json`` and, with ``--docs``, ``results.json``, ``results.md`` and
``curve.png`` there.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dnd_jax import assets, base_model, baselines, locking, plan, report, scoring, task_pools, zoo
from dnd_jax.errors import InputError

SYSTEMS = ("base", "train_mean", "merged", "simmerge", "simmerge_tuned", "nearest", "dnd", "span_oracle", "oracle")
COMPARISONS = ("merged", "simmerge", "simmerge_tuned", "train_mean", "base")
CEILING = ("span_oracle", "merged")  # the best combination of the pool's LoRAs against their average, paired
VARIANT_COMPARISON = "dnd_default"  # a variant's DnD against the default generator's, paired
# Config sections that define the curve's data and baselines, not the generator: fixed across variants.
FIXED_SECTIONS = ("tasks", "zoo", "eval", "experiment", "scaling", "lora", "base_model", "answer_format", "holdout")
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def generator_settings(config) -> dict:
    """The config without the sections a variant may not change (what defines the generator)."""
    d = json.loads(config.to_json_best_effort())
    return {k: v for k, v in d.items() if k not in FIXED_SECTIONS}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(a: dict, b: dict) -> dict:
    """{dotted key: [a's value, b's value]} where two generator settings differ."""
    fa, fb = _flat(a), _flat(b)
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def check_variant(name: str, config, default_config) -> None:
    """A variant name is a plain folder name and its config differs from the default's only in the generator."""
    if not _VARIANT_NAME.match(name) or name == "default":
        raise InputError(f"--variant '{name}': use letters, digits, '_', '-', '.' (not 'default')")
    a = json.loads(default_config.to_json_best_effort())
    b = json.loads(config.to_json_best_effort())
    fixed = [k for k in FIXED_SECTIONS if a.get(k) != b.get(k)]
    if fixed:
        raise InputError(f"--variant '{name}' changes {fixed}: a variant may change the generator only "
                         f"(the baselines and the data must stay those of the curve)")


def settings(config) -> dict:
    """``config.scaling`` with defaults (metrics, similarity temperature, training-LoRA sample size)."""
    sc = config.get("scaling", None)
    sc = sc.to_dict() if sc is not None else {}
    return {"metrics": tuple(sc.get("metrics", ("cloze",))), "temperature": float(sc.get("temperature", 0.05)),
            "mean_sample": int(sc.get("mean_sample", 12)), "seed": int(sc.get("seed", 0)),
            "geometry": bool(sc.get("geometry", True)), "fit_sample": int(sc.get("fit_sample", 8)),
            "span_oracle": bool(sc.get("span_oracle", True)), "tuned_simmerge": bool(sc.get("tuned_simmerge", True))}


def pools(config) -> dict[int, list[str]]:
    exp = config.experiment
    order = list(exp.get("pool_order", ()))
    if not order:
        raise InputError("config.experiment.pool_order is empty: the scaling curve needs a training-task order")
    overlap = set(order) & set(exp.holdouts)
    if overlap:
        raise InputError(f"targets {sorted(overlap)} are also in the training pool order")
    return task_pools.nested_pools(order, exp.pool_sizes)


def is_collected(workdir: str | Path, task: str) -> bool:
    """True when the zoo holds the task's manifest and final checkpoint (collect finished it)."""
    try:
        zoo.task_manifest(workdir, task)
        zoo.final_checkpoint(workdir, task)
    except (FileNotFoundError, ValueError):
        return False
    return True


def pool_config(config, pool: Sequence[str]):
    """The generator config of one pool: tasks = targets + pool, every target held out."""
    cfg = config.copy_and_resolve_references()
    targets = tuple(config.experiment.holdouts)
    cfg.tasks = targets + tuple(pool)
    cfg.holdout = targets
    cfg.experiment.cross_domain = ()
    return cfg


def training_sample(pool: Sequence[str], k: int) -> list[str]:
    """The pool tasks whose LoRAs make the training-LoRA mean: the first ``k`` of the pool.

    Pools are prefixes of one seeded permutation, so its first ``k`` tasks are a uniform random sample
    of every pool of size >= k, and the same sample for all of them: each of those LoRAs is evaluated
    on a target once, whatever the number of pool sizes (the cache serves the rest).
    """
    return list(pool[:k])


def stratified_paired_bootstrap(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], n_boot: int = 1000,
                                seed: int = 0, level: float = 0.95) -> dict:
    """Mean over targets of the per-target mean difference ``a - b``, questions resampled per target."""
    if not pairs:
        return {"diff": float("nan"), "ci": [float("nan"), float("nan")], "targets": 0}
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in pairs]
    boots = np.zeros(n_boot)
    for d in diffs:
        boots += d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    boots /= len(diffs)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {"diff": float(np.mean([d.mean() for d in diffs])),
            "ci": [float(np.quantile(boots, lo)), float(np.quantile(boots, hi))], "targets": len(diffs)}


def evaluate_system(ref, adapter, target: str, metric: str, config, workdir: Path) -> dict:
    """``adapter`` (a folder, a merge recipe, or None for the base model) on ``target`` under the curve's
    evaluation settings, through the workdir's evaluation cache."""
    from dnd_jax import evaluation

    ec = config.eval
    return evaluation.evaluate_adapter(ref, adapter, target, metric, int(ec.limit), int(ec.batch_size),
                                     workdir / "eval_cache", max_new_tokens=int(ec.max_new_tokens),
                                     n_boot=int(ec.bootstrap), progress=False, packed=bool(ec.get("packed", False)))


def _mean_record(records: Sequence[dict], n_boot: int) -> dict:
    correct = np.mean([r["correct"] for r in records], axis=0)
    return {"correct": correct.tolist(), "accuracy": float(correct.mean()),
            "ci": list(scoring.bootstrap_ci(correct, n_boot)), "n": int(len(correct))}


def dnd_dir(workdir: Path, k: int, target: str, variant: str = "") -> Path:
    """Where pool ``k``'s generated adapter for ``target`` lives (per variant)."""
    name = f"dnd-{variant}_{target}" if variant else f"dnd_{target}"
    return workdir / "scaling" / f"K{k:03d}" / "adapters" / name


def run_pool(config, workdir: Path, k: int, pool: list[str], ref, embed, variant: str = "") -> dict:
    """Generator, adapters and every system's evaluation for pool size ``k``; returns per-target rows."""
    from dnd_jax import generator, trainer

    st = settings(config)
    targets = list(config.experiment.holdouts)
    root = workdir / "scaling" / f"K{k:03d}"
    gen_dir = root / (f"generator-{variant}" if variant else "generator")
    trainer.train_and_evaluate(pool_config(config, pool), gen_dir)
    train_s = trainer.train_seconds(gen_dir) or 0.0  # the logged steps: a resumed generator keeps its time

    finals = {t: zoo.final_checkpoint(workdir, t) for t in pool}
    merged_dir = baselines.write_merge_spec([finals[t] for t in pool], root / "adapters" / "merged")
    sample = training_sample(pool, st["mean_sample"])
    gen = None
    rows = {}
    for target in targets:
        prompts = plan.condition_prompts(config, target)
        dnd = dnd_dir(workdir, k, target, variant)
        if not (dnd / zoo.ADAPTER_WEIGHTS).is_file():
            gen = gen or generator.Generator.load(gen_dir)
            gen.generate_many([prompts], seed=int(config.generate.seed))[0].save(dnd, overwrite=True)
        weights, sims = baselines.similarity_weights(prompts, {t: zoo.prompts(workdir, t) for t in pool}, embed,
                                                     st["temperature"])
        sim_dir = baselines.write_merge_spec([finals[t] for t in pool], root / "adapters" / f"simmerge_{target}",
                                             [weights[t] for t in pool])
        nearest = max(sims, key=lambda t: (sims[t], t))
        systems = {"dnd": dnd, "merged": merged_dir, "simmerge": sim_dir, "nearest": finals[nearest]}
        default_dnd = dnd_dir(workdir, k, target)
        if variant and (default_dnd / zoo.ADAPTER_WEIGHTS).is_file():
            systems[VARIANT_COMPARISON] = default_dnd
        row = {"systems": {}, "nearest_task": nearest, "simmerge_effective_tasks": float(1 / np.sum(np.square(
            list(weights.values())))), "simmerge_top": sorted(weights, key=weights.get, reverse=True)[:5],
            "train_mean_sample": sample, "simmerge_weights": {t: float(weights[t]) for t in pool}}
        for metric in st["metrics"]:
            recs = {name: evaluate_system(ref, path, target, metric, config, workdir) for name, path in systems.items()}
            recs["train_mean"] = _mean_record([evaluate_system(ref, finals[t], target, metric, config, workdir)
                                               for t in sample], int(config.eval.bootstrap))
            for name, rec in recs.items():
                row["systems"].setdefault(name, {})[metric] = {
                    "acc": rec["accuracy"], "ci": rec["ci"], "n": rec["n"], "correct": rec["correct"]}
        rows[target] = row
    return {"k": k, "pool": pool, "targets": rows, "train_wall_s": round(train_s, 2), "generator": str(gen_dir)}


def _target_refs(config, workdir: Path, ref) -> dict:
    out = {}
    for target in config.experiment.holdouts:
        out[target] = {}
        for metric in settings(config)["metrics"]:
            base = evaluate_system(ref, None, target, metric, config, workdir)
            oracle = evaluate_system(ref, zoo.final_checkpoint(workdir, target), target, metric, config, workdir)
            out[target][metric] = {name: {"acc": r["accuracy"], "ci": r["ci"], "n": r["n"], "correct": r["correct"]}
                                   for name, r in (("base", base), ("oracle", oracle))}
    return out


def compare(results: dict, n_boot: int = 1000) -> dict:
    """Paired DnD - X per (target, K), and averaged over targets per K, for every metric."""
    out = {}
    for k, pres in results["pools"].items():
        per_k = {}
        # Targets in sorted order: the bootstrap draws them in sequence, and results.json (sorted keys)
        # gives a pool read back from disk that order, so a fresh and a reloaded pool get the same CIs.
        rows = dict(sorted(pres["targets"].items()))
        metrics = sorted({m for row in rows.values() for m in row["systems"]["dnd"]})
        for metric in metrics:
            entry = {"per_target": {}, "mean": {}}
            def record(target, row, name, metric=metric):
                return (row["systems"].get(name) or {}).get(metric) or results["refs"][target][metric].get(name)

            others = [o for o in (*COMPARISONS, VARIANT_COMPARISON)  # those every target of this pool has
                      if all(record(t, row, o) for t, row in rows.items())]
            for other in others:
                pairs = []
                for target, row in rows.items():
                    a = row["systems"]["dnd"][metric]["correct"]
                    b = record(target, row, other)["correct"]
                    entry["per_target"].setdefault(target, {})[other] = scoring.paired_bootstrap(a, b, n_boot)
                    pairs.append((a, b))
                entry["mean"][other] = stratified_paired_bootstrap(pairs, n_boot)
            a_name, b_name = CEILING
            if all(a_name in row["systems"] for row in rows.values()):
                pairs = [(row["systems"][a_name][metric]["correct"], row["systems"][b_name][metric]["correct"])
                         for row in rows.values()]
                entry["ceiling"] = {"per_target": {t: scoring.paired_bootstrap(a, b, n_boot) for t, (a, b) in
                                                   zip(rows, pairs, strict=True)},
                                    "mean": stratified_paired_bootstrap(pairs, n_boot)}
            per_k[metric] = entry
        out[k] = per_k
    return out


def run(config, workdir: str | Path, docs: str = "", only_sizes: Sequence[int] = (), variant: str = "",
        default_config=None) -> dict:
    """Every ready pool size (or ``only_sizes``), holding ``workdir``'s lock; writes the reports.

    ``variant``: a named generator variant (see the module doc); ``default_config`` is the config
    without the variant's overrides (checked: only generator settings may differ).
    """
    workdir = Path(workdir)
    if variant:
        check_variant(variant, config, default_config if default_config is not None else config)
    all_pools = pools(config)
    if only_sizes:
        unknown = sorted(set(only_sizes) - set(all_pools))
        if unknown:
            raise InputError(f"--sizes {unknown} are not among config.experiment.pool_sizes {sorted(all_pools)}")
    targets = list(config.experiment.holdouts)
    missing_targets = [t for t in targets if not is_collected(workdir, t)]
    if missing_targets:
        raise InputError(f"targets {missing_targets} are not collected in {zoo.zoo_dir(workdir)}; run dnd_jax.collect")
    out_dir = workdir / "scaling" / "variants" / variant if variant else workdir / "scaling"
    docs_dir = str(Path(docs) / "variants" / variant) if docs and variant else docs
    with locking.workdir_lock(workdir / "scaling", "scaling"):
        ref = base_model.resolve(config.base_model, workdir)
        # Pool prompts encoded once, across runs too (every K and variant compares against them).
        embed = baselines.memoized(baselines.minilm_embedder(),
                                   workdir / "embedding_cache" / baselines.minilm_cache_key())
        results = {"protocol": {"targets": targets, "pool_sizes": list(config.experiment.pool_sizes),
                                "pool_order": list(config.experiment.pool_order), **settings(config),
                                "eval_limit": int(config.eval.limit), "variant": variant,
                                "generator_settings": generator_settings(config),
                                "variant_overrides": settings_diff(generator_settings(default_config), generator_settings(
                                    config)) if variant and default_config is not None else {}},
                   "refs": _target_refs(config, workdir, ref), "pools": {}, "skipped": {}}
        # Pools measured earlier under this protocol: a --sizes run keeps the others in its report, and a
        # full run shows those it has not reached yet in its interim reports (replaced as it measures them).
        kept = previous_pools(out_dir, results["protocol"], all_pools)
        for k, pool in sorted(all_pools.items()):
            if only_sizes and k not in only_sizes:
                if k in kept:
                    results["pools"][k] = kept[k]
                continue
            missing = [t for t in pool if not is_collected(workdir, t)]
            if missing:
                results["skipped"][k] = f"{len(missing)} of {k} pool tasks not collected yet"
                continue
            results["pools"][k] = run_pool(config, workdir, k, pool, ref, embed, variant)
            if settings(config)["geometry"]:
                row = results["pools"][k]
                row["geometry"], row["fit"], pool_gram = pool_geometry(
                    config, workdir, k, pool, variant, {t: r["simmerge_weights"] for t, r in row["targets"].items()})
                if not variant:
                    evaluate_weightings(config, workdir, k, pool, row, ref, pool_gram, embed)
            interim = results | {"pools": dict(sorted(({kk: v for kk, v in kept.items() if kk > k}
                                                        | results["pools"]).items()))}
            interim["comparisons"] = compare(interim, int(config.eval.bootstrap))
            write(interim, out_dir, docs_dir)
        results["comparisons"] = compare(results, int(config.eval.bootstrap))
        write(results, out_dir, docs_dir)
        if docs and variant:
            write_variants_index(workdir, Path(docs))
    return results


def evaluate_weightings(config, workdir: Path, k: int, pool: list[str], row: dict, ref, pool_gram: np.ndarray,
                        embed) -> None:
    """Add ``span_oracle`` and ``simmerge_tuned`` (as enabled in ``config.scaling``) to every target's
    systems in ``row`` (pool K's results, with its geometry); ``pool_gram``: the pool's update Gram."""
    st = settings(config)
    finals = [zoo.final_checkpoint(workdir, t) for t in pool]
    adapters = workdir / "scaling" / f"K{k:03d}" / "adapters"
    tuned = st["tuned_simmerge"] and len(pool) >= 3  # leave-one-out needs two tasks left to weigh
    if tuned:
        pool_dirs = baselines.mean_directions(embed, [zoo.prompts(workdir, t) for t in pool])
        kernel = baselines.tune_kernel(pool_gram, pool_dirs @ pool_dirs.T)
        row["simmerge_tuned"] = kernel
    for target, trow in row["targets"].items():
        specs = {}
        if st["span_oracle"]:
            w = row["geometry"][target]["span_weights"]
            specs["span_oracle"] = baselines.write_merge_spec(finals, adapters / f"span_oracle_{target}",
                                                              [w[t] for t in pool], signed=True)
            trow["span_oracle_weight_l1"] = float(np.sum(np.abs(list(w.values()))))
        if tuned:
            sims = baselines.mean_directions(embed, [plan.condition_prompts(config, target)]) @ pool_dirs.T
            w = baselines.kernel_weights(sims[0], kernel["temperature"], kernel["mix"])
            specs["simmerge_tuned"] = baselines.write_merge_spec(finals, adapters / f"simmerge_tuned_{target}", w)
        for name, spec in specs.items():
            for metric in st["metrics"]:
                rec = evaluate_system(ref, spec, target, metric, config, workdir)
                trow["systems"].setdefault(name, {})[metric] = {
                    "acc": rec["accuracy"], "ci": rec["ci"], "n": rec["n"], "correct": rec["correct"]}


def fit_adapters(config, workdir: Path, k: int, pool: list[str], variant: str = "") -> dict[str, Path]:
    """Pool K's generator's adapters for its first ``scaling.fit_sample`` training tasks (pool order),
    each from the task's own zoo prompts (those it was trained on); generated once, then reused.
    """
    from dnd_jax import generator

    n = min(int(settings(config)["fit_sample"]), len(pool))
    gen_name = f"generator-{variant}" if variant else "generator"
    root = workdir / "scaling" / f"K{k:03d}"
    gen = None
    paths = {}
    for t in training_sample(pool, n) if n else []:
        path = root / "fit" / (f"{variant}_{t}" if variant else t)
        if not (path / zoo.ADAPTER_WEIGHTS).is_file():
            gen = gen or generator.Generator.load(root / gen_name)
            gen.generate_many([zoo.prompts(workdir, t)], seed=int(config.generate.seed))[0].save(path, overwrite=True)
        paths[t] = path
    return paths


def _step_stats(generated: dict) -> dict:
    return {"cos_to_offset": generated["cos_to_offset"], "step_rel_norm": generated["step_rel_norm"],
            "rel_err": generated["rel_err"]}


def previous_pools(out_dir: Path, protocol: dict, all_pools: dict[int, list[str]]) -> dict[int, dict]:
    """Pools measured by an earlier run into ``out_dir`` under the same protocol, by K.

    A run limited to ``--sizes`` keeps them in its report (a pool measured under another protocol, or
    with another task list, is dropped from it: its files stay in ``W/scaling/K<K>``).
    """
    from dnd_jax import trainer

    path = out_dir / "results.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())

    def same(p: dict) -> dict:  # generator settings added since a pool was measured read as their defaults
        return p | {"generator_settings": trainer.with_added_keys(p.get("generator_settings", {}))}

    if same(old.get("protocol") or {}) != same(json.loads(json.dumps(protocol))):
        return {}
    return {int(k): row for k, row in old.get("pools", {}).items()
            if int(k) in all_pools and row.get("pool") == all_pools[int(k)]}


def pool_geometry(config, workdir: Path, k: int, pool: list[str], variant: str = "",
                  simmerge_weights: dict[str, dict[str, float]] | None = None) -> tuple[dict, dict, np.ndarray]:
    """(geometry, in-sample fit, the pool's update Gram in pool order) of pool K, from one pass over
    its checkpoints.

    Geometry: the reachable share of each target's offset in pool K's span, and DnD's (and
    simmerge's) step direction. Steps are measured from the pool mean (the merged adapter):
    ``*_cos_to_offset`` is the cosine of a system's step with the target's own offset from that mean,
    ``*_step_rel_norm`` its length relative to the offset's, ``*_rel_err`` its squared distance to the
    target's LoRA relative to the merged adapter's (below 1: closer than merged).

    Fit (:func:`fit_adapters`): the generator's adapters for its own training tasks against their
    final LoRAs, measured the same way: ``cos_to_offset`` near 1 means the generator reproduces its
    training tasks, so a held-out gap is one of generalisation; near the held-out targets' cosine
    means it underfits its training set (longer training or a wider decoder are the levers).
    """
    from dnd_jax import weight_space
    from dnd_jax.weights import centering

    targets = list(config.experiment.holdouts)
    fit_paths = fit_adapters(config, workdir, k, pool, variant)
    # Targets first: the span curve's random subsets are drawn in this order, so the targets' figures
    # do not depend on the fit sample.
    res = weight_space.analyse(workdir, {t: pool for t in [*targets, *fit_paths]},
                               {"dnd": {t: dnd_dir(workdir, k, t, variant) for t in targets} | fit_paths},
                               checkpoints_per_task=1, subsets_per_size=1,
                               combinations={"simmerge": simmerge_weights} if simmerge_weights else None,
                               return_gram=True)
    idx = [res["tasks"].index(t) for t in pool]
    pool_gram = res["task_gram"][np.ix_(idx, idx)]
    geometry = {}
    for t in targets:
        r = res["targets"][t]
        geometry[t] = {"span_fraction": r["span_fraction"], "offset_rel_norm": r["offset_rel_norm"],
                       "span_weights": r["span_weights"]}
        for label, g in r["generated"].items():
            geometry[t] |= {f"{label}_{key}": v for key, v in _step_stats(g).items()}
    if not fit_paths:
        return geometry, {}, pool_gram
    per_task = {t: _step_stats(res["targets"][t]["generated"]["dnd"]) for t in fit_paths}
    # A similarity-centered generator's center for a training task's own prompts weighs that task itself
    # (it is in the bank), so its in-sample fit says little about the decoder: flagged, not hidden.
    fit = {"tasks": per_task, "mean_cos_to_offset": float(np.mean([v["cos_to_offset"] for v in per_task.values()])),
           "mean_rel_err": float(np.mean([v["rel_err"] for v in per_task.values()])),
           "self_centered": centering.settings(config)["mode"] == "similarity"}
    return geometry, fit, pool_gram


def zoo_status(config, workdir: str | Path) -> dict:
    """Which targets and pool tasks are collected, which pools are ready, and the measured unit costs."""
    workdir = Path(workdir)
    order = list(config.experiment.pool_order)
    targets = list(config.experiment.holdouts)
    done = {t: zoo.task_manifest(workdir, t) for t in targets + order if is_collected(workdir, t)}
    walls = [m["train_wall_time_s"] for m in done.values()]
    steps = [m["total_steps"] for m in done.values()]
    prefix = next((i for i, t in enumerate(order) if t not in done), len(order))
    return {"targets_collected": [t for t in targets if t in done], "pool_collected_prefix": prefix,
            "pool_tasks_collected": sum(t in done for t in order), "pool_size": len(order),
            "ready_pool_sizes": [k for k in config.experiment.pool_sizes
                                 if k <= prefix and len(done) >= len(targets)],
            "lora_step_wall_s": {"min": min(w / s for w, s in zip(walls, steps, strict=True)) if walls else None,
                                 "median": float(np.median([w / s for w, s in zip(walls, steps, strict=True)]))
                                 if walls else None},
            "task_train_wall_s": {"min": min(walls) if walls else None,
                                  "median": float(np.median(walls)) if walls else None,
                                  "max": max(walls) if walls else None},
            "tasks": {t: {"train_wall_time_s": round(m["train_wall_time_s"], 1), "final_loss": m["final_loss"],
                          "first_loss": m["first_loss"]} for t, m in done.items()}}


def status_markdown(st: dict) -> str:
    lines = ["# Many-task zoo: collection status", "",
             f"Targets collected: {len(st['targets_collected'])} of 8; pool tasks collected: "
             f"{st['pool_tasks_collected']} of {st['pool_size']} (first {st['pool_collected_prefix']} in pool order); "
             f"pools ready: {st['ready_pool_sizes'] or 'none'}.", ""]
    if st["tasks"]:
        c, w = st["lora_step_wall_s"], st["task_train_wall_s"]
        lines += [f"Unit costs measured on this machine while it was shared with other jobs: LoRA step "
                  f"{c['min']:.2f} s (min) / {c['median']:.2f} s (median); per task {w['min']:.0f} / {w['median']:.0f} / "
                  f"{w['max']:.0f} s (min/median/max LoRA training wall).", "",
                  "| task | train wall (s) | first loss | final loss |", "|---|---|---|---|"]
        for t, m in st["tasks"].items():
            lines.append(f"| {t} | {m['train_wall_time_s']} | {m['first_loss']:.3f} | {m['final_loss']:.3f} |")
    return "\n".join(lines) + "\n"


# --- reports --------------------------------------------------------------------------------------------


def _drop_vectors(obj):
    return report.drop_vectors(obj, ("correct",))


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def ci_cell(c: dict | None) -> str:
    """A paired difference with its CI, in points: ``+1.2 [-0.3, +2.5]`` (``–`` for none)."""
    return f"{_pct(c['diff'])} [{_pct(c['ci'][0])}, {_pct(c['ci'][1])}]" if c else "–"


def markdown(results: dict) -> str:
    p = results["protocol"]
    variant = p.get("variant", "")
    title = f"# Generator variant `{variant}` on the task-scaling curve" if variant else \
        "# Task-scaling curve: DnD against averaging as the number of training tasks grows"
    lines = [title, "",
             f"Targets (all held out at once): {', '.join(p['targets'])}. Nested training pools of K = "
             f"{', '.join(map(str, p['pool_sizes']))} tasks (seeded order). First {p['eval_limit']} test questions "
             f"per target; conditions are never scored questions. simmerge temperature {p['temperature']}; "
             f"train_mean over the first {p['mean_sample']} tasks of the pool order.", ""]
    if variant:
        lines += ["Overrides against the default generator: " + (", ".join(
            f"`{k}`: {a} -> {b}" for k, (a, b) in p.get("variant_overrides", {}).items()) or "none") +
            f". `DnD - {VARIANT_COMPARISON}` pairs this variant's DnD with the default generator's.", ""]
    comps = results.get("comparisons", {})
    for metric in p["metrics"]:
        others = [o for o in (*COMPARISONS, VARIANT_COMPARISON)
                  if any(o in comps.get(k, {}).get(metric, {}).get("mean", {}) for k in results["pools"])]
        ceiling = any("ceiling" in comps.get(k, {}).get(metric, {}) for k in results["pools"])
        ceil_head = [" - ".join(CEILING)] if ceiling else []
        lines += [f"## {metric}: DnD - X averaged over the targets (percentage points, 95% CI)", "",
                  "| K | " + " | ".join([f"DnD - {o}" for o in others] + ceil_head) + " | mean reachable share |",
                  "|---" * (len(others) + len(ceil_head) + 2) + "|"]
        for k in sorted(results["pools"], key=int):
            c = comps.get(k, {}).get(metric)
            if not c:
                continue
            cells = [ci_cell(c["mean"].get(o)) for o in others] + (
                [ci_cell(c.get("ceiling", {}).get("mean"))] if ceiling else [])
            geo = results["pools"][k].get("geometry")
            share = f"{100 * np.mean([g['span_fraction'] for g in geo.values()]):.1f}%" if geo else "–"
            lines.append(f"| {k} | " + " | ".join(cells) + f" | {share} |")
        if ceiling:
            lines += ["", "span_oracle: the affine combination of pool K's LoRAs closest in weight space to the "
                      "target's own LoRA (fitted with it: a ceiling for any weighting of these LoRAs, not a method)."]
        lines += ["", f"### {metric} accuracy (%) per target and K", "",
                  "| target | K | " + " | ".join(SYSTEMS) + " | DnD - merged | DnD - simmerge |",
                  "|---" * (len(SYSTEMS) + 4) + "|"]
        for k in sorted(results["pools"], key=int):
            rows = results["pools"][k]["targets"]
            for target, row in [(t, rows[t]) for t in p["targets"] if t in rows]:  # protocol order, every K
                accs = []
                for name in SYSTEMS:
                    e = row["systems"].get(name, {}).get(metric) or results["refs"][target][metric].get(name)
                    accs.append(f"{100 * e['acc']:.1f}" if e else "–")
                c = comps.get(k, {}).get(metric, {}).get("per_target", {}).get(target, {})
                diffs = [f"{_pct(c[o]['diff'])} [{_pct(c[o]['ci'][0])}, {_pct(c[o]['ci'][1])}]" if o in c else "–"
                         for o in ("merged", "simmerge")]
                lines.append(f"| {target} | {k} | " + " | ".join(accs) + " | " + " | ".join(diffs) + " |")
        lines.append("")
    lines += _geometry_lines(results)
    if results.get("skipped"):
        lines += ["Not yet run (zoo still collecting): " +
                  ", ".join(f"K={k} ({why})" for k, why in sorted(results["skipped"].items(), key=lambda x: int(x[0]))),
                  ""]
    return "\n".join(lines)


def _geometry_lines(results: dict) -> list[str]:
    """Weight-space view per K, averaged over targets: where each system's step from the pool mean goes."""
    ks = [k for k in sorted(results["pools"], key=int) if results["pools"][k].get("geometry")]
    if not ks:
        return []

    def mean(geo: dict, key: str, fmt: str) -> str:
        vals = [g[key] for g in geo.values() if key in g]
        return format(float(np.mean(vals)), fmt) if vals else "–"

    lines = ["## Geometry: each system's step from the pool mean (merged), averaged over targets", "",
             "Cosine of the step with the target's own offset from the pool mean; relative error = squared "
             "distance to the target's LoRA over the merged adapter's (below 1: closer than merged). In-sample: "
             "the same generator's adapters for its own first training tasks, from their zoo prompts "
             "(near 1: it fits its training set, so a held-out gap is one of generalisation).", "",
             "Step length: the step's norm relative to the target's offset (the ideal step has cos 1 and length 1; "
             "a step in a direction of cos c is closest to the target at length c).", "",
             "| K | reachable share | DnD cos | simmerge cos | DnD step length | simmerge step length | "
             "DnD rel. error | simmerge rel. error | DnD in-sample cos | in-sample rel. error |", "|---" * 10 + "|"]
    for k in ks:
        geo, fit = results["pools"][k]["geometry"], results["pools"][k].get("fit") or {}
        lines.append(f"| {k} | {100 * float(np.mean([g['span_fraction'] for g in geo.values()])):.1f}% | "
                     f"{mean(geo, 'dnd_cos_to_offset', '+.3f')} | {mean(geo, 'simmerge_cos_to_offset', '+.3f')} | "
                     f"{mean(geo, 'dnd_step_rel_norm', '.3f')} | {mean(geo, 'simmerge_step_rel_norm', '.3f')} | "
                     f"{mean(geo, 'dnd_rel_err', '.3f')} | {mean(geo, 'simmerge_rel_err', '.3f')} | "
                     + (f"{fit['mean_cos_to_offset']:+.3f}{'*' if fit.get('self_centered') else ''} | "
                        f"{fit['mean_rel_err']:.3f} |" if fit else "– | – |"))
    if any((results["pools"][k].get("fit") or {}).get("self_centered") for k in ks):
        lines += ["", "\\* similarity-centered generator: a training task's own prompts center it on (mostly) "
                  "that task itself, so the in-sample fit is near-trivially high."]
    return lines + [""]


def plot(results: dict, path: Path, metric: str = "cloze") -> None:
    plt = report.pyplot()
    comps = results.get("comparisons", {})
    ks = sorted(int(k) for k in results["pools"] if metric in comps.get(k, {}))
    if not ks:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, other in zip(axes[:2], ("merged", "simmerge"), strict=True):
        for target in results["protocol"]["targets"]:
            ys = [100 * comps[k][metric]["per_target"][target][other]["diff"] for k in ks]
            ax.plot(ks, ys, marker=".", alpha=0.45, label=target)
        mean = [comps[k][metric]["mean"][other] for k in ks]
        ax.errorbar(ks, [100 * m["diff"] for m in mean],
                    yerr=[[100 * (m["diff"] - m["ci"][0]) for m in mean], [100 * (m["ci"][1] - m["diff"]) for m in mean]],
                    color="black", lw=2.2, capsize=3, label="mean (95% CI)")
        ceil_ks = [k for k in ks if "ceiling" in comps[k][metric]]
        if other == CEILING[1] and ceil_ks:
            ax.plot(ceil_ks, [100 * comps[k][metric]["ceiling"]["mean"]["diff"] for k in ceil_ks], color="black",
                    ls="--", marker="s", label=f"{CEILING[0]} - {CEILING[1]} (ceiling)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tasks K")
        ax.set_ylabel(f"DnD - {other} ({metric}, points)")
        ax.set_title(f"DnD - {other}")
    axes[0].legend(fontsize=7, ncol=2)
    geo_ks = [k for k in ks if results["pools"][k].get("geometry")]
    for target in results["protocol"]["targets"]:
        if geo_ks:
            axes[2].plot(geo_ks, [100 * results["pools"][k]["geometry"][target]["span_fraction"] for k in geo_ks],
                         marker=".", label=target)
    axes[2].set_xscale("log")
    axes[2].set_xlabel("training tasks K")
    axes[2].set_ylabel("reachable share of the target's offset (%)")
    axes[2].set_title("geometry: span of the pool's offsets")
    fig.tight_layout()
    report.save_figure(fig, path, dpi=120)


def write_variants_index(workdir: Path, docs: Path) -> None:
    """``DOCS/variants.md``: every variant's overrides and mean DnD - X per K, next to the default's."""
    rows, series = [], {}
    runs = [("default", workdir / "scaling" / "results.json")]
    runs += [(d.name, d / "results.json") for d in sorted((workdir / "scaling" / "variants").glob("*"))]
    for name, path in runs:
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        metric = res["protocol"]["metrics"][0]
        overrides = ", ".join(f"`{k}`={b}" for k, (_, b) in res["protocol"].get("variant_overrides", {}).items())
        for k in sorted(res.get("comparisons", {}), key=int):
            mean = res["comparisons"][k].get(metric, {}).get("mean", {})
            dnd = np.mean([row["systems"]["dnd"][metric]["acc"] for row in res["pools"][k]["targets"].values()])
            series.setdefault(name, []).append((int(k), mean.get("merged"), mean.get("simmerge")))
            rows.append(f"| {name} | {overrides or '–'} | {k} | {100 * dnd:.1f} | {ci_cell(mean.get('merged'))} | "
                        f"{ci_cell(mean.get('simmerge'))} | {ci_cell(mean.get(VARIANT_COMPARISON))} | "
                        f"{res['pools'][k].get('train_wall_s', float('nan')):.0f} |")
    lines = ["# Generator variants on the scaling curve (issue 13, item 5)", "",
             "Each variant changes only the generator (same zoo, pools, targets, conditions and cached baselines); "
             "differences are mean over the 8 targets in points with 95% stratified paired bootstrap CIs. "
             f"`DnD - {VARIANT_COMPARISON}`: the variant's DnD against the default generator's, question by question. "
             "Generator train steps: the seconds of its logged training steps (checkpoint saves included; "
             "validation and start-up not).",
             "", "| variant | overrides | K | mean DnD acc (%) | DnD - merged | DnD - simmerge | "
             f"DnD - {VARIANT_COMPARISON} | generator train steps (s) |", "|---|---|---|---|---|---|---|---|"]
    lines[2] += " The picture: [variants.png](variants.png)."
    assets.write_text_atomic(docs / "variants.md", "\n".join(lines + rows) + "\n")
    plot_variants(series, docs / "variants.png")


def plot_variants(series: dict[str, list[tuple[int, dict | None, dict | None]]], path: Path) -> None:
    """DnD - merged and DnD - simmerge against K (log axis), one line with 95% CIs per generator variant.

    ``series``: variant name -> ``(K, mean merged comparison, mean simmerge comparison)`` per measured K.
    Variants are nudged apart along K (a few percent) so their error bars do not overlap.
    """
    if not series:
        return
    plt = report.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, (col, other) in zip(axes, ((1, "merged"), (2, "simmerge")), strict=True):
        for i, (name, points) in enumerate(sorted(series.items(), key=lambda kv: kv[0] != "default")):
            pts = sorted(((p[0], p[col]) for p in points if p[col]), key=lambda kc: kc[0])
            if not pts:
                continue
            ks = [k * 1.04 ** i for k, _ in pts]
            d = [100 * c["diff"] for _, c in pts]
            err = [[100 * (c["diff"] - c["ci"][0]) for _, c in pts], [100 * (c["ci"][1] - c["diff"]) for _, c in pts]]
            ax.errorbar(ks, d, yerr=err, marker="o", capsize=3, label=name,
                        lw=2.2 if name == "default" else 1.4, ls="-" if len(pts) > 1 else "none")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tasks K")
        ax.set_ylabel(f"DnD - {other} (points, mean of targets)")
        ax.set_title(f"DnD - {other}, by generator variant (95% CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, path, dpi=120)


def write(results: dict, out_dir: Path, docs: str = "") -> None:
    """results.json (per-example vectors only in ``out_dir``), results.md and curve.png, in ``out_dir`` and
    ``docs``; the figure is drawn once and copied."""
    for d in [out_dir] + ([Path(docs)] if docs else []):
        d.mkdir(parents=True, exist_ok=True)
        assets.write_json_atomic(d / "results.json", _drop_vectors(results) if d != out_dir else results)
        assets.write_text_atomic(d / "results.md", markdown(results))
        if d == out_dir:
            plot(results, d / "curve.png", results["protocol"]["metrics"][0])
        else:
            assets.write_bytes_atomic(d / "curve.png", (out_dir / "curve.png").read_bytes())
