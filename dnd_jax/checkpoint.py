"""The generator checkpoint format: Orbax steps under ``W/generator/``, checksummed, verified on load.

Written by ``dnd_jax.train``, read by ``dnd_jax.generate`` (and anything else that needs a trained
generator) — neither imports the other. A step folder ``W/generator/<step>/`` holds four Orbax items:

    params/   the decoder's parameters            train/  step + optimizer state (resume only)
    norm/     the normalizer's statistics         meta/   JSON: everything else generation needs

and ``dnd_checksums.json``: the sha256 of every file of the step, written once Orbax has finished
the step. Loading verifies the checksums of the items it reads before handing them to Orbax, then
checks the metadata is self-consistent and every weight is finite; a corrupt, truncated, deleted
or edited file is an :class:`~dnd_jax.errors.IntegrityError` naming it, never a NaN adapter.
Checkpoints written before checksums existed load with a warning (finite checks still apply).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from absl import logging

from dnd_jax.errors import IntegrityError, MissingError

CKPT_DIR = "generator"
FORMAT = "dnd_jax.generator/1"
CHECKSUMS = "dnd_checksums.json"
ITEMS = ("params", "train", "norm", "meta")
LOAD_ITEMS = ("params", "norm", "meta")  # what generation reads (train/ is for resuming only)
_META_KEYS = ("format", "model_name", "in_shape", "out_shape", "layout", "normalizer", "lora", "base_model",
              "train_tasks", "config")


def manager(workdir: str | Path, keep: int | None = None, create: bool = True, cleanup: bool = False):
    """An Orbax ``CheckpointManager`` over ``workdir/generator`` with synchronous saves.

    A step's folder is complete (renamed from a tmp folder) before ``save`` returns; ``cleanup``
    removes tmp folders left by a killed save (the writer passes it; readers never delete).
    """
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=False,
                                        cleanup_tmp_directories=cleanup)
    return ocp.CheckpointManager((Path(workdir) / CKPT_DIR).resolve(), options=opts, item_names=ITEMS)


def step_dir(mngr, step: int) -> Path:
    return Path(str(mngr.directory)) / str(int(step))


# ----------------------------------------------------------------------------------------------
# Checksums.


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".dnd"))


def write_checksums(sdir: Path) -> dict[str, str]:
    """Record the sha256 of every file of a finished step (atomic; process 0 only in multi-process)."""
    sums = {str(p.relative_to(sdir)): _sha256(p) for p in _files(sdir)}
    tmp = sdir / f".dnd{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps({"sha256": sums}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, sdir / CHECKSUMS)
    return sums


def has_checksums(sdir: Path) -> bool:
    return (Path(sdir) / CHECKSUMS).is_file()


def verify(sdir: Path, items: tuple[str, ...] = LOAD_ITEMS) -> bool:
    """Check the files of ``items`` against ``dnd_checksums.json``; False when the step has none.

    Raises :class:`IntegrityError` naming the first missing or changed file.
    """
    sdir = Path(sdir)
    path = sdir / CHECKSUMS
    if not path.is_file():
        return False
    try:
        sums = json.loads(path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{path} is corrupt (not the checksum JSON dnd_jax writes)") from None
    wanted = {rel: h for rel, h in sums.items() if rel.split("/", 1)[0] in items}
    if not any("/" in rel for rel in wanted):
        raise IntegrityError(f"{path} lists no files of {items}: the checksum file was edited or truncated")
    for rel, expected in sorted(wanted.items()):
        f = sdir / rel
        if not f.is_file():
            raise IntegrityError(f"generator checkpoint {sdir} is incomplete: {rel} is missing")
        if _sha256(f) != expected:
            raise IntegrityError(f"generator checkpoint {sdir} is corrupt: {rel} does not match its checksum")
    for item in items:  # a file Orbax would read but the checksums do not know (an added or renamed file)
        for f in _files(sdir / item) if (sdir / item).is_dir() else []:
            if str(f.relative_to(sdir)) not in sums:
                raise IntegrityError(f"generator checkpoint {sdir} was modified: {f.relative_to(sdir)} is not in "
                                     f"{CHECKSUMS}")
    return True


def verify_or_warn(sdir: Path, items: tuple[str, ...] = LOAD_ITEMS) -> None:
    if not verify(sdir, items):
        logging.warning("%s has no %s (written before checksums, or killed right after the save); only finite "
                        "weights are checked", sdir, CHECKSUMS)


# ----------------------------------------------------------------------------------------------
# Saving and reading.


def save(mngr, step: int, state: dict, norm_stats: dict, meta: dict) -> None:
    """One step: params, train (step + optimizer state), norm, meta; then its checksums."""
    import jax
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state["params"]),
        train=ocp.args.StandardSave({"step": state["step"], "opt_state": state["opt_state"]}),
        norm=ocp.args.StandardSave(norm_stats),
        meta=ocp.args.JsonSave({**meta, "step": int(step)})), force=True)
    mngr.wait_until_finished()
    if jax.process_index() == 0:
        write_checksums(step_dir(mngr, step))


def _restore(mngr, step: int, what: str, **items):
    """``mngr.restore`` with Orbax's failures on damaged files turned into one clear error."""
    import orbax.checkpoint as ocp

    try:
        return mngr.restore(step, args=ocp.args.Composite(**items))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise IntegrityError(f"cannot read the {what} of generator checkpoint {step_dir(mngr, step)} (damaged or "
                             f"incomplete files): {type(e).__name__}: {first}") from e


def read_meta(mngr, step: int) -> dict:
    import orbax.checkpoint as ocp

    meta = _restore(mngr, step, "metadata", meta=ocp.args.JsonRestore())["meta"]
    if not isinstance(meta, dict):
        raise IntegrityError(f"the metadata of {step_dir(mngr, step)} is not a JSON object")
    return meta


def check_meta(meta: dict, where: Path) -> None:
    """The metadata says what it must, consistently (catches hand edits the checksums cannot)."""
    from dnd_jax.weights import layout as layout_lib

    if meta.get("format") != FORMAT:
        raise IntegrityError(f"{where} is not a {FORMAT} checkpoint (format {meta.get('format')!r})")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise IntegrityError(f"the metadata of {where} lacks {missing}: edited or truncated")
    try:
        layout = layout_lib.WeightLayout.from_dict(meta["layout"])
        in_shape, out_shape = tuple(int(x) for x in meta["in_shape"]), tuple(int(x) for x in meta["out_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"the metadata of {where} is malformed ({type(e).__name__}: {e})") from None
    if len(in_shape) != 3 or out_shape != (layout.num_tokens, *layout.token_shape):
        raise IntegrityError(f"the metadata of {where} is inconsistent: out_shape {list(out_shape)} vs a layout of "
                             f"{layout.num_tokens} tokens of {list(layout.token_shape)}")
    cond = meta.get("conditions", {})
    if cond and [cond.get("num_prompts"), cond.get("max_len"), cond.get("dim")] != list(in_shape):
        raise IntegrityError(f"the metadata of {where} is inconsistent: conditions {cond} vs in_shape {list(in_shape)}")
    lora = meta["lora"]
    if not isinstance(lora, dict) or not all(k in lora for k in ("r", "lora_alpha", "target_modules")):
        raise IntegrityError(f"the metadata of {where} has no usable LoRA config: {lora!r}")


def non_finite(tree) -> int:
    """How many entries of a pytree of arrays are NaN or inf."""
    import jax

    return int(sum(int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
                   for x in jax.tree.leaves(tree) if np.issubdtype(np.asarray(x).dtype, np.floating)))


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
    task), ``data`` (the training data's fingerprint), ``param_count``, ``config`` (the full
    training config) and ``recipe``.
    """

    model: object
    params: dict
    layout: object
    normalizer: object
    metadata: dict
    config: object
    step: int


def training_progress(workdir: str | Path) -> tuple[int, int] | None:
    """``(latest saved step, the run's total_steps)`` of the generator under ``workdir``; None before its
    first checkpoint. A generator another process is still training has ``latest < total``."""
    if not (Path(workdir) / CKPT_DIR).is_dir():
        return None
    with manager(workdir, create=False) as mngr:
        latest = mngr.latest_step()
        if latest is None:
            return None
        return int(latest), int(read_meta(mngr, latest)["config"]["total_steps"])


def load_generator(workdir: str | Path, step: int | None = None) -> LoadedGenerator:
    """The generator saved under ``workdir`` (latest step by default), verified, on the default device.

    A step with checksums is verified file by file on every load; once Orbax has restored it, its
    weights are also kept in the runtime cache (``dnd_jax.cache``, keyed by the step's checksum file),
    so later loads of the same verified bytes skip Orbax (its import, the restore target traced from
    ``model.init``, the restore). The metadata and finiteness checks run either way.
    """
    workdir = Path(workdir)
    if not (workdir / CKPT_DIR).is_dir():
        raise MissingError(f"no generator checkpoints in {workdir / CKPT_DIR} (run dnd_jax.train)")
    fast = _load_snapshot(workdir, step)
    if fast is not None:
        return fast
    with manager(workdir, create=False) as mngr:
        return load_from(mngr, workdir, step)


SNAPSHOTS = "generator_weights"  # dnd_jax.cache namespace


def _snapshot_key(sdir: Path) -> dict:
    """What a cached copy of a step's weights must match: the (verified) checksum file and the model code."""
    models_dir = Path(__file__).resolve().parent / "models"
    code = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(models_dir.glob("*.py")))).hexdigest()
    return {"format": FORMAT, "snapshot": 1, "checksums": hashlib.sha256((sdir / CHECKSUMS).read_bytes()).hexdigest(),
            "models_code": code}


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _save_snapshot(sdir: Path, params: dict, norm: dict) -> None:
    from dnd_jax import cache

    flat = {**_flatten({"params": params}), **_flatten({"norm": norm})}
    if all("/" in k for k in flat):
        cache.save_arrays(SNAPSHOTS, _snapshot_key(sdir), flat)


def _load_snapshot(workdir: Path, step: int | None) -> LoadedGenerator | None:
    """The step from the runtime cache when its checksums verify and a copy of its weights is cached."""
    from dnd_jax import cache

    if cache.cache_dir() is None:
        return None
    root = workdir / CKPT_DIR
    steps = [int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()]  # Orbax tmp folders: not digits
    if not steps or (step is not None and int(step) not in steps):
        return None  # Orbax's path says what is missing
    step = max(steps) if step is None else int(step)
    sdir = root / str(step)
    if not has_checksums(sdir):
        return None
    key = _snapshot_key(sdir)
    if not verify(sdir):  # raises IntegrityError on any missing, changed or added file
        return None
    flat = cache.load_arrays(SNAPSHOTS, key)
    if flat is None:
        return None
    try:  # what Orbax's JsonRestore reads (this file's bytes were verified above)
        meta = json.loads((sdir / "meta" / "metadata").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    tree = _unflatten(flat)
    if set(tree) != {"params", "norm"}:
        return None
    import jax

    device = jax.local_devices()[0]
    params = jax.tree.map(lambda a: jax.device_put(a, device), tree["params"])
    return _assemble(sdir, step, meta, params, tree["norm"])


def load_from(mngr, workdir: Path, step: int | None) -> LoadedGenerator:
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    steps = list(mngr.all_steps())
    step = mngr.latest_step() if step is None else int(step)
    if step is None or step not in steps:
        raise MissingError(f"generator step {step} not in {workdir / CKPT_DIR} (have {steps})")
    sdir = step_dir(mngr, step)
    verified = verify(sdir)
    if not verified:
        logging.warning("%s has no %s (written before checksums, or killed right after the save); only finite "
                        "weights are checked", sdir, CHECKSUMS)
    meta = read_meta(mngr, step)
    model = _model(meta, sdir)
    device = jax.local_devices()[0]
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *meta["in_shape"]), jnp.float32))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(device)),
                            abstract)
    restored = _restore(mngr, step, "weights", params=ocp.args.StandardRestore(abstract),
                        norm=ocp.args.StandardRestore())
    loaded = _assemble(sdir, step, meta, restored["params"], restored["norm"], model)
    if verified:
        _save_snapshot(sdir, restored["params"], restored["norm"])
    return loaded


def _model(meta: dict, sdir: Path):
    import ml_collections

    from dnd_jax import models

    check_meta(meta, sdir)
    config = ml_collections.ConfigDict(meta["config"])
    try:
        return models.build(meta["model_name"], config.model, tuple(meta["in_shape"]), tuple(meta["out_shape"]))
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise IntegrityError(f"the metadata of {sdir} does not describe a buildable model: {e}") from None


def _assemble(sdir: Path, step: int, meta: dict, params: dict, norm: dict, model=None) -> LoadedGenerator:
    """The checks every load makes (metadata, finite weights, normalizer shapes), then the generator."""
    import ml_collections

    from dnd_jax.weights import layout as layout_lib
    from dnd_jax.weights import normalization

    if model is None:
        model = _model(meta, sdir)
    config = ml_collections.ConfigDict(meta["config"])
    layout = layout_lib.WeightLayout.from_dict(meta["layout"])
    bad = non_finite(params) + non_finite(norm)
    if bad:
        raise IntegrityError(f"generator checkpoint {sdir} holds {bad} non-finite (NaN/inf) weights: it is corrupt")
    stat_shape = list(meta["normalizer"].get("stat_shape", np.shape(norm["mean"])))
    if list(np.shape(norm["mean"])) != stat_shape or np.shape(norm["std"]) != np.shape(norm["mean"]):
        raise IntegrityError(f"the normalizer statistics of {sdir} have shape {list(np.shape(norm['mean']))}, "
                             f"the metadata says {stat_shape}")
    normalizer = normalization.Normalizer(mode=meta["normalizer"]["mode"], mean=np.asarray(norm["mean"]),
                                          std=np.asarray(norm["std"]), mask=layout.mask(),
                                          eps=float(meta["normalizer"]["eps"]))
    return LoadedGenerator(model=model, params=params, layout=layout, normalizer=normalizer,
                           metadata=meta, config=config, step=step)
