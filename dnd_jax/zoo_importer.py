"""Importing a folder of plain peft LoRA adapters as a zoo (library; the command line is
``python -m dnd_jax.zoo_import``).

    python -m dnd_jax.zoo_import --src MY_ADAPTERS --workdir W [--base_model HF_DIR] [--prompts DIR]
    python -m dnd_jax.train --config my_config.py --workdir W/generator     # config.tasks = the imported tasks

``--src`` holds one folder per task. A task folder is either a peft adapter itself
(``adapter_model.safetensors`` + ``adapter_config.json``: one checkpoint) or a folder of them (several
checkpoints, e.g. ``checkpoint-100/``, ``checkpoint-200/``; ordered by the number in their name).
Each task needs its unlabeled prompts, found in this order: ``--prompts DIR/<task>.jsonl|.txt``,
``<src>/<task>/prompts.jsonl|.txt``, ``<src>/<task>.jsonl|.txt``, or the train split of a registry
task of that name. ``.txt`` is one prompt per line; ``.jsonl`` has a ``prompt`` field per line.

Every adapter is checked before anything is written: safetensors weights (pickled ``.bin`` files are
never read), a LoRA ``adapter_config.json`` without features a generated adapter could not carry
(DoRA, rsLoRA, per-module ranks or alphas, ``modules_to_save``, trained biases), peft's saved key
names, finite values, and one layout shared by all of them (same tensor names and shapes, same r,
alpha and target modules): the odd one out is named against the majority layout. Any problem is an
error; ``--skip_invalid`` instead leaves the bad checkpoints out and reports each with its reason
(on stdout and in the zoo manifest's ``skipped``). Nothing is skipped silently.

The result is the layout of :mod:`dnd_jax.zoo` (``W/zoo/<task>/ckpt_<step>/`` with
``dnd_checkpoint.json`` and its sha256, ``prompts.jsonl``, task and zoo manifests), written one task
at a time into a temp folder and renamed into place; a task already in ``W/zoo`` is refused.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from dnd_jax import assets, locking, zoo
from dnd_jax.errors import InputError

PROMPT_SUFFIXES = (".jsonl", ".txt")
_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LORA_KEY = re.compile(r"\.lora_(A|B|embedding_A|embedding_B)\.weight$")
# adapter_config fields whose non-default values change the adapter's math beyond (r, alpha, targets).
_UNSUPPORTED = {"use_dora": (False, None), "use_rslora": (False, None), "rank_pattern": ({}, None),
                "alpha_pattern": ({}, None), "modules_to_save": (None, []), "bias": ("none", None),
                "fan_in_fan_out": (False, None)}


class ZooImportError(InputError):
    """The source folder cannot become a zoo (the message lists every problem, each naming its folder)."""


@dataclasses.dataclass
class Checkpoint:
    """One checked source adapter."""

    task: str
    src: Path
    step: int
    tensors: dict[str, np.ndarray]
    config: dict

    @property
    def signature(self) -> tuple:
        """What must be equal across a zoo: tensor names + shapes, r, alpha, target modules."""
        shapes = tuple(sorted((k, tuple(v.shape)) for k, v in self.tensors.items()))
        targets = self.config.get("target_modules")
        targets = tuple(sorted(targets)) if isinstance(targets, list) else targets
        return shapes, int(self.config.get("r", 0)), float(self.config.get("lora_alpha", 0)), targets


def _is_adapter_dir(d: Path) -> bool:
    return any((d / f).exists() for f in (zoo.ADAPTER_CONFIG, zoo.ADAPTER_WEIGHTS, "adapter_model.bin"))


def _hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name == "__pycache__"


def _natural(p: Path) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def discover(src: Path) -> tuple[dict[str, list[Path]], list[str]]:
    """``{task: [adapter folders in order]}`` and the problems found (folders that are not adapters)."""
    if not src.is_dir():
        raise ZooImportError(f"--src {src} is not a folder")
    found: dict[str, list[Path]] = {}
    problems = []
    for child in sorted((c for c in src.iterdir() if c.is_dir() and not _hidden(c)), key=_natural):
        if not _TASK_NAME.match(child.name):
            problems.append(f"{child}: '{child.name}' is not a usable task name (letters, digits, _ . -)")
            continue
        if _is_adapter_dir(child):
            found[child.name] = [child]
            continue
        subs = sorted((d for d in child.iterdir() if d.is_dir() and not _hidden(d)), key=_natural)
        for d in subs:
            if not _is_adapter_dir(d):
                problems.append(f"{d}: not a peft adapter folder (no {zoo.ADAPTER_CONFIG} or {zoo.ADAPTER_WEIGHTS})")
        ckpts = [d for d in subs if _is_adapter_dir(d)]
        if ckpts:
            found[child.name] = ckpts
        elif not subs:
            problems.append(f"{child}: neither a peft adapter folder nor a folder of them")
    if not found and not problems:
        problems.append(f"{src}: holds no task folders (one folder per task, each an adapter or a folder of them)")
    return found, problems


def _steps(paths: list[Path]) -> list[int]:
    """Steps from the trailing number of each folder name when they are unique, else 1..n."""
    nums = [re.findall(r"(\d+)", p.name) for p in paths]
    steps = [int(n[-1]) if n else -1 for n in nums]
    if len(paths) > 1 and min(steps) >= 0 and len(set(steps)) == len(steps):
        return steps
    if len(paths) == 1 and steps[0] >= 0:
        return steps
    return list(range(1, len(paths) + 1))


def read_checkpoint(task: str, path: Path, step: int) -> Checkpoint:
    """Load and check one adapter folder; raises :class:`ZooImportError` naming it and the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, cfg_path = path / zoo.ADAPTER_WEIGHTS, path / zoo.ADAPTER_CONFIG
    if not weights.is_file():
        hint = " (found adapter_model.bin: pickled weights are never read; re-save with safetensors)" \
            if (path / "adapter_model.bin").exists() else ""
        raise ZooImportError(f"{path}: no {zoo.ADAPTER_WEIGHTS}{hint}")
    if not cfg_path.is_file():
        raise ZooImportError(f"{path}: no {zoo.ADAPTER_CONFIG}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ZooImportError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ZooImportError(f"{cfg_path}: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise ZooImportError(f"{path}: a {config.get('peft_type')} adapter, not LORA")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ZooImportError(f"{cfg_path}: no '{key}'")
    for key, ok in _UNSUPPORTED.items():
        if key in config and config[key] not in ok:
            raise ZooImportError(f"{path}: {key}={config[key]!r} is not supported (generated adapters carry only "
                                 "r, lora_alpha and target_modules)")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ZooImportError(f"{weights}: unreadable safetensors ({e})") from None
    if not tensors:
        raise ZooImportError(f"{weights}: no tensors")
    arrays = {}
    for k, t in tensors.items():
        if ".default." in k or not _LORA_KEY.search(k):
            raise ZooImportError(f"{path}: tensor '{k}' is not a LoRA factor under peft's saved names "
                                 "(...lora_A.weight / ...lora_B.weight)")
        a = t.float().numpy()
        if not np.isfinite(a).all():
            raise ZooImportError(f"{path}: tensor '{k}' has {int((~np.isfinite(a)).sum())} non-finite values")
        arrays[k] = a
    r = int(config["r"])
    for k, a in arrays.items():
        if a.ndim != 2:
            raise ZooImportError(f"{path}: tensor '{k}' has shape {a.shape}, expected a matrix")
        if ("lora_A" in k and a.shape[0] != r) or ("lora_B" in k and a.shape[1] != r):
            raise ZooImportError(f"{path}: tensor '{k}' has shape {a.shape}, which contradicts r={r}")
    return Checkpoint(task, path, step, arrays, config)


def _read_prompts(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ZooImportError(f"prompts file {path} is not valid UTF-8 (byte {e.start})") from None
    prompts = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
                prompt = rec["prompt"]
            except (ValueError, KeyError, TypeError):
                raise ZooImportError(f"{path}:{i}: expected a JSON object with a 'prompt' field") from None
            if not isinstance(prompt, str):
                raise ZooImportError(f"{path}:{i}: 'prompt' must be a text")
        else:
            prompt = line
        if prompt.strip():
            prompts.append(prompt.strip())
    if not prompts:
        raise ZooImportError(f"prompts file {path} has no prompts")
    return prompts


def find_prompts(task: str, src: Path, prompts_dir: Path | None) -> tuple[list[str], str]:
    """(prompts, where they came from) for one task (see the module docstring for the search order)."""
    candidates = []
    if prompts_dir is not None:
        candidates += [prompts_dir / f"{task}{s}" for s in PROMPT_SUFFIXES]
    candidates += [src / task / f"prompts{s}" for s in PROMPT_SUFFIXES]
    candidates += [src / f"{task}{s}" for s in PROMPT_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return _read_prompts(c), str(c)
    from dnd_jax import tasks

    try:
        tasks.get_task(task)
    except KeyError:
        looked = ", ".join(str(c) for c in candidates)
        raise ZooImportError(f"task '{task}': no prompts file (looked for {looked}) and no registry task of that "
                             "name") from None
    return [e.prompt for e in tasks.load_examples(task, "train")], f"registry:{task}/train"


def _layout_problem(ck: Checkpoint, ref: Checkpoint) -> str:
    a, b = dict(ck.signature[0]), dict(ref.signature[0])
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    if missing:
        return f"missing tensor '{missing[0]}'" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
    if extra:
        return f"unexpected tensor '{extra[0]}'" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
    for k in b:
        if a[k] != b[k]:
            return f"tensor '{k}' has shape {a[k]}, not {b[k]}"
    names = ("r", "lora_alpha", "target_modules")
    for name, x, y in zip(names, ck.signature[1:], ref.signature[1:]):
        if x != y:
            return f"{name}={x!r}, not {y!r}"
    return "differs"


def _write_task(out: Path, ckpts: list[Checkpoint], prompts: list[str], manifest: dict) -> None:
    from safetensors.numpy import save_file

    tmp = assets.atomic_dir(out)
    try:
        lines = [json.dumps({"prompt": p, "id": str(i)}, ensure_ascii=False) for i, p in enumerate(prompts)]
        (tmp.path / "prompts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for ck in ckpts:
            cdir = tmp.path / zoo.ckpt_name(ck.step)
            cdir.mkdir()
            save_file({k: np.ascontiguousarray(ck.tensors[k], np.float32) for k in sorted(ck.tensors)},
                      str(cdir / zoo.ADAPTER_WEIGHTS), metadata={"format": "pt"})
            (cdir / zoo.ADAPTER_CONFIG).write_text(json.dumps(ck.config, indent=2, sort_keys=True) + "\n")
            assets.write_json_atomic(cdir / zoo.CKPT_META, {
                "task": ck.task, "step": ck.step, "loss": None, "source": str(ck.src.resolve()),
                "sha256": assets.file_sha256(cdir / zoo.ADAPTER_WEIGHTS)})
        assets.write_json_atomic(tmp.path / "manifest.json", manifest)
        tmp.commit(replace=False)
    except BaseException:
        tmp.abort()
        raise


def import_zoo(src: str | Path, workdir: str | Path, *, base_model_path: str | None = None,
               prompts_dir: str | Path | None = None, skip_invalid: bool = False,
               log=print) -> dict:
    """Check every adapter under ``src``, then write ``workdir/zoo``; returns the zoo manifest.

    Raises :class:`ZooImportError` listing every problem (or, with ``skip_invalid``, leaves the bad
    checkpoints out and records each in the manifest's ``skipped`` with its reason). Holds
    ``workdir``'s lock (:mod:`dnd_jax.locking`): a second writer (an import, a collect) is refused.
    """
    if not Path(src).is_dir():
        raise ZooImportError(f"--src {src} is not a folder")
    with locking.workdir_lock(Path(workdir), "zoo_import"):
        return _import_zoo(Path(src), Path(workdir), base_model_path=base_model_path, prompts_dir=prompts_dir,
                           skip_invalid=skip_invalid, log=log)


def _import_zoo(src: Path, workdir: Path, *, base_model_path: str | None, prompts_dir: str | Path | None,
                skip_invalid: bool, log) -> dict:
    from dnd_jax import base_model

    prompts_dir = Path(prompts_dir) if prompts_dir else None
    found, problems = discover(src)  # problems: skippable with skip_invalid; fatal: never
    fatal: list[str] = []
    skipped: list[dict] = [{"path": p.split(": ", 1)[0], "reason": p.split(": ", 1)[1]} for p in problems]
    existing = set(zoo.tasks(workdir)) if zoo.zoo_dir(workdir).is_dir() else set()
    for task in found:
        if task in existing or zoo.task_dir(workdir, task).exists():
            raise ZooImportError(f"task '{task}' is already in {zoo.zoo_dir(workdir)}; import into another --workdir "
                                 "(nothing there was changed)")

    ckpts: dict[str, list[Checkpoint]] = {}
    for task, paths in found.items():
        for path, step in zip(paths, _steps(paths)):
            try:
                ckpts.setdefault(task, []).append(read_checkpoint(task, path, step))
            except ZooImportError as e:
                problems.append(str(e))
                skipped.append({"path": str(path), "reason": str(e).split(": ", 1)[-1]})
    all_ckpts = [c for cs in ckpts.values() for c in cs]
    if all_ckpts:
        counts = Counter(c.signature for c in all_ckpts)
        majority = max(counts.values())
        ref_sig = next(c.signature for c in all_ckpts if counts[c.signature] == majority)
        ref = next(c for c in all_ckpts if c.signature == ref_sig)
        for task in list(ckpts):
            keep = []
            for c in ckpts[task]:
                if c.signature == ref_sig:
                    keep.append(c)
                    continue
                why = f"layout differs from {ref.src} (shared by {majority} adapters): {_layout_problem(c, ref)}"
                problems.append(f"{c.src}: {why}")
                skipped.append({"path": str(c.src), "reason": why})
            ckpts[task] = keep
        bases = {c.config.get("base_model_name_or_path") or "" for c in all_ckpts if c.signature == ref_sig}
        if base_model_path is None and len(bases) > 1:
            fatal.append(f"{src}: adapters name different base models {sorted(bases)}; pass --base_model HF_DIR "
                            "to name the one they all apply to")
    prompts: dict[str, tuple[list[str], str]] = {}
    for task in found:
        if not ckpts.get(task):
            if skip_invalid:
                skipped.append({"path": str(src / task), "reason": "no valid checkpoint left"})
            else:
                problems.append(f"{src / task}: no valid checkpoint")
            continue
        try:
            prompts[task] = find_prompts(task, src, prompts_dir)
        except ZooImportError as e:
            fatal.append(str(e))
    if not skip_invalid:
        fatal = problems + fatal
    if fatal or not prompts:
        listed = fatal or problems or [f"{src}: nothing to import"]
        raise ZooImportError(f"{len(listed)} problem(s) importing {src}; nothing was written:\n  - "
                             + "\n  - ".join(listed))

    ref_ckpt = next(c for cs in ckpts.values() for c in cs)
    zpath = zoo.zoo_dir(workdir) / "manifest.json"
    previous = json.loads(zpath.read_text()) if zpath.is_file() else {}
    if base_model_path:
        ref = base_model.resolve({"kind": "hf_dir", "path": str(base_model_path)})
        base = ref.to_dict()
    else:
        name = ref_ckpt.config.get("base_model_name_or_path") or "unknown"
        base = {"name": name, "path": name, "sha": ""}
    targets = ref_ckpt.config["target_modules"]
    lora = {"r": int(ref_ckpt.config["r"]), "lora_alpha": float(ref_ckpt.config["lora_alpha"]),
            "lora_dropout": float(ref_ckpt.config.get("lora_dropout") or 0.0),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets}
    old_lora = previous.get("lora")
    if old_lora:
        def key(lc: dict) -> tuple:
            t = lc.get("target_modules")
            return lc.get("r"), float(lc.get("lora_alpha") or 0), tuple(sorted(t)) if isinstance(t, list) else t

        if key(old_lora) != key(lora):
            raise ZooImportError(f"{src}: these adapters have LoRA (r, alpha, targets) {key(lora)}, the zoo at "
                                 f"{zoo.zoo_dir(workdir)} has {key(old_lora)}; import into another --workdir")
    summaries = {}
    for task, (ps, where) in prompts.items():
        cs = ckpts[task]
        manifest = {"task": task, "imported_from": str((src / task).resolve()), "prompts_from": where,
                    "base_model": base, "lora": lora, "answer_format": None, "num_prompts": len(ps),
                    "checkpoints": [{"step": c.step, "loss": None, "dir": zoo.ckpt_name(c.step),
                                     "source": str(c.src.resolve())} for c in cs],
                    "total_steps": None, "final_loss": None, "first_loss": None, "train_wall_time_s": None,
                    "split_sizes": {}, "train_examples_used": None}
        _write_task(zoo.task_dir(workdir, task), cs, ps, manifest)
        summaries[task] = {"num_checkpoints": len(cs), "num_prompts": len(ps), "imported_from": manifest["imported_from"]}
        log(f"[import] {task}: {len(cs)} checkpoint(s), {len(ps)} prompts ({where})")
    for s in skipped:
        log(f"[import] skipped {s['path']}: {s['reason']}")
    zmanifest = {"base_model": previous.get("base_model", base), "lora": previous.get("lora", lora),
                 "answer_format": previous.get("answer_format"),
                 "tasks": {**previous.get("tasks", {}), **summaries},
                 "skipped": previous.get("skipped", []) + skipped}
    assets.write_json_atomic(zpath, zmanifest)
    log(f"[import] wrote {zoo.zoo_dir(workdir)}: tasks {sorted(summaries)}; train with config.tasks = "
        f"{tuple(sorted(summaries))}")
    return zmanifest
