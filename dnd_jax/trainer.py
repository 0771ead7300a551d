"""The generator training loop (library; the command line is ``python -m dnd_jax.train``).

The zoo is read from ``config.zoo_workdir`` or, when that is empty, from the nearest of ``W`` and
its parents that holds a ``zoo/`` folder. Training tasks are ``config.tasks`` minus
``config.holdout`` and ``config.experiment.cross_domain``. Outputs under ``W``:

    generator/<step>/     Orbax checkpoints: params, optimizer state + step, metadata (JSON)
    metrics.jsonl         one line per logged step: step, loss, lr, grad_norm, step_time (+ val_loss)
    tb/                   TensorBoard events

Rerunning resumes from the latest checkpoint. Batch ``i`` is a function of ``(seed, i)`` and the
noise key of ``(seed, step)``, so a killed-and-resumed run reproduces an uninterrupted one.
:func:`dnd_jax.checkpoint.load_generator` gives back everything generation needs, without the zoo.

Multi-process (one process per host): :func:`init_distributed` (see ``launch/``); each process
feeds its slice of every global batch.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from dnd_jax import checkpoint, function_loss, locking, models, sharding
from dnd_jax.checkpoint import CKPT_DIR, FORMAT, LoadedGenerator, load_generator  # noqa: F401 (re-exported)
from dnd_jax.errors import IntegrityError, ResumeMismatchError
from dnd_jax.plan import MAX_PADDING, ConfigError, Plan, find_zoo_workdir, training_tasks, validate  # noqa: F401
from dnd_jax.weights import centering

METRICS = "metrics.jsonl"
# Config keys that do not change the trained weights (cadence, paths, later stages).
_NOT_RECIPE = ("log_steps", "ckpt_steps", "keep_ckpts", "eval_steps", "zoo_workdir", "mesh", "min_shard_size",
               "sharding", "sharding_unsplit",
               "generate", "eval", "experiment", "zoo", "scaling")
# Recipe keys added later, with the value a recipe saved before them meant.
_RECIPE_LEGACY = {"wd_mults": "ndim>1 (kernels, 2-D biases and norm scales)"}
# Recipe keys added later whose default reproduces exactly what runs saved before them did: a saved
# recipe without the key resumes under that default (and only under it).
_RECIPE_ADDED = {"center": centering.DEFAULTS, "function_loss": function_loss.DEFAULTS}


# ----------------------------------------------------------------------------------------------
# Optimizer, loss, steps.

# Weight decay by parameter name (big_vision style): ``config.wd_mults`` is a list of
# ``(regex over "a/b/kernel" paths, multiplier)``; the first match wins, unmatched parameters get none.
DEFAULT_WD_MULTS = ((r".*/kernel$", 1.0),)
_OPTIMIZERS = {
    "adamw": lambda lr, c: _adamw(lr, c),
    "adam": lambda lr, c: optax.adam(lr),
    "sgd": lambda lr, c: optax.sgd(lr, momentum=0.9),
}


def wd_mults(config) -> tuple[tuple[str, float], ...]:
    rules = config.get("wd_mults", None)
    return tuple((str(r), float(m)) for r, m in (DEFAULT_WD_MULTS if rules is None else rules))


def decay_multipliers(params, rules) -> dict:
    """Per-leaf weight-decay multiplier from ``(regex, mult)`` rules over ``/``-joined parameter paths."""
    import re

    compiled = [(re.compile(r), m) for r, m in rules]

    def mult(path, _):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return next((m for rx, m in compiled if rx.fullmatch(name)), 0.0)

    return jax.tree_util.tree_map_with_path(mult, params)


def _adamw(lr, config) -> optax.GradientTransformation:
    rules, wd = wd_mults(config), float(config.weight_decay)
    if all(m in (0.0, 1.0) for _, m in rules):  # plain masked AdamW
        return optax.adamw(lr, weight_decay=wd, mask=lambda p: jax.tree.map(bool, decay_multipliers(p, rules)))

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params):
        mults = decay_multipliers(params, rules)
        return jax.tree.map(lambda u, p, m: u + (wd * m) * p if m else u, updates, params, mults), state

    return optax.chain(optax.scale_by_adam(), optax.GradientTransformation(init, update),
                       optax.scale_by_learning_rate(lr))


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Warmup + cosine to zero, global-norm clipping, then the optimizer named by ``optax_name``."""
    total, warmup = int(config.total_steps), min(int(config.warmup_steps), int(config.total_steps) - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, float(config.lr), max(warmup, 0), max(total, warmup + 1), 0.0)
    parts = [optax.clip_by_global_norm(float(config.grad_clip_norm))] if config.grad_clip_norm > 0 else []
    return optax.chain(*parts, _OPTIMIZERS[config.optax_name](schedule, config)), schedule


def masked_mse(pred: jax.Array, target: jax.Array, wmap: jax.Array) -> jax.Array:
    """(B,) MSE over real positions, each weighted by its token's weight (``wmap`` = mask × weights)."""
    err = jnp.square(pred.astype(jnp.float32) - target) * wmap
    return jnp.sum(err, axis=(1, 2, 3)) / jnp.sum(wmap)


def make_steps(model, tx, schedule, config, fl_loss=None):
    """Pure train and eval steps (jitted by the caller with explicit shardings).

    With ``fl_loss`` (:func:`dnd_jax.function_loss.make_loss`), ``train_step`` takes the function-space
    inputs ``(lm_params, base, ids, lengths, answer_len)`` after ``wmap`` and minimizes
    ``mse + function_loss.weight * nll``; its metrics gain ``mse`` and ``fl_nll``.
    """
    seed, cond_noise, target_noise = int(config.seed), float(config.conditions.noise), float(config.target_noise)
    fl_weight = float(function_loss.settings(config)["weight"]) if fl_loss is not None else 0.0

    def train_step(state, cond, target, wmap, *fl_inputs):
        step = state["step"]
        key_c, key_t = jax.random.split(jax.random.fold_in(jax.random.key(seed), step))
        if cond_noise > 0:
            cond = cond + cond_noise * jax.random.normal(key_c, cond.shape, cond.dtype)
        if target_noise > 0:
            target = target + target_noise * jax.random.normal(key_t, target.shape, target.dtype) * (wmap > 0)

        def loss_fn(params):
            pred = model.apply(params, cond)
            mse = jnp.mean(masked_mse(pred, target, wmap))
            if fl_loss is None:
                return mse, {}
            nll = fl_loss(pred, *fl_inputs)
            return mse + fl_weight * nll, {"mse": mse, "fl_nll": nll}

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"step": step + 1, "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(step), **parts}

    def eval_step(params, cond, target, wmap, weight):
        per_example = masked_mse(model.apply(params, cond), target, wmap)
        return jnp.sum(per_example * weight), jnp.sum(weight)

    return train_step, eval_step


# ----------------------------------------------------------------------------------------------
# Checkpoints and metadata.


def _recipe(config) -> dict:
    d = json.loads(config.to_json_best_effort())
    d["wd_mults"] = [list(r) for r in wd_mults(config)]
    return {k: v for k, v in d.items() if k not in _NOT_RECIPE}


def _manager(workdir: Path, config=None, create: bool = True):
    return checkpoint.manager(workdir, int(config.keep_ckpts) if config else None, create=create,
                              cleanup=config is not None)


def _read_meta(mngr, step: int) -> dict:
    return checkpoint.read_meta(mngr, step)


# ----------------------------------------------------------------------------------------------
# Logging.


class _Log:
    """metrics.jsonl + TensorBoard, process 0 only; on resume drops lines past the restored step."""

    def __init__(self, workdir: Path, start_step: int):
        self.on = jax.process_index() == 0
        self.path = workdir / METRICS
        self.tb = None
        if not self.on:
            return
        rows = read_metrics(workdir) if start_step else []
        kept = [r for r in rows if r["step"] <= start_step]
        tmp = self.path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start_step or None)
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self.tb = None

    def write(self, row: dict) -> None:
        if not self.on:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_seconds(workdir: str | Path) -> float | None:
    """Training time of the steps in metrics.jsonl: each row's mean step time over the steps since the
    previous row, summed (a resumed run's kept steps count once; work lost to a kill is not in the log).
    None without a log."""
    rows = sorted(read_metrics(workdir), key=lambda r: r["step"])
    if not rows:
        return None
    total, prev = 0.0, 0
    for r in rows:
        if "step_time" in r and r["step"] > prev:
            total += float(r["step_time"]) * (r["step"] - prev)
            prev = r["step"]
    return total


# ----------------------------------------------------------------------------------------------
# Training.


def with_added_keys(recipe: dict) -> dict:
    """``recipe`` (a saved config, as a dict) with the keys added since filled in with the value that
    reproduces what runs before them did (:data:`_RECIPE_ADDED`, also a key added inside such a section)."""
    out = dict(recipe)
    for k, default in _RECIPE_ADDED.items():
        out.setdefault(k, default)
        if isinstance(default, dict) and isinstance(out[k], dict):
            out[k] = default | out[k]
    return out


def _resume_diff(meta: dict, config, fingerprint: dict) -> list[str]:
    """What differs between a saved step's recipe + data and this run's (empty: safe to resume)."""
    # Filter the saved side too: checkpoints written before a key joined _NOT_RECIPE still resume.
    saved = {k: v for k, v in meta.get("recipe", {}).items() if k not in _NOT_RECIPE}
    now = _recipe(config)
    for k, meaning in _RECIPE_LEGACY.items():
        saved.setdefault(k, f"(legacy) {meaning}")
    saved = with_added_keys(saved)
    diff = [f"config.{k}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    data = meta.get("data")
    if data is None:  # written before data fingerprints: compare what that metadata has
        data = {"train_tasks": meta.get("train_tasks"), "zoo_workdir": meta.get("zoo", {}).get("workdir")}
        fingerprint = {"train_tasks": fingerprint["train_tasks"], "zoo_workdir": fingerprint["zoo_workdir"]}
    for k in sorted(set(data) | set(fingerprint)):
        if k == "zoo_workdir" and "zoo" in fingerprint:
            continue  # the zoo's content decides, not where it lies
        if data.get(k) != fingerprint.get(k):
            if k == "zoo" and isinstance(data.get(k), dict):
                changed = sorted(t for t in set(data[k]) | set(fingerprint[k]) if data[k].get(t) != fingerprint[k].get(t))
                diff.append(f"zoo content of {changed}")
            else:
                diff.append(f"data.{k} ({data.get(k)} -> {fingerprint.get(k)})" if k == "train_tasks" else f"data.{k}")
    return diff


def _check_resumable(mngr, config, workdir: Path, fingerprint: dict) -> tuple[int | None, list[str]]:
    """The latest saved step (verified) and what stands against resuming from it."""
    latest = mngr.latest_step()
    if latest is None:
        return None, []
    sdir = checkpoint.step_dir(mngr, latest)
    try:
        verified = checkpoint.verify(sdir, checkpoint.ITEMS)
    except IntegrityError as e:
        earlier = [s for s in mngr.all_steps() if s < latest]
        hint = f"move {sdir} away to resume from step {max(earlier)}" if earlier else "use a fresh --workdir"
        raise IntegrityError(f"{e}; {hint}") from None
    if not verified:
        # Orbax renames a step into place only when it is complete: a step without checksums was
        # written before they existed or killed right after the save; record them now.
        logging.warning("%s has no checksums; recording them", sdir)
        if jax.process_index() == 0:
            checkpoint.write_checksums(sdir)
    return latest, _resume_diff(_read_meta(mngr, latest), config, fingerprint)


def _set_aside(workdir: Path) -> Path:
    """--start_over: move the old run's files to ``W/replaced-<time>/`` (nothing is deleted)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = workdir / f"replaced-{stamp}"
    dest.mkdir(parents=True, exist_ok=False)
    for name in (CKPT_DIR, METRICS, "tb", centering.BANK_FILE):
        if (workdir / name).exists():
            (workdir / name).rename(dest / name)
    logging.warning("start over: the previous run's files are now in %s", dest)
    return dest


def _finished(workdir: Path, step: int) -> dict:
    """The result of a run that already reached total_steps (no zoo, no compute)."""
    done = load_generator(workdir, step)
    history = read_metrics(workdir)
    vals = [r["val_loss"] for r in history if "val_loss" in r]
    return {"step": step, "params": done.params, "val_loss": vals[-1] if vals else None, "history": history,
            "metadata": done.metadata}


def data_fingerprint(config, plan: Plan) -> dict:
    """Everything that defines the training data: a resumed run must see the same."""
    from dnd_jax import conditions, zoo

    return {"train_tasks": list(plan.train_tasks), "zoo_workdir": str(plan.zoo_workdir.resolve()),
            "zoo": {t: zoo.content_hash(plan.zoo_workdir, t) for t in plan.train_tasks},
            "conditions": json.loads(config.conditions.to_json_best_effort()),
            "encoder_sha": conditions.encoder_identity(config)["sha"]}


def build_metadata(config, plan: Plan, data, in_shape, out_shape, param_count: int) -> dict:
    """Everything generation needs besides params and normalizer stats (see :class:`LoadedGenerator`)."""
    from dnd_jax import conditions

    return {
        "format": FORMAT, "model_name": config.model_name, "in_shape": list(in_shape), "out_shape": list(out_shape),
        "layout": data.layout.to_dict(),
        "normalizer": {"mode": data.normalizer.mode, "eps": data.normalizer.eps,
                       "stat_shape": list(data.normalizer.mean.shape)},  # the stats: the "norm" item
        "train_tasks": plan.train_tasks, "holdout": list(config.holdout),
        "cross_domain": list(config.experiment.get("cross_domain", ())),
        "encoder": conditions.encoder_identity(config),
        "conditions": {"num_prompts": int(in_shape[0]), "max_len": int(in_shape[1]), "dim": int(in_shape[2])},
        "lora": data.lora, "base_model": data.base_model,
        "zoo": {"workdir": str(plan.zoo_workdir.resolve()), "checkpoints": data.ckpt_dirs},
        "data": data_fingerprint(config, plan), "param_count": param_count, "config": json.loads(config.to_json_best_effort()), "recipe": _recipe(config),
    }


def train_and_evaluate(config, workdir: str | Path, *, devices=None, max_steps: int | None = None,
                       start_over: bool = False) -> dict:
    """Train (or resume, or return a finished run) the generator; returns the final state and metrics.

    ``devices`` restricts the mesh (default: all devices); ``max_steps`` stops after that global step
    without saving, as a preemption would (tests use it). A workdir holding a run with another recipe
    or other training data is refused (:class:`ResumeMismatchError`) unless ``start_over``, which
    moves that run's files to ``W/replaced-<time>/`` first. Returns ``{"step", "params", "val_loss",
    "history" (every metrics.jsonl row), "metadata"}``.
    """
    workdir = Path(workdir)
    # One writer per workdir (process 0 holds it for a multi-process run).
    lock = locking.workdir_lock(workdir, "train") if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_and_evaluate(config, workdir, devices=devices, max_steps=max_steps, start_over=start_over)


def _train_and_evaluate(config, workdir: Path, *, devices, max_steps: int | None, start_over: bool) -> dict:
    from tqdm import tqdm

    from dnd_jax import input_pipeline

    workdir = Path(workdir)
    devices = list(jax.devices() if devices is None else devices)
    plan = validate(config, workdir, len(devices))
    fingerprint = data_fingerprint(config, plan)
    mngr = _manager(workdir, config)
    try:
        latest, diff = _check_resumable(mngr, config, workdir, fingerprint)
    except BaseException:
        mngr.close()
        raise
    total = int(config.total_steps)
    if latest is not None and latest >= total and diff and all(d.removeprefix("config.") in _RECIPE_LEGACY
                                                                for d in diff):
        logging.warning("%s was trained before %s joined the recipe; returning it as it is", workdir, diff)
        diff = []
    if diff and not start_over:
        mngr.close()
        raise ResumeMismatchError(
            f"{workdir / CKPT_DIR} holds a generator trained on other data or with another config (differs in "
            f"{'; '.join(diff)}); resuming would mix them. Use a fresh --workdir, or pass --start_over to set the "
            f"old run aside and train from scratch")
    if diff:
        mngr.close()
        _set_aside(workdir)
        mngr, latest = _manager(workdir, config), None
    if latest is not None and latest >= total:
        mngr.close()
        return _finished(workdir, latest)

    # Data, model, optimizer, shardings.
    fl_base = function_loss.resolve_base(config, plan.zoo_workdir, plan.train_tasks) \
        if function_loss.enabled(config) else None
    mesh = sharding.make_mesh(config.mesh, devices)
    data = input_pipeline.load(plan.zoo_workdir, config, plan.train_tasks)
    in_shape = (int(config.conditions.num_prompts), *data.conds[0].shape[1:])
    out_shape = tuple(data.train_tokens.shape[1:])
    model = models.build(config.model_name, config.model, in_shape, out_shape)
    tx, schedule = make_optimizer(config)

    def init_state(key):
        params = model.init(key, jnp.zeros((1, *in_shape), jnp.float32))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    abstract = jax.eval_shape(init_state, jax.random.key(config.seed))
    placement = place_state(config, mesh, abstract)
    state_sh = placement.shardings
    # Numerically the same model, its activations pinned where an XLA bug needs it (docs/scaleout/).
    sharded_model = models.for_shardings(model, state_sh["params"])
    batch_sh, rep = sharding.batch_sharding(mesh, 4), sharding.replicated(mesh)
    batches = input_pipeline.Batches(data, config, batch_sh, batch_sh)
    val_batches = batches.val()
    wmap_host = (data.mask * data.token_weights[:, None, None]).astype(np.float32)
    wmap = jax.make_array_from_process_local_data(rep, wmap_host, wmap_host.shape)
    param_count = int(sum(np.prod(a.shape) for a in jax.tree.leaves(abstract["params"])))
    meta = build_metadata(config, plan, data, in_shape, out_shape, param_count)
    norm_stats = {"mean": np.asarray(data.normalizer.mean, np.float64), "std": np.asarray(data.normalizer.std, np.float64)}
    if data.bank is not None:  # the same bytes on every process; process 0 writes them
        blob = data.bank.serialize()
        meta["center"] = {"mode": "similarity", "file": centering.BANK_FILE, "sha256": hashlib.sha256(blob).hexdigest(),
                          "tasks": data.bank.tasks, "temperature": data.bank.temperature,
                          "max_prompts": data.bank.max_prompts,
                          "directions": centering.settings(config)["directions"]}
        if jax.process_index() == 0:
            data.bank.save(workdir / centering.BANK_FILE, blob)

    fl = _FunctionLoss(config, fl_base, data, batches, mesh) if fl_base is not None else None
    train_step, eval_step = make_steps(sharded_model, tx, schedule, config, fl.loss if fl else None)
    p_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh, batch_sh, rep, *(fl.shardings if fl else ())),
                      out_shardings=(state_sh, rep), donate_argnums=(0,))
    p_eval = jax.jit(eval_step, in_shardings=(state_sh["params"], batch_sh, batch_sh, rep,
                                              sharding.batch_sharding(mesh, 1)), out_shardings=(rep, rep))

    # Fresh state (initialized directly sharded) or the latest checkpoint.
    if latest is None:
        state = jax.jit(init_state, out_shardings=state_sh)(jax.random.key(config.seed))
    else:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
        restored = checkpoint._restore(mngr, latest, "training state",
                                       params=ocp.args.StandardRestore(target["params"]),
                                       train=ocp.args.StandardRestore({"step": target["step"],
                                                                       "opt_state": target["opt_state"]}))
        if jax.process_count() == 1 and checkpoint.non_finite(dict(restored.items())):
            raise IntegrityError(f"{checkpoint.step_dir(mngr, latest)} holds non-finite weights: it is corrupt")
        state = {"step": restored["train"]["step"], "params": restored["params"],
                 "opt_state": restored["train"]["opt_state"]}
        logging.info("resumed from %s at step %d", workdir / CKPT_DIR, latest)
    start = int(jax.device_get(state["step"]))

    def save(step: int) -> None:
        checkpoint.save(mngr, step, state, norm_stats, meta)

    def val_loss() -> float | None:
        if not val_batches:
            return None
        tot = cnt = 0.0
        for (cond, target), weight in val_batches:
            s, c = p_eval(state["params"], cond, target, wmap, weight)
            tot, cnt = tot + float(s), cnt + float(c)
        return tot / max(cnt, 1e-9)

    log = _Log(workdir, start)
    stop = total if max_steps is None else min(total, int(max_steps))
    bar = tqdm(total=total, initial=start, desc=f"train {workdir.name}", disable=jax.process_index() != 0,
               mininterval=2.0, dynamic_ncols=True)
    t_last, since, last_val = time.perf_counter(), 0, None
    for step in range(start, stop):
        cond, target = batches(step)
        state, metrics = p_train(state, cond, target, wmap, *(fl.inputs(step) if fl else ()))
        done, since = step + 1, since + 1
        bar.update(1)
        evaluate = done % config.eval_steps == 0 or done == total
        if done == 1 or done % config.log_steps == 0 or evaluate:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            row = {"step": done, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                   "step_time": (time.perf_counter() - t_last) / since,
                   **{k: m[k] for k in ("mse", "fl_nll") if k in m}}
            if evaluate and (last_val := val_loss()) is not None:
                row["val_loss"] = last_val
            log.write(row)
            bar.set_postfix(loss=f"{m['loss']:.4f}", **({"val": f"{last_val:.4f}"} if last_val is not None else {}))
            t_last, since = time.perf_counter(), 0
        if done % config.ckpt_steps == 0 or done == total:
            save(done)
    bar.close()
    log.close()
    mngr.wait_until_finished()
    mngr.close()
    final_step = int(jax.device_get(state["step"]))
    return {"step": final_step, "params": state["params"], "val_loss": last_val, "history": read_metrics(workdir),
            "metadata": {**meta, "step": final_step}}


class _FunctionLoss:
    """The function-space loss's inputs for every step (:mod:`dnd_jax.function_loss`)."""

    def __init__(self, config, ref, data, batches, mesh):
        from transformers import AutoTokenizer

        from dnd_jax import jax_lm
        from dnd_jax.weights import lora as lora_lib

        s = function_loss.settings(config)
        tokenizer = AutoTokenizer.from_pretrained(ref.path)
        self.examples = function_loss.load_examples(config, data.tasks, tokenizer)
        lm_dtype = function_loss.dtype(config)
        rep = sharding.replicated(mesh)
        placement = place_state(config, mesh, {function_loss.BASE_PREFIX: jax_lm.abstract_params(
            jax_lm.read_config(ref.path), lm_dtype)}, what=f"function_loss base LM ({s['dtype']})")
        lm_sh = placement.shardings[function_loss.BASE_PREFIX]
        lm_cfg, host = jax_lm.load_host(ref.path, lm_dtype)
        scaling = lora_lib.lora_scaling(data.lora)
        self.loss = function_loss.make_loss(lm_cfg, data.layout, data.normalizer, scaling, self.examples.max_answer,
                                            bool(s["remat"]), row_sharding=batches.shardings[1])
        self.n, self.seed, self.data, self.batches = int(s["examples"]), int(config.seed), data, batches
        self.lm_params = function_loss.put_base(host, lm_sh)
        self.base_sh = batches.shardings[1] if data.bank is not None else rep
        self.shardings = (lm_sh, self.base_sh, sharding.batch_sharding(mesh, 3),
                          sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 2))
        if data.bank is not None:  # a task's leave-one-out center: what its training targets are residuals from
            bank = data.bank
            self._center = functools.lru_cache(maxsize=16)(lambda t: bank.center_at(bank.dirs[t], exclude=t))

    def inputs(self, step: int) -> tuple:
        from dnd_jax import input_pipeline

        # Drawn for the whole global batch, then cut to this process's rows: every process, and a
        # single-process run, draws the same examples for the same row.
        everyone = self.batches.tasks(step)
        rows = self.batches.rows
        ids, lengths, ans = (a[rows] for a in self.examples.sample(everyone, step, self.seed, self.n))
        tasks = everyone[rows]
        b = self.batches.batch_size
        arrays = input_pipeline.make_global(
            [ids, lengths, ans], self.shardings[2:], [(b, *ids.shape[1:]), (b, self.n), (b, self.n)])
        if self.data.bank is None:
            base = jax.device_put(np.zeros((), np.float32), self.base_sh)
        else:
            base = input_pipeline.make_global([np.stack([self._center(int(t)) for t in tasks])], [self.base_sh],
                                              [self.batches.target_shape])[0]
        return (self.lm_params, base, *arrays)


def place_state(config, mesh, abstract_state, what: str = "") -> sharding.Placement:
    """Placement of the train state (or of ``what``: another tree) under ``config.sharding``; logged
    (process 0); unsplit kernels are warnings, or a :class:`ConfigError` with ``config.sharding_unsplit='error'``."""
    try:
        placement = sharding.place(mesh, abstract_state, sharding.config_rules(config), int(config.min_shard_size))
    except sharding.ShardingRuleError as e:
        raise ConfigError(f"config.sharding: {e}") from None
    if jax.process_index() == 0:
        if what:
            logging.info("placement of the %s on mesh %s (%.1f MiB/device of %.1f MiB):\n%s", what, dict(mesh.shape),
                         placement.bytes_per_device() / 2**20, placement.total_bytes() / 2**20, placement.table())
        else:
            logging.info("placement on mesh %s (params %.1f MiB/device, optimizer state %.1f MiB/device):\n%s",
                         dict(mesh.shape), placement.bytes_per_device("params") / 2**20,
                         placement.bytes_per_device("opt_state") / 2**20, placement.table())
        for line in placement.unsplit:
            logging.warning("not split as the rules ask: %s", line)
    if placement.unsplit and config.get("sharding_unsplit", "warn") == "error":
        raise ConfigError("config.sharding asks for splits that cannot be made (sharding_unsplit='error'): "
                          + "; ".join(placement.unsplit))
    return placement


def init_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process run (CPU processes talk through gloo); no-op without a coordinator.

    ``coordinator_address='auto'``: let JAX find everything from the cluster (TPU VM pods, SLURM,
    Open MPI), as ``launch/tpu_pod.sh`` and ``launch/slurm.sbatch`` do.
    """
    if not (coordinator_address or num_processes):
        return
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto":
        jax.distributed.initialize()
        return
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
