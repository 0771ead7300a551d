"""Evaluating adapters and baselines on a task (library; the command line is ``python -m dnd_jax.evaluate``).

    python -m dnd_jax.evaluate --config configs/tiny.py --workdir W --task piqa \\
        [--adapter [NAME=]DIR ...] [--baselines base,training_loras,merged,nearest,oracle] \\
        [--limit K] [--metrics cloze,mc] [--split test] [--out DIR]

Every (system, metric) gives an accuracy with its n and a 95% bootstrap CI over examples, and keeps
its per-example correctness so systems are compared with paired bootstraps. Results are cached in
``W/eval_cache/`` by (base model sha, adapter content hash, task, split, metric, limit, examples),
so a rerun costs nothing. Writes ``results.json``, ``results.md`` and ``results.png`` (:func:`dnd_jax.report.write_target_report`)
into ``out_dir`` (default ``W/eval/<task>/``).

The base model is loaded once; each adapter is merged (``merge_and_unload``, exact) into a fresh
deep copy of the base weights, so no adapter can leak into the next evaluation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dnd_jax import assets, base_model, baselines, locking, scoring, task_files, tasks, zoo
from dnd_jax import report as report_lib
from dnd_jax.errors import InputError, LockedError, MissingError, OutputError
from dnd_jax.report import METRIC_SCALE, METRIC_TITLE, metric_scale  # noqa: F401 (display: dnd_jax.report)

METRICS = ("cloze", "mc", "bpb", "exact_match", "pass@1")
HELD_MODES = ("wait", "skip")  # what to do with a cache entry another process is computing
ENTRY_POLL_S = 30.0  # how often a waiting process looks again at such an entry
_sleep = time.sleep  # the wait between those looks (tests replace it)
CHOICE_METRICS = ("cloze", "mc")  # choice tasks; the others are for generative tasks (dnd_jax.generative)
# bpb keeps *minus* bits per byte as its per-example "correct" vector, so higher is better for every metric
# (means, best-of, paired p-values); displays multiply by this scale (percent for accuracies).


def applicable_metrics(task: str, metrics: Sequence[str]) -> list[str]:
    """The metrics of ``metrics`` that apply to ``task`` (choice: cloze/mc; generative: bpb, and exact
    match or pass@1 where the task has answers or tests)."""
    if not tasks.is_generative(task):
        return [m for m in metrics if m in CHOICE_METRICS]
    from dnd_jax.task_sources import math_code

    ok = {"bpb"} | ({"exact_match"} if task in math_code.EXACT_MATCH_TASKS else set()) | (
        {"pass@1"} if task in math_code.PASS_AT_1_TASKS else set())
    return [m for m in metrics if m in ok]
SCORING_VERSION = 1  # bump when a change to scoring.py changes numbers (invalidates the cache)
_VOLATILE_CONFIG_KEYS = ("base_model_name_or_path", "revision", "peft_version", "inference_mode")

# --- hashing and cache -----------------------------------------------------------------------------


def adapter_hash(adapter: str | Path | None) -> str:
    """sha256 of the adapter weights file and its (canonical) config; ``none`` for the base model.

    Config fields that do not change the computation (where the base model was loaded from, peft
    version) are left out, so the same weights copied elsewhere hit the same cache entry.
    """
    if adapter is None:
        return "none"
    adapter = Path(adapter)
    if baselines.is_merge_spec(adapter):
        return baselines.merge_spec_hash(adapter)
    cfg = json.loads((adapter / zoo.ADAPTER_CONFIG).read_text())
    for k in _VOLATILE_CONFIG_KEYS:
        cfg.pop(k, None)
    h = hashlib.sha256()
    h.update(assets.file_sha256(adapter / zoo.ADAPTER_WEIGHTS).encode())
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return h.hexdigest()


def _examples_hash(examples: Sequence[tasks.Example]) -> str:
    blob = json.dumps([[e.id, e.prompt, list(e.choices), e.gold, list(e.labels)] for e in examples])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _generative_texts_hash(task: str, metric: str, examples: Sequence[tasks.Example]) -> str:
    """What a generative metric's model and sandbox see beyond the examples' fields: the templated prompt
    and gold continuation (bpb, decoding) and, for pass@1, the program around a completion (prompt code and
    tests). A template or test-harness change then scores afresh instead of reusing old entries."""
    rows = [[tasks.cloze_context(e), tasks.gold_continuation(e)] for e in examples]
    if metric == "pass@1":
        from dnd_jax.task_sources import math_code

        rows = [r + [math_code.python_program(task, e.id, "")] for r, e in zip(rows, examples)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _cache_key(ref: base_model.BaseModelRef, ahash: str, task: str, split: str, metric: str, limit: int,
               examples: Sequence[tasks.Example], max_new_tokens: int, packed: bool = False) -> dict:
    key = {"version": SCORING_VERSION, "base_model_sha": ref.sha, "adapter_hash": ahash, "task": task,
           "split": split, "metric": metric, "limit": limit, "examples": _examples_hash(examples)}
    if packed and metric == "cloze":  # same scores up to float reassociation: its own cache entry
        key["packed"] = True
    if metric in ("mc", "exact_match", "pass@1"):
        key["max_new_tokens"] = max_new_tokens
    if metric in ("bpb", "exact_match", "pass@1"):
        from dnd_jax import generative

        key["generative"] = generative.SETTINGS
        key["texts"] = _generative_texts_hash(task, metric, examples)
    if metric in ("exact_match", "pass@1"):
        from dnd_jax.task_sources import math_code

        key["stops"] = list(math_code.stop_sequences(task))  # where a decoded text is cut
        if metric == "exact_match":  # how answers are parsed and compared (bpb's and pass@1's entries stay valid)
            key["answers"] = math_code.ANSWER_VERSION
        if metric == "pass@1":  # what a program may use before it fails (bpb's and exact match's entries stay valid)
            key["sandbox"] = dataclasses.asdict(generative.SANDBOX_LIMITS)
    return key


def _cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"{key['task']}-{key['metric']}-{digest}.json"


# --- models --------------------------------------------------------------------------------------------

_LOADED: dict[str, tuple] = {}  # base model sha -> (model, tokenizer); one base kept in memory


def _load_base(ref: base_model.BaseModelRef) -> tuple:
    if ref.sha not in _LOADED:
        _LOADED.clear()
        _LOADED[ref.sha] = base_model.load(ref)
    return _LOADED[ref.sha]


@contextlib.contextmanager
def model_with_adapter(ref: base_model.BaseModelRef, adapter: str | Path | None) -> Iterator[tuple]:
    """(model, tokenizer): the base itself, or a deep copy of it with the adapter merged in.

    The shared base model is never modified: merging happens in the copy, which is dropped after.
    """
    base, tok = _load_base(ref)
    if adapter is None:
        yield base, tok
        return
    if baselines.is_merge_spec(adapter):  # a merge recipe of many LoRAs: folded into a copy of the base
        model = baselines.fold_merge_spec(copy.deepcopy(base), adapter)
        model.eval()
        try:
            yield model, tok
        finally:
            del model
        return
    from peft import PeftModel

    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).merge_and_unload()
    model.eval()
    try:
        yield model, tok
    finally:
        del model


def _score(model, tok, examples: Sequence[tasks.Example], metric: str, batch_size: int, max_new_tokens: int,
           progress: bool, packed: bool = False, journal: Path | None = None, journal_key: dict | None = None) -> dict:
    """The cacheable, per-example part of a result (``journal``: the decoding metrics' resume journal)."""
    if metric == "cloze":
        scores = scoring.cloze_scores(model, tok, examples, batch_size=batch_size, progress=progress, packed=packed)
        raw, norm = scoring.cloze_predictions(scores)
        for i, sc in enumerate(scores):  # a NaN/inf log-likelihood is no prediction (np.argmax would pick it)
            if not np.isfinite(np.asarray(sc["loglik"], np.float64)).all():
                raw[i] = norm[i] = -1
        return {
            "pred": norm, "correct": [int(p == e.gold) for p, e in zip(norm, examples, strict=True)],
            "pred_unnorm": raw, "correct_unnorm": [int(p == e.gold) for p, e in zip(raw, examples, strict=True)],
            "loglik": [s["loglik"] for s in scores], "chars": [s["chars"] for s in scores],
        }
    if metric == "mc":
        texts = scoring.mc_generate(model, tok, examples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    progress=progress)
        pred = [scoring.parse_mc_answer(t, e.mc_labels()) for t, e in zip(texts, examples, strict=True)]
        return {"pred": pred, "correct": [int(p == e.gold) for p, e in zip(pred, examples, strict=True)],
                "valid": [int(p is not None) for p in pred], "texts": texts}
    if metric in ("bpb", "exact_match", "pass@1"):
        from dnd_jax import generative

        return generative.score(model, tok, examples, metric, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress, journal=journal, journal_key=journal_key)
    raise ValueError(f"unknown metric '{metric}'; use one of {METRICS}")


def _summarize(record: dict, n_boot: int, seed: int) -> dict:
    """Add accuracy, n and CIs (recomputed from the per-example vectors; cheap)."""
    out = dict(record)
    out["n"] = len(record["correct"])
    out["accuracy"] = float(np.mean(record["correct"])) if out["n"] else float("nan")
    out["ci"] = list(scoring.bootstrap_ci(record["correct"], n_boot, seed))
    if "correct_unnorm" in record:
        out["acc_unnorm"] = float(np.mean(record["correct_unnorm"])) if out["n"] else float("nan")
        out["ci_unnorm"] = list(scoring.bootstrap_ci(record["correct_unnorm"], n_boot, seed))
    if "valid" in record:
        out["valid_rate"] = float(np.mean(record["valid"])) if out["n"] else float("nan")
        out["ci_valid"] = list(scoring.bootstrap_ci(record["valid"], n_boot, seed))
    return out


def evaluate_adapter_metrics(model_ref: base_model.BaseModelRef, adapter: str | Path | None, task: str,
                             metrics: Sequence[str], limit: int | None, batch_size: int,
                             cache_dir: str | Path | None, *, split: str = "test", max_new_tokens: int = 8,
                             n_boot: int = 1000, seed: int = 0, progress: bool = True,
                             packed: bool = False, held: str = "wait") -> dict[str, dict]:
    """:func:`evaluate_adapter` for several metrics, merging the adapter at most once.

    ``packed``: cloze scores each question's choices in one row (``config.eval.packed``; up to 3x
    faster on SmolLM2, same log-likelihoods to 4e-5; cached apart from unpacked results).

    With a cache, each entry is computed under its own lock (:func:`entry_lock_dir`), so processes sharing
    ``cache_dir`` never score one entry twice. An entry another live process holds is waited for
    (``held="wait"``) or left out of the result (``held="skip"``).
    """
    limit = int(limit or 0)
    if held not in HELD_MODES:
        raise ValueError(f"held must be one of {HELD_MODES}, got {held!r}")
    examples = tasks.load_examples(task, split, limit or None)
    ahash = adapter_hash(adapter)
    cache = Path(cache_dir) if cache_dir else None
    out: dict[str, dict] = {}
    todo = []
    for metric in metrics:
        if metric not in METRICS:
            raise InputError(f"unknown metric '{metric}'; use one of {METRICS}")
        key = _cache_key(model_ref, ahash, task, split, metric, limit, examples, max_new_tokens, packed)
        path = _cache_path(cache, key) if cache else None
        record = _read_cached(path, key)
        if record is not None:
            out[metric] = _summarize(record, n_boot, seed) | {"cached": True}
            continue
        todo.append((metric, key, path))
    with contextlib.ExitStack() as stack:
        loaded: list[tuple] = []

        def compute(metric: str, key: dict, path: Path | None) -> dict:
            if not loaded:  # the adapter is merged once, and only if some entry is computed here
                loaded.append(stack.enter_context(model_with_adapter(model_ref, adapter)))
            model, tok = loaded[0]
            t0 = time.time()
            # decoding metrics journal every batch next to their cache entry: a killed run resumes there
            journal = path.with_name(f"{path.stem}.partial.json") if path is not None else None
            from dnd_jax import generative

            prior = generative.read_journal(journal, key, len(examples))
            record = _score(model, tok, examples, metric, batch_size, max_new_tokens, progress, packed,
                            journal=journal, journal_key=key)
            record |= {"key": key, "task": task, "split": split, "metric": metric, "limit": limit,
                       "ids": [e.id for e in examples], "adapter": str(adapter) if adapter else None,
                       "wall_s": time.time() - t0 + (prior.wall_s or 0.0)}
            if prior.texts:  # resumed: wall_s covers the earlier runs too, unless their journal did not say
                record["resumed"] = {"texts": len(prior.texts), "wall_s": prior.wall_s}
            if path is not None:
                assets.write_json_atomic(path, record)
                journal.unlink(missing_ok=True)
            return record

        for metric, key, path in todo:
            if path is None:
                out[metric] = _summarize(compute(metric, key, path), n_boot, seed) | {"cached": False}
                continue
            got = _claim_and_compute(path, key, held, lambda m=metric, k=key, p=path: compute(m, k, p))
            if got is not None:
                record, cached = got
                out[metric] = _summarize(record, n_boot, seed) | {"cached": cached}
    return {m: out[m] for m in metrics if m in out}


def _read_cached(path: Path | None, key: dict) -> dict | None:
    if path is not None and path.is_file():
        record = json.loads(path.read_text())
        if record.get("key") == key:
            return record
    return None


def entry_lock_dir(path: Path) -> Path:
    """The lock of one cache entry (:func:`dnd_jax.locking.workdir_lock` on this folder)."""
    return path.parent / ".locks" / path.stem


def _claim_and_compute(path: Path, key: dict, held: str, compute) -> tuple[dict, bool] | None:
    """One cache entry under its lock: (record, cached). Another process may be computing the same entry
    (an experiment shard helping with another's target): ``held="skip"`` leaves it to that process
    (returns None), ``"wait"`` waits for its lock, then reads what it wrote (or, if it died, resumes from
    its journal)."""
    polls = 0
    while True:
        with contextlib.ExitStack() as lock:
            try:
                lock.enter_context(locking.workdir_lock(entry_lock_dir(path), "evaluate"))
            except LockedError as e:
                if held == "skip":
                    return None
                if polls % 20 == 0:  # said again every 20 polls: a holder on another host is never taken over
                    print(f"[evaluate] waiting for {path.name}: {e}", flush=True)
                polls += 1
                _sleep(ENTRY_POLL_S)
                continue
            record = _read_cached(path, key)  # written by another process meanwhile
            return (record, True) if record is not None else (compute(), False)


def evaluate_adapter(model_ref: base_model.BaseModelRef, adapter: str | Path | None, task: str, metric: str,
                     limit: int | None, batch_size: int, cache_dir: str | Path | None, *, split: str = "test",
                     max_new_tokens: int = 8, n_boot: int = 1000, seed: int = 0, progress: bool = True,
                     packed: bool = False) -> dict:
    """One adapter (None = the base model) on the first ``limit`` examples of a task split.

    Returns ``accuracy``, ``n``, ``ci`` (95% bootstrap), the per-example ``correct`` list and ``pred``;
    cloze adds ``acc_unnorm``/``ci_unnorm`` and the log-likelihoods, mc adds ``valid_rate`` and the
    generated ``texts``. ``cached`` says whether the result came from ``cache_dir``.
    """
    return evaluate_adapter_metrics(model_ref, adapter, task, [metric], limit, batch_size, cache_dir, split=split,
                                    max_new_tokens=max_new_tokens, n_boot=n_boot, seed=seed,
                                    progress=progress, packed=packed)[metric]


# --- many systems + reports ------------------------------------------------------------------------

MEAN_TRAINING = "training_loras_mean"


def _aggregate_training(per_system: dict[str, dict], systems: Sequence[baselines.System], n_boot: int,
                        seed: int) -> dict | None:
    """Mean over the individual training LoRAs: per example, the fraction of them that are right."""
    names = [s.name for s in systems if s.kind == "training_lora" and s.name in per_system]
    if not names:
        return None
    correct = np.mean([per_system[n]["correct"] for n in names], axis=0).tolist()
    record = {"correct": correct, "members": names, "ids": per_system[names[0]]["ids"]}
    if all("valid" in per_system[n] for n in names):
        record["valid"] = np.mean([per_system[n]["valid"] for n in names], axis=0).tolist()
    return _summarize(record, n_boot, seed)


def evaluate_systems(model_ref: base_model.BaseModelRef, systems: Sequence[baselines.System], task: str, *,
                     metrics: Sequence[str] = METRICS, limit: int | None = None, batch_size: int = 16,
                     cache_dir: str | Path | None = None, out_dir: str | Path | None = None,
                     split: str = "test", max_new_tokens: int = 8, n_boot: int = 1000, seed: int = 0,
                     progress: bool = True, packed: bool = False,
                     training_lora_metrics: Sequence[str] | None = None) -> dict:
    """Evaluate every system on every metric, add the training-LoRA mean and paired comparisons.

    Comparisons: every system against ``base``, and every ``adapter`` system (e.g. DnD's) against
    every baseline. Writes results.json/.md/.png into ``out_dir`` when it is given.
    ``training_lora_metrics`` (None: all of ``metrics``) limits the individual training LoRAs to the
    metrics of ``metrics`` it names (if none: they are not evaluated on this task). With many training
    tasks and a decoding metric (exact match, pass@1) they are most of the cost; the training-LoRA mean
    and the best training LoRA then exist for the named metrics only. Results are cached per (adapter,
    metric), so a later run with every metric adds only the missing cells.
    """
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise InputError(f"system names must be unique: {names}")
    cells = _cells(systems, metrics, training_lora_metrics)
    kw = dict(split=split, max_new_tokens=max_new_tokens, n_boot=n_boot, seed=seed, progress=progress, packed=packed)
    got: dict[tuple[str, str], dict] = {}
    # Entries another process is computing (a shard helping: fill_cache) are skipped, then waited for.
    for held in ("skip", "wait"):
        pending = [(s, [m for m in own if (s.name, m) not in got]) for s, own in cells]
        pending = [(s, own) for s, own in pending if own]
        for s, own in tqdm(pending, desc=f"eval {task}", disable=not progress or not pending):
            res = evaluate_adapter_metrics(model_ref, s.adapter, task, own, limit, batch_size, cache_dir,
                                           held=held, **kw)
            got.update({(s.name, m): r for m, r in res.items()})
    results: dict[str, dict[str, dict]] = {
        m: {s.name: got[(s.name, m)] for s, own in cells if m in own} for m in metrics}
    for m in metrics:
        agg = _aggregate_training(results[m], systems, n_boot, seed)
        if agg is not None:
            results[m][MEAN_TRAINING] = agg
    comparisons = []
    kinds = {s.name: s.kind for s in systems} | {MEAN_TRAINING: "training_mean"}
    for m in metrics:
        pairs = [(a, "base") for a in results[m] if a != "base" and "base" in results[m]]
        pairs += [(a, b) for a in results[m] if kinds[a] == "adapter" for b in results[m]
                  if b != a and kinds[b] != "base"]  # every baseline and every other adapter
        for a, b in pairs:
            pb = scoring.paired_bootstrap(results[m][a]["correct"], results[m][b]["correct"], n_boot, seed)
            comparisons.append({"metric": m, "a": a, "b": b} | pb)
    report = {
        "task": task, "split": split, "limit": int(limit or 0), "n_boot": n_boot, "seed": seed,
        "base_model": model_ref.to_dict(), "metrics": list(metrics),
        "systems": [s.to_dict() | {"adapter_hash": adapter_hash(s.adapter)} for s in systems],
        "results": results, "comparisons": comparisons,
    }
    if out_dir is not None:
        report_lib.write_target_report(report, out_dir)
    return report


def _cells(systems: Sequence[baselines.System], metrics: Sequence[str],
           training_lora_metrics: Sequence[str] | None) -> list[tuple[baselines.System, list[str]]]:
    """Each system with the metrics it is scored on (the individual training LoRAs: ``training_lora_metrics``)."""
    out = []
    for s in systems:
        own = [m for m in metrics if m in training_lora_metrics] if (
            s.kind == "training_lora" and training_lora_metrics is not None) else list(metrics)
        if own:
            out.append((s, own))
    return out


def fill_cache(model_ref: base_model.BaseModelRef, systems: Sequence[baselines.System], task: str, *,
               metrics: Sequence[str], limit: int | None, batch_size: int, cache_dir: str | Path,
               split: str = "test", max_new_tokens: int = 8, packed: bool = False,
               training_lora_metrics: Sequence[str] | None = None, progress: bool = True) -> int:
    """Help another process's :func:`evaluate_systems` of the same systems: compute, from the last system
    back, the cache entries that are neither cached nor held by another process (each under its lock).
    Writes no report. Returns the number of entries this call computed."""
    computed = 0
    for s, own in tqdm(list(reversed(_cells(systems, metrics, training_lora_metrics))),
                       desc=f"help {task}", disable=not progress):
        res = evaluate_adapter_metrics(model_ref, s.adapter, task, own, limit, batch_size, cache_dir, split=split,
                                       max_new_tokens=max_new_tokens, progress=progress, packed=packed,
                                       held="skip")
        computed += sum(not r["cached"] for r in res.values())
    return computed


def _adapter_systems(specs: Sequence[str]) -> list[baselines.System]:
    """``--adapter`` folders, each read and checked (a LoRA, finite, rank as configured) before any compute."""
    from dnd_jax.weights import peft_io

    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        if not (Path(path) / zoo.ADAPTER_WEIGHTS).is_file():
            raise MissingError(f"--adapter {path}: no {zoo.ADAPTER_WEIGHTS} there")
        peft_io.read_adapter(path)  # AdapterFormatError / IntegrityError name the problem
        out.append(baselines.System(name, "adapter", str(Path(path))))
    return out


def check_adapters_fit(ref: base_model.BaseModelRef, systems: Sequence[baselines.System]) -> None:
    """Every adapter's LoRA tensors fit a linear layer of the base model (same names, in/out sizes)."""
    from safetensors import safe_open

    adapters = [s for s in systems if s.adapter and (Path(s.adapter) / zoo.ADAPTER_WEIGHTS).is_file()]
    if not adapters:
        return
    base, _ = _load_base(ref)
    shapes = {n: tuple(m.weight.shape) for n, m in base.named_modules() if hasattr(m, "weight")
              and getattr(m.weight, "ndim", 0) == 2}
    for s in adapters:
        with safe_open(str(Path(s.adapter) / zoo.ADAPTER_WEIGHTS), "numpy") as f:
            for key in f.keys():
                module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
                shape = tuple(f.get_slice(key).get_shape())
                if module not in shapes:
                    raise InputError(f"adapter {s.adapter} ({s.name}) does not fit base model {ref.name}: it has no "
                                     f"layer '{module}' (an adapter for another base model?)")
                out_f, in_f = shapes[module]
                if (".lora_A." in key and shape[1] != in_f) or (".lora_B." in key and shape[0] != out_f):
                    raise InputError(f"adapter {s.adapter} ({s.name}) does not fit base model {ref.name}: '{key}' "
                                     f"has shape {shape}, the layer is {out_f}x{in_f} (an adapter for another base "
                                     f"model?)")


def _check_writable(out_dir: Path) -> None:
    import os

    parent = out_dir.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write results to {out_dir}: {parent} is not a writable folder")


def _default_training_tasks(config, workdir: Path, task: str, systems: Sequence[baselines.System]) -> list[str]:
    """The baselines' training tasks: those of the evaluated generated adapter's generator (its card), else
    the plan's for ``task`` (:func:`dnd_jax.plan.target_training_tasks`) that the zoo has."""
    from dnd_jax import plan

    for s in systems:
        card = Path(s.adapter) / "dnd_generation.json" if s.adapter else None
        if card is not None and card.is_file():
            trained = json.loads(card.read_text()).get("train_tasks")
            if trained:
                return list(trained)
    have = set(zoo.tasks(workdir))
    return [t for t in plan.target_training_tasks(config, task) if t in have]


def _prepare(config, workdir: Path, task: str, *, adapters: Sequence[str], baseline_names, training_tasks,
             limit: int | None, metrics: Sequence[str] | None, split: str, nearest_prompts: str,
             oracle_task: str | None) -> tuple[base_model.BaseModelRef, list[baselines.System], dict]:
    """The checked systems of a task and the keyword arguments of :func:`evaluate_systems` (no cache_dir/out_dir)."""
    task_files.register_config(config)  # tasks declared as files in config.task_files
    tasks.get_task(task)
    ec = config.eval
    limit = int(ec.limit) if limit is None else int(limit)
    if limit < 0:
        raise InputError(f"--limit must be >= 0 (0 = all examples), got {limit}")
    unknown = [m for m in (metrics or ()) if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; use {list(METRICS)}")
    unknown = [m for m in ec.get("training_lora_metrics", ()) if m not in METRICS]
    if unknown:
        raise InputError(f"config.eval.training_lora_metrics: unknown metric(s) {unknown}; use {list(METRICS)}")
    metrics = applicable_metrics(task, list(metrics or ec.metrics))
    if not metrics:
        raise InputError(f"none of the metrics {list(metrics or ec.metrics)} applies to task '{task}'")
    names = list(config.experiment.baselines if baseline_names is None else baseline_names)
    ref = base_model.resolve(config.base_model, workdir)
    systems = _adapter_systems(adapters)
    if names:
        if training_tasks is None:
            training_tasks = _default_training_tasks(config, workdir, task, systems)
        target = None
        if {"nearest", "simmerge"} & set(names):
            target = ([e.prompt for e in tasks.load_examples(task, split)] if nearest_prompts == "test"
                      else zoo.prompts(workdir, task))
        systems = baselines.build_baselines(workdir, task, names, training_tasks=training_tasks,
                                            target_prompts=target, oracle_task=oracle_task) + systems
    if not systems:
        raise InputError("nothing to evaluate: give --adapter and/or --baselines")
    check_adapters_fit(ref, systems)
    kw = dict(metrics=metrics, limit=limit, batch_size=int(ec.batch_size), split=split,
              max_new_tokens=int(ec.max_new_tokens), packed=bool(ec.get("packed", False)),
              training_lora_metrics=tuple(ec.get("training_lora_metrics", ())) or None)
    return ref, systems, kw


def run(config, workdir: str | Path, task: str, *, adapters: Sequence[str] = (), baseline_names=None,
        training_tasks: Sequence[str] | None = None, limit: int | None = None, metrics: Sequence[str] | None = None,
        split: str = "test", out_dir: str | Path | None = None, nearest_prompts: str = "test",
        progress: bool = True, oracle_task: str | None = None) -> dict:
    """The CLI's work: resolve the base model, build systems, evaluate, write and print the reports.

    ``training_tasks`` (the generator's training tasks) defaults to those recorded in a generated
    adapter's ``dnd_generation.json``, else :func:`dnd_jax.plan.target_training_tasks` (the same split
    the experiment trains ``task``'s generator on). ``nearest`` sees all of the split's unlabeled prompts (what a generator
    is conditioned on) or, with ``nearest_prompts='zoo'``, the task's zoo prompts.jsonl.
    """
    workdir = Path(workdir)
    out_dir = Path(out_dir) if out_dir else workdir / "eval" / task
    _check_writable(out_dir)
    ref, systems, kw = _prepare(config, workdir, task, adapters=adapters, baseline_names=baseline_names,
                                training_tasks=training_tasks, limit=limit, metrics=metrics, split=split,
                                nearest_prompts=nearest_prompts, oracle_task=oracle_task)
    report = evaluate_systems(ref, systems, task, cache_dir=workdir / "eval_cache", out_dir=out_dir,
                              n_boot=int(config.eval.bootstrap), seed=int(config.seed), progress=progress, **kw)
    print(report_lib.target_markdown(report))
    print(f"[evaluate] wrote {out_dir}/results.json, results.md, results.png")
    return report


def help_evaluate(config, workdir: str | Path, task: str, *, training_tasks: Sequence[str] | None = None,
                  split: str = "test", progress: bool = True, oracle_task: str | None = None) -> int:
    """Another process's :func:`evaluate_target` of ``task`` in part: its baselines' cache entries, from the
    last system back, leaving those another process holds (:func:`fill_cache`); the generated adapter is
    that process's. Writes no report; returns the number of entries computed here."""
    workdir = Path(workdir)
    ref, systems, kw = _prepare(config, workdir, task, adapters=(), baseline_names=None,
                                training_tasks=training_tasks, limit=None, metrics=None, split=split,
                                nearest_prompts="test", oracle_task=oracle_task)
    return fill_cache(ref, systems, task, cache_dir=workdir / "eval_cache", progress=progress, **kw)


def summarize(report: dict, adapter: str = "dnd") -> dict:
    """The experiment-level view of a report: ``systems[name][metric] = {acc, ci, n, ...}``.

    Adds ``best_training_lora`` (the training LoRA best on this very test set: an optimistic
    reference, not a method) and ``paired["<adapter> - <baseline>"][metric] = {diff, ci, p_le_0, n}``.
    """
    systems: dict[str, dict] = {}
    keep = ("accuracy", "ci", "n", "correct", "valid_rate", "ci_valid", "acc_unnorm", "ci_unnorm", "cached")
    for m, per in report["results"].items():
        for name, r in per.items():
            systems.setdefault(name, {})[m] = {k: r[k] for k in keep if k in r} | {"acc": r["accuracy"]}
        loras = [n for n in per if n.startswith("lora:")]
        if loras:
            best = max(loras, key=lambda n: (per[n]["accuracy"], n))
            systems.setdefault("best_training_lora", {})[m] = dict(systems[best][m], source=best)
    paired: dict[str, dict] = {}
    for c in report["comparisons"]:
        if c["a"] == adapter:
            paired.setdefault(f"{adapter} - {c['b']}", {})[c["metric"]] = {
                "diff": c["diff"], "ci": c["ci"], "p_le_0": c["p"], "n": c["n"]}
    info = {s["name"]: s["info"] | {"adapter": s["adapter"], "kind": s["kind"]} for s in report["systems"]}
    return {"task": report["task"], "split": report["split"], "limit": report["limit"], "systems": systems,
            "paired": paired, "system_info": info}


def evaluate_target(config, workdir: str | Path, target: str, *, training_tasks: Sequence[str] | None = None,
                    dnd_adapter: str | Path | None = None, out_dir: str | Path | None = None,
                    baseline_names: Sequence[str] | None = None, limit: int | None = None,
                    metrics: Sequence[str] | None = None, split: str = "test", progress: bool = True,
                    oracle_task: str | None = None) -> dict:
    """A generated adapter (system ``dnd``) and the config's baselines on ``target``: :func:`summarize`d.

    ``oracle_task``: the zoo task whose LoRA is the oracle when ``target`` has no zoo LoRA of its own.

    The full report (per-example vectors, every comparison) is written to ``out_dir`` (default
    ``<workdir>/eval/<target>``) and its path returned as ``report_dir``.
    """
    out_dir = Path(out_dir) if out_dir else Path(workdir) / "eval" / target
    adapters = [f"dnd={dnd_adapter}"] if dnd_adapter is not None else []
    report = run(config, workdir, target, adapters=adapters, baseline_names=baseline_names,
                 training_tasks=training_tasks, limit=limit, metrics=metrics, split=split, out_dir=out_dir,
                 progress=progress, oracle_task=oracle_task)
    return summarize(report, "dnd") | {"report_dir": str(out_dir)}
