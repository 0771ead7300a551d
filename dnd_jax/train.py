"""Train the DnD generator: ``python -m dnd_jax.train --config configs/X.py[:arg] --workdir W``.

The zoo is read from ``config.zoo_workdir`` or, when that is empty, from the nearest of ``W`` and
its parents that holds a ``zoo/`` folder. Training tasks are ``config.tasks`` minus
``config.holdout`` and ``config.experiment.cross_domain``. Outputs under ``W``:

    generator/<step>/     Orbax checkpoints: params, optimizer state + step, metadata (JSON)
    metrics.jsonl         one line per logged step: step, loss, lr, grad_norm, step_time (+ val_loss)
    tb/                   TensorBoard events

Rerunning resumes from the latest checkpoint. Batch ``i`` is a function of ``(seed, i)`` and the
noise key of ``(seed, step)``, so a killed-and-resumed run reproduces an uninterrupted one.
:func:`load_generator` gives back everything generation needs, without the zoo.

Multi-process (one process per host): pass ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (see ``launch/``); each process feeds its slice of every global batch.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import flags, logging

from dnd_jax import cli, models, sharding, zoo

CKPT_DIR = "generator"
METRICS = "metrics.jsonl"
FORMAT = "dnd_jax.generator/1"
MAX_PADDING = 0.5  # a token shape wasting more of the grid than this is a config error
# Config keys that do not change the trained weights (cadence, paths, later stages).
_NOT_RECIPE = ("log_steps", "ckpt_steps", "keep_ckpts", "eval_steps", "zoo_workdir", "mesh", "min_shard_size",
               "generate", "eval", "experiment", "zoo")


class ConfigError(ValueError):
    """The config cannot train on this zoo / these devices (raised before any compute)."""


# ----------------------------------------------------------------------------------------------
# Config validation (no compute, no encoder, reads zoo manifests and one checkpoint's shapes).


def training_tasks(config) -> list[str]:
    excluded = set(config.holdout) | set(config.experiment.get("cross_domain", ()))
    return [t for t in config.tasks if t not in excluded]


def find_zoo_workdir(config, workdir: str | Path) -> Path:
    """``config.zoo_workdir`` or the nearest of ``workdir`` and its parents holding ``zoo/``."""
    if config.get("zoo_workdir"):
        path = Path(config.zoo_workdir)
        if not zoo.zoo_dir(path).is_dir():
            raise ConfigError(f"zoo_workdir {path} has no zoo/ folder (run dnd_jax.collect first)")
        return path
    start = Path(workdir).resolve()
    for d in (start, *start.parents):
        if zoo.zoo_dir(d).is_dir():
            return d
    raise ConfigError(f"no zoo/ folder in {start} or its parents; set --config.zoo_workdir or run dnd_jax.collect")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a validated config trains on."""

    zoo_workdir: Path
    train_tasks: list[str]
    mesh_shape: dict[str, int]
    shapes: dict[str, tuple[int, ...]]  # the first training checkpoint's tensor shapes


def validate(config, workdir: str | Path, num_devices: int | None = None) -> Plan:
    """Every check that can fail before compute; raises :class:`ConfigError` saying what to fix."""
    from dnd_jax import tasks as registry
    from dnd_jax.weights import layout as layout_lib

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(len(config.tasks) > 0, "config.tasks is empty")
    for t in (*config.tasks, *config.holdout):
        try:
            registry.get_task(t)
        except KeyError as e:
            raise ConfigError(str(e).strip("'\"")) from None
    for t in config.holdout:
        need(t in config.tasks, f"holdout task '{t}' is not in config.tasks {tuple(config.tasks)}")
    train_tasks = training_tasks(config)
    need(bool(train_tasks), f"no training tasks left: tasks {tuple(config.tasks)} minus holdout "
         f"{tuple(config.holdout)} and cross_domain {tuple(config.experiment.get('cross_domain', ()))}")
    for key in ("batch_size", "total_steps", "log_steps", "ckpt_steps", "eval_steps", "keep_ckpts"):
        need(int(config[key]) > 0, f"config.{key} must be positive, got {config[key]}")
    need(int(config.conditions.num_prompts) > 0 and int(config.conditions.max_len) > 0,
         "conditions.num_prompts and conditions.max_len must be positive")
    need(config.token_weights in ("", "inverse_count"),
         f"token_weights must be '' or 'inverse_count', got '{config.token_weights}'")
    need(config.optax_name in _OPTIMIZERS, f"optax_name must be one of {sorted(_OPTIMIZERS)}")
    token_shape = tuple(config.layout.token_shape)
    need(len(token_shape) == 2 and all(isinstance(d, int) and d > 0 for d in token_shape),
         f"layout.token_shape must be two positive ints (h, w), got {token_shape}")
    try:
        mesh_shape = sharding.mesh_shape(config.mesh, num_devices or jax.device_count())
    except sharding.MeshError as e:
        raise ConfigError(str(e)) from None
    data = mesh_shape.get("data", 1)
    need(config.batch_size % data == 0, f"batch_size {config.batch_size} is not divisible by the data axis ({data})")
    need(config.batch_size % jax.process_count() == 0,
         f"batch_size {config.batch_size} is not divisible by the process count ({jax.process_count()})")
    try:
        models.build(config.model_name, config.model, (1, 1, 1), (1, 1, 1))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None

    zoo_workdir = find_zoo_workdir(config, workdir)
    have = set(zoo.tasks(zoo_workdir))
    for t in (*train_tasks, *config.holdout):
        need(t in have, f"task '{t}' is not in the zoo at {zoo.zoo_dir(zoo_workdir)} (zoo has {sorted(have)})")
    k_val = int(config.val_checkpoints_per_task)
    need(k_val >= 0, "val_checkpoints_per_task must be >= 0")
    for t in train_tasks:
        try:
            n = len(zoo.checkpoints(zoo_workdir, t))
        except FileNotFoundError as e:
            raise ConfigError(str(e)) from None
        need(n > k_val, f"task '{t}' has {n} checkpoints; val_checkpoints_per_task={k_val} leaves none to train on")
        need(len(zoo.prompts(zoo_workdir, t)) > 0, f"task '{t}' has no prompts in the zoo")
    from safetensors import safe_open

    first = zoo.checkpoints(zoo_workdir, train_tasks[0])[0] / zoo.ADAPTER_WEIGHTS
    with safe_open(str(first), "numpy") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    try:
        layout = layout_lib.build_layout(shapes, token_shape)
    except (ValueError, layout_lib.LayoutMismatchError) as e:
        raise ConfigError(f"layout.token_shape {token_shape} does not fit the zoo's LoRA tensors: {e}") from None
    need(layout.padding_fraction <= MAX_PADDING,
         f"layout.token_shape {token_shape} does not fit the zoo's LoRA tensors: {layout.padding_fraction:.0%} of "
         f"the token grid would be padding (max {MAX_PADDING:.0%}); use tokens no larger than the tensors")
    return Plan(zoo_workdir, train_tasks, mesh_shape, shapes)


# ----------------------------------------------------------------------------------------------
# Optimizer, loss, steps.

_OPTIMIZERS = {
    "adamw": lambda lr, c: optax.adamw(lr, weight_decay=c.weight_decay, mask=_decay_mask),
    "adam": lambda lr, c: optax.adam(lr),
    "sgd": lambda lr, c: optax.sgd(lr, momentum=0.9),
}


def _decay_mask(params):
    """Weight decay on kernels only (not norms or biases)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


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


def make_steps(model, tx, schedule, config):
    """Pure train and eval steps (jitted by the caller with explicit shardings)."""
    seed, cond_noise, target_noise = int(config.seed), float(config.conditions.noise), float(config.target_noise)

    def train_step(state, cond, target, wmap):
        step = state["step"]
        key_c, key_t = jax.random.split(jax.random.fold_in(jax.random.key(seed), step))
        if cond_noise > 0:
            cond = cond + cond_noise * jax.random.normal(key_c, cond.shape, cond.dtype)
        if target_noise > 0:
            target = target + target_noise * jax.random.normal(key_t, target.shape, target.dtype) * (wmap > 0)

        def loss_fn(params):
            return jnp.mean(masked_mse(model.apply(params, cond), target, wmap))

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"step": step + 1, "params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(step)}

    def eval_step(params, cond, target, wmap, weight):
        per_example = masked_mse(model.apply(params, cond), target, wmap)
        return jnp.sum(per_example * weight), jnp.sum(weight)

    return train_step, eval_step


# ----------------------------------------------------------------------------------------------
# Checkpoints and metadata.


def _recipe(config) -> dict:
    d = json.loads(config.to_json_best_effort())
    return {k: v for k, v in d.items() if k not in _NOT_RECIPE}


def _manager(workdir: Path, config=None, create: bool = True) -> ocp.CheckpointManager:
    # Synchronous saves: a step's checkpoint is complete (renamed from a tmp folder) before training
    # goes on; tmp folders left by a killed save are removed when training restarts.
    opts = ocp.CheckpointManagerOptions(max_to_keep=int(config.keep_ckpts) if config else None, create=create,
                                        enable_async_checkpointing=False, cleanup_tmp_directories=config is not None)
    return ocp.CheckpointManager((workdir / CKPT_DIR).resolve(), options=opts,
                                 item_names=("params", "train", "norm", "meta"))


def _read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _config_from_meta(meta: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(meta["config"])


@dataclasses.dataclass
class LoadedGenerator:
    """A trained generator: ``model.apply(params, cond)`` maps ``(B, N, L, C)`` to normalized tokens.

    Tokens -> LoRA: ``layout.detokenize(layout, normalizer.denormalize(tokens)[i])`` (denormalize
    zeroes padding). ``metadata`` (JSON) holds: ``format``, ``step``, ``model_name``,
    ``in_shape`` (N, L, C), ``out_shape`` (T, h, w), ``layout`` (``WeightLayout.to_dict``),
    ``normalizer`` (mode, eps, stat_shape; the statistics are a separate Orbax item),
    ``train_tasks``, ``holdout``, ``cross_domain``, ``encoder`` (kind, path, sha, max_len),
    ``conditions`` (num_prompts, max_len, dim), ``lora`` (r, lora_alpha, lora_dropout,
    target_modules), ``base_model`` (name, path, sha), ``zoo`` (workdir, checkpoint folders per
    task), ``param_count``, ``config`` (the full training config) and ``recipe``.
    """

    model: object
    params: dict
    layout: object
    normalizer: object
    metadata: dict
    config: ml_collections.ConfigDict
    step: int


def load_generator(workdir: str | Path, step: int | None = None) -> LoadedGenerator:
    """The generator saved under ``workdir`` (latest step by default), params on the default device."""

    workdir = Path(workdir)
    if not (workdir / CKPT_DIR).is_dir():
        raise FileNotFoundError(f"no generator checkpoints in {workdir / CKPT_DIR} (run dnd_jax.train)")
    with _manager(workdir, create=False) as mngr:
        return _load(mngr, workdir, step)


def _load(mngr: ocp.CheckpointManager, workdir: Path, step: int | None) -> LoadedGenerator:
    from dnd_jax.weights import layout as layout_lib
    from dnd_jax.weights import normalization

    step = mngr.latest_step() if step is None else int(step)
    if step is None or step not in mngr.all_steps():
        raise FileNotFoundError(f"generator step {step} not in {workdir / CKPT_DIR} (have {list(mngr.all_steps())})")
    meta = _read_meta(mngr, step)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{workdir / CKPT_DIR}/{step} is not a {FORMAT} checkpoint")
    config = _config_from_meta(meta)
    model = models.build(meta["model_name"], config.model, tuple(meta["in_shape"]), tuple(meta["out_shape"]))
    device = jax.local_devices()[0]
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *meta["in_shape"]), jnp.float32))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
                            abstract)
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract),
                                                          norm=ocp.args.StandardRestore()))
    layout = layout_lib.WeightLayout.from_dict(meta["layout"])
    norm = restored["norm"]
    normalizer = normalization.Normalizer(mode=meta["normalizer"]["mode"], mean=np.asarray(norm["mean"]),
                                          std=np.asarray(norm["std"]), mask=layout.mask(),
                                          eps=float(meta["normalizer"]["eps"]))
    return LoadedGenerator(model=model, params=restored["params"], layout=layout, normalizer=normalizer,
                           metadata=meta, config=config, step=step)


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


# ----------------------------------------------------------------------------------------------
# Training.


def _check_resumable(mngr: ocp.CheckpointManager, config, workdir: Path) -> int | None:
    """The latest saved step, after making sure it was trained with this recipe."""
    latest = mngr.latest_step()
    if latest is not None:
        # Filter the saved side too: checkpoints written before a key joined _NOT_RECIPE still resume.
        saved = {k: v for k, v in _read_meta(mngr, latest)["recipe"].items() if k not in _NOT_RECIPE}
        now = _recipe(config)
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            raise ConfigError(f"{workdir / CKPT_DIR} holds a generator trained with another config (differs in "
                              f"{diff}); use a fresh --workdir or delete that folder")
    return latest


def _finished(workdir: Path, step: int) -> dict:
    """The result of a run that already reached total_steps (no zoo, no compute)."""
    done = load_generator(workdir, step)
    history = read_metrics(workdir)
    vals = [r["val_loss"] for r in history if "val_loss" in r]
    return {"step": step, "params": done.params, "val_loss": vals[-1] if vals else None, "history": history,
            "metadata": done.metadata}


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
        "param_count": param_count, "config": json.loads(config.to_json_best_effort()), "recipe": _recipe(config),
    }


def train_and_evaluate(config, workdir: str | Path, *, devices=None, max_steps: int | None = None) -> dict:
    """Train (or resume, or return a finished run) the generator; returns the final state and metrics.

    ``devices`` restricts the mesh (default: all devices); ``max_steps`` stops after that global step
    without saving, as a preemption would (tests use it). Returns ``{"step", "params", "val_loss",
    "history" (every metrics.jsonl row), "metadata"}``.
    """
    from tqdm import tqdm

    from dnd_jax import input_pipeline

    workdir = Path(workdir)
    devices = list(jax.devices() if devices is None else devices)
    plan = validate(config, workdir, len(devices))
    mngr = _manager(workdir, config)
    try:
        latest = _check_resumable(mngr, config, workdir)
    except ConfigError:
        mngr.close()
        raise
    total = int(config.total_steps)
    if latest is not None and latest >= total:
        mngr.close()
        return _finished(workdir, latest)

    # Data, model, optimizer, shardings.
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
    state_sh = sharding.param_shardings(mesh, abstract, sharding.DEFAULT_RULES, int(config.min_shard_size))
    batch_sh, rep = sharding.batch_sharding(mesh, 4), sharding.replicated(mesh)
    batches = input_pipeline.Batches(data, config, batch_sh, batch_sh)
    val_batches = batches.val()
    wmap_host = (data.mask * data.token_weights[:, None, None]).astype(np.float32)
    wmap = jax.make_array_from_process_local_data(rep, wmap_host, wmap_host.shape)
    param_count = int(sum(np.prod(a.shape) for a in jax.tree.leaves(abstract["params"])))
    meta = build_metadata(config, plan, data, in_shape, out_shape, param_count)
    norm_stats = {"mean": np.asarray(data.normalizer.mean, np.float64), "std": np.asarray(data.normalizer.std, np.float64)}

    train_step, eval_step = make_steps(model, tx, schedule, config)
    p_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh, batch_sh, rep), out_shardings=(state_sh, rep),
                      donate_argnums=(0,))
    p_eval = jax.jit(eval_step, in_shardings=(state_sh["params"], batch_sh, batch_sh, rep,
                                              sharding.batch_sharding(mesh, 1)), out_shardings=(rep, rep))

    # Fresh state (initialized directly sharded) or the latest checkpoint.
    if latest is None:
        state = jax.jit(init_state, out_shardings=state_sh)(jax.random.key(config.seed))
    else:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
        restored = mngr.restore(latest, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target["params"]),
            train=ocp.args.StandardRestore({"step": target["step"], "opt_state": target["opt_state"]})))
        state = {"step": restored["train"]["step"], "params": restored["params"],
                 "opt_state": restored["train"]["opt_state"]}
        logging.info("resumed from %s at step %d", workdir / CKPT_DIR, latest)
    start = int(jax.device_get(state["step"]))

    def save(step: int) -> None:
        mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            train=ocp.args.StandardSave({"step": state["step"], "opt_state": state["opt_state"]}),
            norm=ocp.args.StandardSave(norm_stats),
            meta=ocp.args.JsonSave({**meta, "step": step})), force=True)

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
        state, metrics = p_train(state, cond, target, wmap)
        done, since = step + 1, since + 1
        bar.update(1)
        evaluate = done % config.eval_steps == 0 or done == total
        if done == 1 or done % config.log_steps == 0 or evaluate:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            row = {"step": done, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                   "step_time": (time.perf_counter() - t_last) / since}
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


def init_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process run (CPU processes talk through gloo); no-op without a coordinator."""
    if not (coordinator_address or num_processes):
        return
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def _define_flags() -> dict:
    """CLI flags, defined only when run as a script (importing this module defines none)."""
    return {
        "config": cli.config_flag(lock=False),
        "workdir": flags.DEFINE_string("workdir", None, "Generator working directory."),
        "coordinator": flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process)."),
        "num_processes": flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process)."),
        "process_id": flags.DEFINE_integer("process_id", None, "This process's index (multi-process)."),
    }


def main(fl: dict) -> None:
    """Config errors (ConfigError, LayoutMismatchError: ValueErrors) exit non-zero via ``cli.run``."""
    init_distributed(fl["coordinator"].value, fl["num_processes"].value, fl["process_id"].value)
    result = train_and_evaluate(fl["config"].value, fl["workdir"].value)
    if jax.process_index() == 0:
        last = result["history"][-1] if result["history"] else {}
        print(json.dumps({"workdir": str(Path(fl["workdir"].value).resolve()), "step": result["step"],
                          "loss": last.get("loss"), "val_loss": result["val_loss"]}))


if __name__ == "__main__":
    cli.run(_define_flags, main, required=("config", "workdir"))
