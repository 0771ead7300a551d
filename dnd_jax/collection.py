"""Collecting the checkpoint zoo (library; the command line is ``python -m dnd_jax.collect``).

For each task: fine-tune a LoRA on the frozen base model for ``zoo.pretrain_steps``, then keep
training for ``zoo.save_steps`` steps and keep a checkpoint every ``zoo.save_every`` of them (the
DnD recipe: many nearby checkpoints per task). Writes the layout documented in :mod:`dnd_jax.zoo`.

Crash-safe and resumable: checkpoints are written to a temp folder and renamed; a resume state
(LoRA tensors + optimizer) is saved along the way; a rerun skips finished tasks and checkpoints,
redoes partial or corrupt ones, and produces the same files as an uninterrupted run.

Parallel collection: ``--shard=I/N`` collects every N-th task starting at the I-th (interleaved, so
N workers advance through a pool order together), one process per shard, on one machine or many
sharing the workdir. Each task folder is locked while it is collected, and the zoo summary is merged
under its own lock. On 2 cores, two 1-thread shards collect 1.4x as many LoRA steps per second as one
2-thread process (docs/scaling/README.md).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from dnd_jax import assets, base_model, locking, lora_train, task_files, tasks, zoo
from dnd_jax.errors import InputError, LockedError, ResumeMismatchError

RESUME_FILE = "resume.pt"
LOCK_POLL_S = 30.0  # how often a shard looks again at a task another process holds


def _lora_dict(config, ref: base_model.BaseModelRef) -> dict:
    """The LoRA config; ``target_modules='all-linear'`` becomes the model's own linear layer names."""
    lc = config.lora
    return {"r": int(lc.r), "lora_alpha": float(lc.alpha), "lora_dropout": float(lc.dropout),
            "target_modules": base_model.resolve_target_modules(lc.target_modules, ref)}


def _recipe(config, ref: base_model.BaseModelRef) -> dict:
    """Everything that determines a task's checkpoints; a zoo never mixes two recipes.

    ``torch_threads`` and ``activation_checkpointing`` are process settings, not a recipe: the threads are
    recorded as 0 and the checkpointing left out, so a zoo can be extended with other settings (hashes of
    zoos collected before stay valid).
    """
    zoo_recipe = dict(config.zoo.to_dict(), torch_threads=0)
    zoo_recipe.pop("activation_checkpointing", None)
    if zoo_recipe.get("data_seed", -1) < 0:  # default: data order follows ``seed`` (zoos from before keep their hash)
        zoo_recipe.pop("data_seed", None)
    return {"base_model_sha": ref.sha, "lora": _lora_dict(config, ref), "zoo": zoo_recipe,
            "answer_format": config.answer_format}


def _recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def data_seed(zc) -> int:
    """The seed of the batch order: ``zoo.data_seed`` when set (>= 0), else ``zoo.seed`` (LoRA init)."""
    return int(zc.data_seed) if zc.get("data_seed", -1) >= 0 else int(zc.seed)


def kept_steps(zc) -> list[int]:
    """Steps at which checkpoints are kept: every ``save_every`` over the last ``save_steps``."""
    return [zc.pretrain_steps + k for k in range(zc.save_every, zc.save_steps + 1, zc.save_every)]


def _write_prompts(path: Path, examples: list[tasks.Example], limit: int, seed: int) -> int:
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(examples))[:limit] if limit else range(len(examples))
    lines = [json.dumps({"prompt": examples[i].prompt, "id": examples[i].id}, ensure_ascii=False) for i in order]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(lines)


def write_checkpoint(model, out: Path, meta: dict) -> None:
    """save_pretrained into a temp folder, record the weights' sha256, then rename into place."""
    tmp = assets.atomic_dir(out)
    try:
        model.save_pretrained(tmp.path)
        meta = dict(meta, sha256=assets.file_sha256(tmp.path / zoo.ADAPTER_WEIGHTS))
        assets.write_json_atomic(tmp.path / zoo.CKPT_META, meta)
        tmp.commit(replace=True)
    except BaseException:
        tmp.abort()
        raise


def _clean_partials(tdir: Path, steps: list[int], upto: int) -> list[int]:
    """Remove temp leftovers and invalid checkpoint folders; return kept steps <= upto that are missing."""
    for junk in tdir.glob(".ckpt_*"):
        shutil.rmtree(junk, ignore_errors=True)
    missing = []
    for s in steps:
        path = tdir / zoo.ckpt_name(s)
        if path.exists() and not zoo.is_valid_checkpoint(path):
            shutil.rmtree(path)
        if s <= upto and not path.exists():
            missing.append(s)
    return missing


def collect_task(config, workdir: Path, ref: base_model.BaseModelRef, task: str) -> dict:
    """Train one task's LoRA and keep its checkpoints (resuming if a previous run was cut short)."""
    import torch

    zc = config.zoo
    tdir = zoo.task_dir(workdir, task)
    tdir.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(config, ref)
    steps = kept_steps(zc)
    manifest_path = tdir / "manifest.json"
    old = _finished(tdir, _recipe_hash(recipe), steps)
    if old is not None:
        print(f"[collect] {task}: complete, skipping")
        return old

    train = tasks.load_examples(task, "train", limit=zc.max_train_examples or None)
    num_prompts = _write_prompts(tdir / "prompts.jsonl", list(tasks.load_examples(task, "train")),
                                 zc.num_prompts_saved, zc.seed)

    resume_path = tdir / RESUME_FILE
    resume = lora_train.load_resume_state(resume_path)
    if resume is not None and resume.get("recipe_hash") != _recipe_hash(recipe):
        resume = None
    done_upto = int(resume["step"]) if resume is not None else 0
    if _clean_partials(tdir, steps, done_upto):
        resume = None  # a checkpoint before the resume point is gone: redo the task from the start
        _clean_partials(tdir, steps, 0)

    if zc.torch_threads:
        torch.set_num_threads(int(zc.torch_threads))
    model, tok = base_model.load(ref)
    lc = config.lora
    model = lora_train.make_lora_model(model, lc.r, lc.alpha, lc.dropout, recipe["lora"]["target_modules"], zc.seed)
    lora_train.checkpoint_activations(model, int(zc.get("activation_checkpointing", 0)))

    def on_keep(step: int, loss: float, wall: float) -> None:
        out = tdir / zoo.ckpt_name(step)
        if not zoo.is_valid_checkpoint(out):
            write_checkpoint(model, out, {"task": task, "step": step, "loss": loss})

    def save_resume(state: dict) -> None:
        lora_train.save_resume_state(resume_path, dict(state, recipe_hash=_recipe_hash(recipe)))

    t0 = time.time()
    result = lora_train.train_lora(
        model, tok, train, answer_format=config.answer_format, max_len=zc.max_len, batch_size=zc.batch_size,
        lr=zc.lr, weight_decay=zc.weight_decay, warmup_steps=zc.warmup_steps,
        total_steps=zc.pretrain_steps + zc.save_steps, seed=data_seed(zc), keep_step=lambda s: s in steps,
        on_keep=on_keep, resume=resume, save_resume=save_resume, desc=f"collect {task}",
    )
    ckpts = [zoo.checkpoint_meta(tdir / zoo.ckpt_name(s)) for s in steps]
    manifest = {
        "task": task,
        "base_model": ref.to_dict(),
        "lora": recipe["lora"],
        "answer_format": config.answer_format,
        "recipe": recipe,
        "recipe_hash": _recipe_hash(recipe),
        "split_sizes": tasks.split_sizes([task])[task],
        "train_examples_used": len(train),
        "num_prompts": num_prompts,
        "total_steps": zc.pretrain_steps + zc.save_steps,
        "checkpoints": [{"step": c["step"], "loss": c["loss"], "dir": zoo.ckpt_name(c["step"])} for c in ckpts],
        "final_loss": result["final_loss"],
        "first_loss": result["losses"][0] if result["losses"] else None,
        "train_wall_time_s": result["wall_time_s"],
        "train_cpu_time_s": result["cpu_time_s"],
        "torch_threads": torch.get_num_threads(),
        "activation_checkpointing": int(zc.get("activation_checkpointing", 0)),
        "session_wall_time_s": time.time() - t0,
    }
    assets.write_json_atomic(manifest_path, manifest)
    resume_path.unlink(missing_ok=True)
    return manifest


def _finished(tdir: Path, want_hash: str, steps: list[int]) -> dict | None:
    """The task's manifest if its collection finished (manifest written, every kept checkpoint valid),
    else None; a manifest of another recipe is a :class:`ResumeMismatchError`."""
    path = tdir / "manifest.json"
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("recipe_hash") != want_hash:
        raise ResumeMismatchError(f"{tdir} was collected with another recipe ({old.get('recipe_hash')}, this config: "
                                  f"{want_hash}); use another --workdir or delete that task folder")
    return old if all(zoo.is_valid_checkpoint(tdir / zoo.ckpt_name(s)) for s in steps) else None


def incomplete_tasks(config, workdir: str | Path) -> list[str]:
    """The tasks of ``config.tasks`` whose collection is not finished in ``workdir`` (no manifest, another
    recipe's manifest, or a checkpoint missing or failing its checksum): what a collect run would still do."""
    workdir = Path(workdir)
    task_files.register_config(config)
    ref = base_model.resolve(config.base_model, workdir)
    want = _recipe_hash(_recipe(config, ref))
    steps = kept_steps(config.zoo)
    out = []
    for task in config.tasks:
        try:
            if _finished(zoo.task_dir(workdir, task), want, steps) is None:
                out.append(task)
        except ResumeMismatchError:
            out.append(task)
    return out


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N; None or "" -> None (no sharding)."""
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/2), got '{spec}'") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {spec}: need N >= 1 and 0 <= I < N")
    return i, n


def collect(config, workdir: str | Path, only: list[str] | None = None, shard: str | None = None) -> dict:
    """Collect the zoo for ``config.tasks`` (or ``only``); returns the zoo manifest.

    Unsharded, holds ``workdir``'s lock (:mod:`dnd_jax.locking`): a second collect on it is refused.
    With ``shard="I/N"``, collects ``names[I::N]``, then helps with the other shards' tasks from the end
    of the list (so a shard whose tasks were shorter does not sit idle), locking each task folder while
    it works on it: a task another live process holds is left to that process (two processes never
    work on one task), a task a dead process left half-done is resumed. It returns when every task is
    complete, waiting for the ones other processes hold.
    """
    workdir = Path(workdir)
    part = parse_shard(shard)
    task_files.register_config(config)  # tasks declared as files in config.task_files
    names = list(only or config.tasks)
    if int(config.zoo.get("activation_checkpointing", 0)) < 0:
        raise InputError(f"zoo.activation_checkpointing must be >= 0 (0 = off), got {config.zoo.activation_checkpointing}")
    for name in names:
        tasks.require_data(name)  # unknown or unprepared task -> a one-line error before any compute
        if name not in config.tasks:
            raise InputError(f"task '{name}' is not in config.tasks {tuple(config.tasks)}")
    if part is not None:
        own = names[part[0]::part[1]]
        locking.refuse_if_held(workdir, "a shard")
        return _collect(config, workdir, own, helping=[n for n in reversed(names) if n not in own])
    with locking.workdir_lock(workdir, "collect"):
        return _collect(config, workdir, names)


def _collect(config, workdir: Path, names: list[str], helping: list[str] | None = None) -> dict:
    """Collect ``names``; as a shard (``helping`` not None), then ``helping``, leaving held tasks to their holders."""
    ref = base_model.resolve(config.base_model, workdir)
    summaries = {}

    def attempt(name: str) -> LockedError | None:  # collect it, or the error naming who holds it
        try:
            with locking.workdir_lock(zoo.task_dir(workdir, name), "collect"):
                summaries[name] = collect_task(config, workdir, ref, name)
        except LockedError as e:
            if helping is None:
                raise
            return e
        return None

    left = []
    for name in [*names, *(helping or [])]:
        if (held := attempt(name)) is not None:
            left.append(name)
            print(f"[collect] {name}: left to the process collecting it ({held})", flush=True)
    # A shard ends with its zoo complete: it waits for the tasks it left until their locks are released,
    # then finishes any its holder did not (a holder that died leaves a stale lock, taken over here).
    if left:
        print(f"[collect] waiting for other processes to finish {left}", flush=True)
    while left:
        time.sleep(LOCK_POLL_S)
        left = [name for name in left if attempt(name) is not None]
    zdir = zoo.zoo_dir(workdir)
    zdir.mkdir(parents=True, exist_ok=True)
    with locking.file_lock(zdir / ".manifest.lock"):  # shards merge their summaries one at a time (waiting)
        zoo_manifest_path = zdir / "manifest.json"
        previous = json.loads(zoo_manifest_path.read_text())["tasks"] if zoo_manifest_path.is_file() else {}
        previous.update({
            n: {k: m[k] for k in ("final_loss", "first_loss", "train_wall_time_s", "total_steps", "split_sizes",
                                  "num_prompts")} | {"num_checkpoints": len(m["checkpoints"])}
            for n, m in summaries.items()
        })
        manifest = {"base_model": ref.to_dict(), "lora": _lora_dict(config, ref),
                    "answer_format": config.answer_format, "zoo": config.zoo.to_dict(), "tasks": previous}
        assets.write_json_atomic(zoo_manifest_path, manifest)
    print(summary_table(manifest))
    return manifest


def summary_table(manifest: dict) -> str:
    rows = ["| task | steps | ckpts | first loss | final loss | train wall (s) |", "|---|---|---|---|---|---|"]
    for name, t in sorted(manifest["tasks"].items()):
        rows.append(f"| {name} | {t['total_steps']} | {t['num_checkpoints']} | {t['first_loss']:.3f} | "
                    f"{t['final_loss']:.3f} | {t['train_wall_time_s']:.0f} |")
    return "\n".join(rows)
