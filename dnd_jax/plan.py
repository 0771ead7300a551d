"""The run plan: which tasks a generator trains on, where a run's outputs go, and config checks.

One definition each, used by every verb:

- :func:`training_tasks` — a config's generator training tasks: ``config.tasks`` minus
  ``config.holdout`` and ``config.experiment.cross_domain``;
- :func:`generator_config` / :func:`target_training_tasks` — the experiment's per-target config
  (target held out; cross-domain tasks never trained on, except a cross-domain target's generator
  trains on every in-domain task);
- :func:`output_root` — ``W`` or ``W/variants/<variant>``;
- :func:`find_zoo_workdir` and :func:`validate` — every check that can fail before compute.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from dnd_jax import zoo
from dnd_jax.errors import ConfigError, InputError

OPTIMIZERS = ("adamw", "adam", "sgd")  # trainer.make_optimizer builds each of these
MAX_PADDING = 0.5  # a token shape wasting more of the grid than this is a config error

__all__ = ["ConfigError", "Plan", "condition_prompts", "find_zoo_workdir", "generator_config", "output_root", "target_training_tasks",
           "training_tasks", "validate"]


def training_tasks(config) -> list[str]:
    """The generator's training tasks: ``config.tasks`` minus holdout and cross-domain tasks."""
    excluded = set(config.holdout) | set(config.experiment.get("cross_domain", ()))
    return [t for t in config.tasks if t not in excluded]


def generator_config(config, target: str):
    """The training config for the experiment's target ``target``: every other in-domain task."""
    cfg = config.copy_and_resolve_references()
    cross = tuple(config.experiment.get("cross_domain", ()))
    if target in cross:
        cfg.holdout = tuple(t for t in config.tasks if t in cross)
    else:
        cfg.holdout = (target,) + tuple(t for t in config.tasks if t in cross and t != target)
    return cfg


def target_training_tasks(config, target: str) -> list[str]:
    """:func:`training_tasks` of :func:`generator_config` (what target ``target``'s generator sees)."""
    return training_tasks(generator_config(config, target))


def condition_prompts(config, target: str) -> list[str]:
    """The unlabeled prompts a target's adapter is generated from: never a scored question.

    Evaluation scores the first ``eval.limit`` test examples; the conditions come from the rest of
    the test split (the target's own unlabeled test prompts, as in the DnD protocol). When every
    test example is scored (``eval.limit`` 0) or fewer than ``conditions.num_prompts`` are left, they
    come from the target's train split, which a held-out target's generator never sees.
    """
    from dnd_jax import tasks

    limit = int(config.eval.get("limit", 0) or 0)
    need = int(config.conditions.num_prompts)
    test = tasks.load_examples(target, "test")
    unscored = test[limit:] if limit else []
    if len(unscored) < need:
        unscored = tasks.load_examples(target, "train")
    if len(unscored) < need:
        raise ConfigError(f"'{target}' has {len(unscored)} unscored prompts, fewer than conditions.num_prompts={need}")
    return [e.prompt for e in unscored]


def output_root(config, workdir: str | Path) -> Path:
    """Where a run keeps generators/, adapters/, results/: ``W`` or ``W/variants/<variant>``.

    A variant (a recipe change in the study) shares ``W``'s zoo and evaluation cache, so only what
    the change touches is recomputed.
    """
    variant = config.experiment.get("variant", "")
    return Path(workdir) / "variants" / variant if variant else Path(workdir)


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
    import jax

    from dnd_jax import models, sharding
    from dnd_jax import tasks as registry
    from dnd_jax.weights import layout as layout_lib

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(len(config.tasks) > 0, "config.tasks is empty")
    from dnd_jax import task_files

    task_files.register_config(config)  # tasks declared as files in config.task_files
    not_registered = {}  # training needs only a task's zoo checkpoints + prompts (e.g. an imported zoo)
    for t in (*config.tasks, *config.holdout):
        try:
            registry.get_task(t)
        except KeyError as e:
            not_registered[t] = str(e).strip("'\"")
    for t in config.holdout:
        need(t in config.tasks, not_registered.get(t) or f"holdout task '{t}' is not in config.tasks "
             f"{tuple(config.tasks)}")
    train_tasks = training_tasks(config)
    need(bool(train_tasks), f"no training tasks left: tasks {tuple(config.tasks)} minus holdout "
         f"{tuple(config.holdout)} and cross_domain {tuple(config.experiment.get('cross_domain', ()))}")
    for key in ("batch_size", "total_steps", "log_steps", "ckpt_steps", "eval_steps", "keep_ckpts"):
        need(int(config[key]) > 0, f"config.{key} must be positive, got {config[key]}")
    need(int(config.conditions.num_prompts) > 0 and int(config.conditions.max_len) > 0,
         "conditions.num_prompts and conditions.max_len must be positive")
    need(config.token_weights in ("", "inverse_count"),
         f"token_weights must be '' or 'inverse_count', got '{config.token_weights}'")
    need(config.optax_name in OPTIMIZERS, f"optax_name must be one of {sorted(OPTIMIZERS)}")
    from dnd_jax.weights import centering

    try:
        center = centering.settings(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need(center["mode"] == "mean" or len(train_tasks) >= 2,
         "center.mode='similarity' centers each training task on the others: it needs at least 2 training tasks")
    from dnd_jax import function_loss

    try:
        fl = function_loss.settings(config)
    except InputError as e:
        raise ConfigError(str(e)) from None
    if fl["weight"] > 0:
        for t in train_tasks:
            need(t not in not_registered, f"function_loss needs labelled examples of every training task: {not_registered.get(t)}")
            need(not registry.is_generative(t), f"function_loss supports choice tasks only for now; '{t}' is generative")
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
    for t, err in not_registered.items():
        need(t in have, f"{err}, and it is not in the zoo at {zoo.zoo_dir(zoo_workdir)} either")
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
    # One generator emits one LoRA config: tasks collected or imported with another r, alpha or targets
    # (possibly the same tensor shapes) cannot share it.
    def lora_of(t: str) -> tuple:
        lc = zoo.task_manifest(zoo_workdir, t).get("lora") or {}
        targets = lc.get("target_modules")
        return (lc.get("r"), float(lc.get("lora_alpha") or 0),
                tuple(sorted(targets)) if isinstance(targets, (list, tuple)) else targets)

    first_lora = lora_of(train_tasks[0])
    for t in train_tasks[1:]:
        need(lora_of(t) == first_lora, f"zoo task '{t}' has LoRA (r, alpha, targets) {lora_of(t)} but "
             f"'{train_tasks[0]}' has {first_lora}: one generator needs one LoRA config")
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
