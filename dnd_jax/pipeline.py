"""The DnD experiment pipeline (library; the command line is ``python -m dnd_jax.experiment``).

1. collect the zoo (resumable);
2. for each held-out task T in ``config.experiment.holdouts``: train a generator on the other
   tasks, generate T's adapter from a sample of T's unscored, unlabeled prompts
   (:func:`plan.condition_prompts`), and evaluate it on T's test split against every baseline;
3. cross-domain (``config.experiment.cross_domain``, e.g. SciQ): a generator trained on all the
   commonsense tasks generates for the new domain.

Every stage is resumable (zoo and generator checkpoints, adapters written atomically, evaluation
results cached), so a killed run restarts without redoing finished stages. Results go to
``W/results/`` and, with ``--docs``, to ``docs/results/``, with ``experiment_stages.json`` (every
stage's wall time over its runs and the process's peak RSS by then).
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

from dnd_jax import assets, base_model, collection, locking, plan, zoo
from dnd_jax.errors import InputError

# One definition of a target's training tasks and output root: dnd_jax.plan (re-exported here).
generator_config = plan.generator_config
training_tasks = plan.target_training_tasks
output_root = plan.output_root


def _stage_log(root: Path, name: str, seconds: float) -> None:
    """Accumulate a stage's wall time over runs (a resumed stage adds only what it still did) and the
    peak RSS of the processes that ran it (this one's, or a child's if larger; Linux reports KiB)."""
    root.mkdir(parents=True, exist_ok=True)
    with locking.file_lock(root / ".experiment_stages.lock"):  # experiment shards add to one file
        _stage_log_locked(root / "experiment_stages.json", name, seconds)


def _stage_log_locked(path: Path, name: str, seconds: float) -> None:
    stages = json.loads(path.read_text()) if path.is_file() else {}
    runs = stages.get(name, {}).get("runs", [stages[name]["wall_s"]] if name in stages else []) + [round(seconds, 2)]
    rss_kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    peak = max(stages.get(name, {}).get("peak_rss_gb", 0.0), round(rss_kib * 1024 / 1e9, 2))
    stages[name] = {"wall_s": round(sum(runs), 2), "runs": runs, "peak_rss_gb": peak}
    assets.write_json_atomic(path, stages)


def run_target(config, workdir: Path, target: str) -> dict:
    """Train (or resume) the generator for ``target``, generate its adapter, evaluate everything."""
    from dnd_jax import evaluation

    root = output_root(config, workdir)
    gen_dir = train_generator(config, workdir, target)
    adapter_dir = root / "adapters" / f"dnd_{target}"
    gen_timing = _generate_to(config, gen_dir, (target,), adapter_dir)  # never from the scored questions

    t0 = time.perf_counter()
    result = evaluation.evaluate_target(
        config, workdir, target, training_tasks=training_tasks(config, target), dnd_adapter=adapter_dir,
        out_dir=root / "results" / target,
    )
    _stage_log(root, f"evaluate/{target}", time.perf_counter() - t0)
    result["speed"] = speed_entry(zoo.task_manifest(workdir, target), gen_timing)
    return result


def train_generator(config, workdir: Path, target: str) -> Path:
    """Train (or resume, or find trained) held-out ``target``'s generator; its folder."""
    from dnd_jax import trainer

    root = output_root(config, workdir)
    gen_dir = root / "generators" / target
    t0 = time.perf_counter()
    trainer.train_and_evaluate(generator_config(config, target), gen_dir)
    _stage_log(root, f"train/{target}", time.perf_counter() - t0)
    return gen_dir


def speed_entry(oracle_manifest: dict, gen_timing: dict) -> dict:
    """Generating the adapter against training the target's oracle LoRA, in wall time and, where both
    recorded it, in CPU time (which other jobs on the same cores do not inflate; zoos collected before
    CPU time was recorded have only the wall)."""
    oracle_s = oracle_manifest["train_wall_time_s"]
    entry = {"generate_wall_s": gen_timing["wall_s"], "oracle_train_wall_s": oracle_s,
             "speedup": oracle_s / max(gen_timing["wall_s"], 1e-9), **gen_timing}
    oracle_cpu, gen_cpu = oracle_manifest.get("train_cpu_time_s"), gen_timing.get("cpu_s")
    if oracle_cpu is not None and gen_cpu is not None:
        entry.update(generate_cpu_s=gen_cpu, oracle_train_cpu_s=oracle_cpu,
                     oracle_torch_threads=oracle_manifest.get("torch_threads"),
                     speedup_cpu=oracle_cpu / max(gen_cpu, 1e-9))
    return entry


def run(config, workdir: str | Path, only: list[str] | None = None, docs: str = "", shard: str | None = None,
        train_only: bool = False) -> dict:
    """Every stage for every target (or ``only`` these), holding ``workdir``'s lock throughout.

    With ``train_only``, the zoo and the targets' generators only: no adapter, evaluation or report (to
    make the generator another experiment uses as a foreign one, or to train where evaluation cannot run).
    A later full run finds the generators trained.

    With ``shard="I/N"``, runs every N-th target from the I-th, beside the other shards (one process each,
    here or on other hosts sharing the filesystem): the zoo must be complete (a one-line error otherwise),
    no unsharded run may hold ``workdir``, and each target is locked while a process works on it (two
    processes on one target are refused, sharded or not). Shards write no report (each knows only its
    targets): an unsharded run afterwards finds every stage cached and writes it.
    """
    workdir = Path(workdir)
    targets = list(config.experiment.holdouts) + list(config.experiment.cross_domain)
    if only:
        unknown = [t for t in only if t not in targets]
        if unknown:
            raise InputError(f"--only {unknown} not among the experiment's targets {targets}")
        targets = [t for t in targets if t in only]
    for t in targets:
        if t not in config.tasks:
            raise InputError(f"experiment target '{t}' is not in config.tasks {tuple(config.tasks)}")
    _check_before_compute(config)
    part = collection.parse_shard(shard)
    if part is not None and docs:
        raise InputError("--docs is written by the run without --shard (it reads every shard's cached stages); "
                         "drop it from the shards")
    if train_only and docs:
        raise InputError("--train_only writes no report (it evaluates nothing): drop --docs")
    if part is not None:
        own = targets[part[0]::part[1]]
        locking.refuse_if_held(workdir, "an experiment shard")
        missing = collection.incomplete_tasks(config, workdir)
        if missing:
            raise InputError(f"--shard needs a complete zoo; {missing} not collected in {zoo.zoo_dir(workdir)} "
                             "(run dnd_jax.collect first, or the experiment without --shard)")
        if train_only:
            return _train_targets(config, workdir, own)
        results = _run_targets(config, workdir, own, docs, report=False)
        _help_other_shards(config, workdir, [t for t in reversed(targets) if t not in own])
        return results
    with locking.workdir_lock(workdir, "experiment"):
        t0 = time.perf_counter()
        collection.collect(config, workdir)
        _stage_log(workdir, "collect", time.perf_counter() - t0)
        if train_only:
            return _train_targets(config, workdir, targets)
        return _run_targets(config, workdir, targets, docs, report=True)


def _target_lock(config, workdir: Path, target: str):
    """The lock of one target's stages (generator, adapter, evaluation), taken by sharded and unsharded runs."""
    return locking.workdir_lock(output_root(config, workdir) / ".locks" / target, "experiment")


def _help_other_shards(config, workdir: Path, others: list[str]) -> None:
    """A shard done with its targets scores the other shards' baselines (each target's last evaluation first,
    each from its last system back), so it does not sit idle while a longer target runs: every cache entry
    is computed under its own lock, entries their owner holds are left to it, and the owner waits for the
    ones held here (:func:`dnd_jax.evaluation.help_evaluate`). The generated adapters stay their owners'."""
    import traceback

    from dnd_jax import evaluation

    for target in others:
        train = training_tasks(config, target)
        jobs = [(extra, target) for extra in reversed(config.experiment.get("also_evaluate", {}).get(target, ()))]
        for task, oracle in [*jobs, (target, None)]:
            try:
                n = evaluation.help_evaluate(config, workdir, task, training_tasks=train, oracle_task=oracle)
            except Exception:  # noqa: BLE001 - the owner scores whatever is left; this shard's own targets are done
                traceback.print_exc()
                print(f"[experiment] helping with {task} failed (above); left to the shard that owns {target}",
                      flush=True)
                continue
            print(f"[experiment] helped with {task} (target {target}): {n} cache entries scored here", flush=True)


def _train_targets(config, workdir: Path, targets: list[str]) -> dict:
    """``run(train_only=True)``: each target's generator (under the target's lock), nothing else."""
    out = {"targets": {}}
    for target in targets:
        with _target_lock(config, workdir, target):
            out["targets"][target] = {"generator": str(train_generator(config, workdir, target))}
    return out


def _run_targets(config, workdir: Path, targets: list[str], docs: str, report: bool) -> dict:
    results = {"config": json.loads(config.to_json_best_effort()),
               "base_model": base_model.resolve(config.base_model, workdir).to_dict(), "targets": {}}

    def write() -> None:
        if report:
            write_report(results, output_root(config, workdir) / "results", docs)

    for target in targets:
        with _target_lock(config, workdir, target):
            results["targets"][target] = run_target(config, workdir, target)
            write()
            for extra in config.experiment.get("also_evaluate", {}).get(target, ()):
                results["targets"][extra] = run_also_evaluate(config, workdir, target, extra)
                write()
            for name, gen_dir in config.experiment.get("foreign_generators", {}).items():
                results["targets"][target].setdefault("foreign", {})[name] = run_foreign_generator(
                    config, workdir, target, name, gen_dir)
                write()
    for ftarget, source in config.experiment.get("foreign_targets", {}).items():
        if source in targets:
            with _target_lock(config, workdir, f"{ftarget}<-{source}"):
                results["targets"][f"{ftarget}<-{source}"] = run_foreign_target(config, workdir, ftarget, source)
            write()
    if not report:
        print(f"[experiment] shard done: {targets}; run the experiment without --shard to write the report "
              "(every stage is cached)")
    return results


def _check_before_compute(config) -> None:
    """Evaluation-only and cross-domain targets name registered tasks and held-out sources, and the metrics
    exist (before compute)."""
    from dnd_jax import tasks

    holdouts = tuple(config.experiment.holdouts) + tuple(config.experiment.cross_domain)
    for target, extras in config.experiment.get("also_evaluate", {}).items():
        if target not in holdouts:
            raise InputError(f"experiment.also_evaluate: '{target}' is not a held-out target {holdouts}")
        for e in extras:
            tasks.get_task(e)
    for ftarget, source in config.experiment.get("foreign_targets", {}).items():
        tasks.get_task(ftarget)
        if source not in holdouts:
            raise InputError(f"experiment.foreign_targets: '{source}' is not a held-out target {holdouts}")
    from dnd_jax.evaluation import METRICS

    for key in ("metrics", "training_lora_metrics"):  # a typo found now, not after hours of zoo and training
        unknown = [m for m in config.eval.get(key, ()) if m not in METRICS]
        if unknown:
            raise InputError(f"config.eval.{key}: unknown metric(s) {unknown}; use {list(METRICS)}")


def _generate_to(config, gen_dir: Path, prompt_tasks: tuple[str, ...], adapter_dir: Path) -> dict:
    """The adapter of generator ``gen_dir`` from the unscored prompts (:func:`plan.condition_prompts`) of the
    first of ``prompt_tasks`` that has enough of them, and its timings (wall and CPU seconds); skipped if
    already written (the timings file is written last, so an adapter killed before it is made again)."""
    from dnd_jax import generator
    from dnd_jax.errors import ConfigError

    timing_path = adapter_dir / "dnd_generation_timing.json"
    if not timing_path.is_file():
        wall0, cpu0 = time.perf_counter(), time.process_time()
        prompts, source, errors = None, None, []
        for task in prompt_tasks:
            try:
                prompts, source = plan.condition_prompts(config, task), task
                break
            except ConfigError as e:
                errors.append(str(e))
        if prompts is None:
            raise ConfigError("; ".join(errors))
        gen = generator.Generator.load(gen_dir)
        timings = {"load_s": gen.load_time_s, "conditions_from": source}
        adapter = gen.generate_many([prompts], seed=int(config.generate.seed), timings=timings)[0]
        t1 = time.perf_counter()
        adapter.save(adapter_dir, overwrite=True)  # replaces only an adapter folder (never other files)
        timings["write_s"] = time.perf_counter() - t1
        timings["wall_s"] = time.perf_counter() - wall0
        timings["cpu_s"] = time.process_time() - cpu0
        assets.write_json_atomic(timing_path, timings)
    return json.loads(timing_path.read_text())


def run_foreign_generator(config, workdir: Path, target: str, name: str, gen_dir: str) -> dict:
    """Cross-domain: another experiment's generator (e.g. the commonsense one) makes an adapter from
    ``target``'s prompts; it is evaluated next to this domain's DnD adapter and the base model."""
    from dnd_jax import checkpoint, evaluation

    progress = checkpoint.training_progress(gen_dir)
    if progress is None or progress[0] < progress[1]:
        # Absent, or still being trained by another process: an adapter from a partial generator would be
        # cached as this row's for good. Skipped now; a later run (the report run) fills the row in.
        state = "not found" if progress is None else f"still training (step {progress[0]} of {progress[1]})"
        print(f"[experiment] foreign generator '{name}' at {gen_dir} {state}: skipped (run its experiment first, "
              f"or only that generator: experiment --train_only --only {Path(gen_dir).name})")
        return {"skipped": f"generator at {gen_dir} {state}"}
    root = output_root(config, workdir)
    adapter_dir = root / "adapters" / f"dnd_{target}_from_{name}"
    timing = _generate_to(config, Path(gen_dir), (target,), adapter_dir)
    report = evaluation.run(config, workdir, target, adapters=[f"dnd={root / 'adapters' / f'dnd_{target}'}",
                                                             f"dnd_from_{name}={adapter_dir}"],
                          baseline_names=["base"], out_dir=root / "results" / f"{target}_from_{name}")
    out = evaluation.summarize(report, f"dnd_from_{name}")  # paired with dnd and base
    return out | {"generator": str(gen_dir), "generate_wall_s": timing["wall_s"]}


def run_foreign_target(config, workdir: Path, ftarget: str, source: str) -> dict:
    """Cross-domain, the reverse: held-out ``source``'s generator (trained on this domain) makes an
    adapter for another domain's task ``ftarget`` from its prompts; evaluated against the base model."""
    from dnd_jax import evaluation

    root = output_root(config, workdir)
    adapter_dir = root / "adapters" / f"dnd_{ftarget}_from_{source}"
    timing = _generate_to(config, root / "generators" / source, (ftarget,), adapter_dir)
    result = evaluation.evaluate_target(config, workdir, ftarget, dnd_adapter=adapter_dir, baseline_names=["base"],
                                      out_dir=root / "results" / f"{ftarget}_from_{source}")
    return result | {"generator_of": source, "generate_wall_s": timing["wall_s"]}


def run_also_evaluate(config, workdir: Path, target: str, extra: str) -> dict:
    """``config.experiment.also_evaluate[target]``: evaluation-only tasks of held-out ``target`` (HumanEval
    and MBPP for a held-out Python). ``target``'s generator makes an adapter from ``extra``'s unscored
    prompts (or, where it has none left, ``target``'s); the baselines are ``target``'s (its zoo LoRA is
    the oracle)."""
    from dnd_jax import evaluation

    root = output_root(config, workdir)
    adapter_dir = root / "adapters" / f"dnd_{extra}_from_{target}"
    # HumanEval scores all its 164 problems: its conditions are then the held-out language's unscored prompts.
    timing = _generate_to(config, root / "generators" / target, (extra, target), adapter_dir)
    t0 = time.perf_counter()
    result = evaluation.evaluate_target(config, workdir, extra, training_tasks=training_tasks(config, target),
                                      dnd_adapter=adapter_dir, out_dir=root / "results" / extra, oracle_task=target)
    _stage_log(root, f"evaluate/{extra}", time.perf_counter() - t0)
    return result | {"held_out": target, "conditions_from": timing["conditions_from"]}


def write_report(results: dict, out_dir: Path, docs: str = "") -> None:
    from dnd_jax import report

    report.write(results, out_dir)
    if docs:
        report.write(results, Path(docs))
        stages = out_dir.parent / "experiment_stages.json"
        if stages.is_file():  # the stage times the README quotes, next to the results they produced
            assets.write_json_atomic(Path(docs) / "experiment_stages.json", json.loads(stages.read_text()))
