"""Tasks defined by files, declared in a config: no code per task.

    config.task_files = {
        "my_quiz": "data/my_quiz.jsonl",                     # short form: one file, seeded split
        "my_csv": dict(path="data/my.csv", test_path="data/my_test.csv", family="mine",
                       test_size=0, template="Question: {prompt}\\nAnswer:", title="My CSV quiz"),
    }

A file is JSONL (one JSON object per line), CSV (a header row) or a ``datasets.save_to_disk``
folder (a ``Dataset``, or a ``DatasetDict`` whose ``train``/``test`` splits are used as such). Each
record is a multiple-choice example:

- ``prompt`` (text, required): the question as posed, without choices or answer; it is also the
  unlabeled condition text the generator sees;
- ``choices``: two or more texts (JSONL/datasets: a list; CSV: a ``choices`` column holding a JSON
  list, or columns ``choice_1``, ``choice_2``, ... in order, empty trailing cells dropped);
- ``answer``: the gold choice as a 0-based index, as the exact choice text, or as its label;
- optional ``id`` (default ``<task>-<row>``), ``labels`` (mc labels, default A, B, C, ...),
  ``split`` (``train``/``test``: the file's own split, used like an official test set).

A record with a gold ``completion`` instead of ``choices`` and ``answer`` is a generative example
(prompt + gold continuation; the registry's ``generative`` kind: trained on the completion, scored by
bits per byte). A file is all choice or all generative; ``kind`` in the declaration may say which.

Splits follow the built-in rules (:mod:`dnd_jax.tasks`): a ``test_path`` or ``split`` column gives
the test set, otherwise a seeded split puts ``test_size`` (default ``tasks.TEST_SIZE``, at most half)
examples into ``test``; train examples whose prompt also appears in ``test`` are dropped; ``family``
groups tasks that must never be split between training and a held-out target. Files are parsed and
checked when registered, so a bad row fails before any compute, naming file, row and problem.
Relative paths are resolved against the current directory.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnd_jax import tasks
from dnd_jax.errors import InputError

DEFAULT_TEMPLATE = "{prompt}\nAnswer:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_OPTIONS = ("path", "test_path", "family", "test_size", "template", "title", "kind")
KINDS = ("choice", "generative")
_REGISTERED: dict[str, str] = {}  # task name -> fingerprint of (options, file contents) registered


class TaskFileError(InputError):
    """A task file or its declaration is unusable (the message names file, row and problem)."""


@dataclasses.dataclass(frozen=True)
class FileTask:
    """A parsed task-file declaration."""

    name: str
    path: Path
    test_path: Path | None = None
    family: str = ""
    test_size: int = 0
    template: str = DEFAULT_TEMPLATE
    title: str = ""
    kind: str = ""  # '' = from the records


def _declaration(name: str, value: Any) -> FileTask:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaskFileError(f"task_files: '{name}' is not a usable task name (letters, digits, _ . -; it becomes "
                            "a folder name)")
    if isinstance(value, (str, Path)):
        opts: dict = {"path": value}
    elif isinstance(value, Mapping) or hasattr(value, "to_dict"):
        opts = dict(value.to_dict() if hasattr(value, "to_dict") else value)
    else:
        raise TaskFileError(f"task_files['{name}'] must be a path or a dict with 'path', got {type(value).__name__}")
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise TaskFileError(f"task_files['{name}']: unknown option(s) {unknown} (known: {list(_OPTIONS)})")
    if not opts.get("path"):
        raise TaskFileError(f"task_files['{name}'] has no 'path'")
    template = str(opts.get("template") or DEFAULT_TEMPLATE)
    if "{prompt}" not in template:
        raise TaskFileError(f"task_files['{name}']: template {template!r} must contain '{{prompt}}'")
    try:
        template.format(prompt="")
    except (KeyError, IndexError, ValueError) as e:
        raise TaskFileError(f"task_files['{name}']: template {template!r} is not a format string with only "
                            f"{{prompt}} ({e})") from None
    test_size = opts.get("test_size") or 0
    if not isinstance(test_size, int) or isinstance(test_size, bool) or test_size < 0:
        raise TaskFileError(f"task_files['{name}']: test_size must be a non-negative int, got {test_size!r}")
    kind = str(opts.get("kind") or "")
    if kind and kind not in KINDS:
        raise TaskFileError(f"task_files['{name}']: kind must be one of {KINDS}, got {kind!r}")
    return FileTask(name=name, path=Path(opts["path"]).resolve(), kind=kind,
                    test_path=Path(opts["test_path"]).resolve() if opts.get("test_path") else None,
                    family=str(opts.get("family") or ""), test_size=test_size, template=template,
                    title=str(opts.get("title") or name))


# --- reading records ------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaskFileError(f"{path} is not valid UTF-8 (byte {e.start})") from None


def _jsonl_records(path: Path) -> list[tuple[str, dict]]:
    out = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise TaskFileError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise TaskFileError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path}:{i}", rec))
    return out


def _csv_records(path: Path) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    fields = reader.fieldnames or []
    if "prompt" not in fields:
        raise TaskFileError(f"{path}: the header row has no 'prompt' column (columns: {fields})")
    choice_cols = sorted((f for f in fields if re.fullmatch(r"choice_?\d+|choice_[A-Za-z]", f or "")),
                         key=lambda f: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", f)])
    out = []
    for i, row in enumerate(reader, 2):
        if None in row:
            raise TaskFileError(f"{path}:{i}: more cells than header columns")
        rec: dict[str, Any] = {k: v for k, v in row.items() if k not in choice_cols}
        if "choices" in rec and rec["choices"] not in (None, ""):
            try:
                rec["choices"] = json.loads(rec["choices"])
            except ValueError:
                raise TaskFileError(f"{path}:{i}: the 'choices' cell must hold a JSON list of texts") from None
        elif choice_cols:
            cells = [row[c] or "" for c in choice_cols]
            while cells and not cells[-1]:
                cells.pop()
            rec["choices"] = cells
        if "labels" in rec and rec["labels"]:
            try:
                rec["labels"] = json.loads(rec["labels"])
            except ValueError:
                raise TaskFileError(f"{path}:{i}: the 'labels' cell must hold a JSON list of texts") from None
        rec = {k: v for k, v in rec.items() if v not in (None, "")}
        out.append((f"{path}:{i}", rec))
    return out


def _dataset_records(path: Path) -> dict[str, list[tuple[str, dict]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise TaskFileError(f"{path} is not a datasets.save_to_disk folder: {e}") from None
    splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"": ds}
    unknown = sorted(set(splits) - {"", "train", "test"})
    if unknown:
        raise TaskFileError(f"{path}: DatasetDict splits {unknown} are not used; keep 'train' and 'test' only")
    return {s: [(f"{path}[{s or 'rows'}][{i}]", dict(r)) for i, r in enumerate(d)] for s, d in splits.items()}


def read_records(path: Path) -> dict[str, list[tuple[str, dict]]]:
    """``{split: [(where, record)]}``; split ``''`` when the file does not say (rows may carry ``split``)."""
    if path.is_dir():
        return _dataset_records(path)
    if not path.is_file():
        raise TaskFileError(f"task file {path} does not exist")
    if path.suffix == ".jsonl":
        return {"": _jsonl_records(path)}
    if path.suffix == ".csv":
        return {"": _csv_records(path)}
    raise TaskFileError(f"task file {path}: use .jsonl, .csv or a datasets.save_to_disk folder")


# --- records -> examples ----------------------------------------------------------------------------


def _text(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise TaskFileError(f"{where}: '{key}' must be a non-empty text, got {v!r}")
    return v.strip()


def _gold(answer: Any, choices: tuple[str, ...], labels: tuple[str, ...], where: str) -> int:
    if isinstance(answer, bool):
        raise TaskFileError(f"{where}: 'answer' must be an index, a choice text or a label, got {answer!r}")
    if isinstance(answer, int) or (isinstance(answer, str) and answer.strip().isdigit() and answer.strip() not in choices):
        idx = int(answer)
        if not 0 <= idx < len(choices):
            raise TaskFileError(f"{where}: 'answer' index {idx} is out of range for {len(choices)} choices (0-based)")
        return idx
    if isinstance(answer, str) and answer.strip():
        a = answer.strip()
        if a in choices:
            if choices.count(a) > 1:
                raise TaskFileError(f"{where}: 'answer' {a!r} matches several choices")
            return choices.index(a)
        if a in labels:
            return labels.index(a)
        raise TaskFileError(f"{where}: 'answer' {a!r} is neither a choice text, a label {list(labels)} nor an index")
    raise TaskFileError(f"{where}: 'answer' is missing or empty")


def record_kind(rec: dict) -> str:
    return "generative" if "completion" in rec and "choices" not in rec else "choice"


def record_example(name: str, rec: dict, where: str, row: int) -> tasks.Example:
    """One validated :class:`tasks.Example` (raises :class:`TaskFileError` naming ``where``)."""
    prompt = _text(rec, "prompt", where)
    ex_id = rec.get("id")
    ex_id = f"{name}-{row}" if ex_id in (None, "") else str(ex_id)
    if record_kind(rec) == "generative":
        extra = sorted(set(rec) & {"answer", "labels"})
        if extra:
            raise TaskFileError(f"{where}: a generative example (prompt + completion) has no {extra}")
        completion = rec["completion"]
        if not isinstance(completion, str) or not completion.strip():
            raise TaskFileError(f"{where}: 'completion' must be a non-empty text, got {completion!r}")
        return tasks.Example("", ex_id, prompt, (completion,), 0)  # the registry's generative form
    choices = rec.get("choices")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise TaskFileError(f"{where}: 'choices' must be a list of at least 2 texts, got {choices!r}")
    if not all(isinstance(c, str) and c.strip() for c in choices):
        raise TaskFileError(f"{where}: every choice must be a non-empty text, got {list(choices)!r}")
    choices = tuple(c.strip() for c in choices)
    labels = rec.get("labels") or ()
    if labels and (not isinstance(labels, (list, tuple)) or len(labels) != len(choices)
                   or not all(isinstance(x, str) and x for x in labels)):
        raise TaskFileError(f"{where}: 'labels' must be a list of {len(choices)} texts, got {labels!r}")
    labels = tuple(labels)
    gold = _gold(rec.get("answer"), choices, labels or tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(choices)]), where)
    return tasks.Example("", ex_id, prompt, choices, gold, labels)


def load_task_file(decl: FileTask) -> tuple[list[tasks.Example], list[tasks.Example] | None, str]:
    """(pool, official test or None, kind) of a declaration: every row checked, ids unique, one kind."""
    parts = read_records(decl.path)
    train_rows = list(parts.get("", [])) + list(parts.get("train", []))
    test_rows = list(parts.get("test", []))
    if decl.test_path is not None:
        if test_rows:
            raise TaskFileError(f"task '{decl.name}': {decl.path} has its own test split and test_path is given too")
        test_parts = read_records(decl.test_path)
        test_rows = [r for rows in test_parts.values() for r in rows]
    pool: list[tasks.Example] = []
    test: list[tasks.Example] = []
    has_split = False
    kind = decl.kind
    for where, rec in (*train_rows, *test_rows):
        k = record_kind(rec)
        if not kind:
            kind = k
        elif k != kind:
            raise TaskFileError(f"{where}: a {k} example in a {kind} task (a file is all prompt + choices + answer, "
                                "or all prompt + completion)")
    for row, (where, rec) in enumerate(train_rows):
        split = rec.get("split", "")
        if split not in ("", "train", "test"):
            raise TaskFileError(f"{where}: 'split' must be 'train' or 'test', got {split!r}")
        has_split |= split == "test"
        (test if split == "test" else pool).append(record_example(decl.name, rec, where, row))
    for row, (where, rec) in enumerate(test_rows, len(train_rows)):
        test.append(record_example(decl.name, rec, where, row))
    if has_split and decl.test_path is not None:
        raise TaskFileError(f"task '{decl.name}': {decl.path} marks rows split=test and test_path is given too")
    seen: dict[str, str] = {}
    for ex in (*pool, *test):
        if ex.id in seen:
            raise TaskFileError(f"task '{decl.name}': id '{ex.id}' appears twice")
        seen[ex.id] = ex.id
    official = test if (test or has_split or decl.test_path is not None) else None
    if not pool:
        raise TaskFileError(f"task '{decl.name}': {decl.path} has no training examples")
    if official is None and len(pool) < 2:
        raise TaskFileError(f"task '{decl.name}': {len(pool)} example(s) cannot be split into train and test")
    if official is not None and not official:
        raise TaskFileError(f"task '{decl.name}': the test split is empty")
    return pool, official, kind or "choice"


def _fingerprint(decl: FileTask) -> str:
    h = hashlib.sha256(json.dumps(dataclasses.asdict(decl), default=str, sort_keys=True).encode())
    for p in (decl.path, decl.test_path):
        if p is None:
            continue
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def register_task(name: str, value: Any) -> tasks.TaskSpec:
    """Parse and check one declaration, then register it (idempotent for unchanged files)."""
    decl = _declaration(name, value)
    fp = _fingerprint(decl) if decl.path.exists() else ""
    if name in tasks.TASKS and _REGISTERED.get(name) == fp:
        return tasks.TASKS[name]
    if name in tasks.TASKS and name not in _REGISTERED:
        raise TaskFileError(f"task_files: '{name}' is a built-in task name; choose another name")
    pool, official, kind = load_task_file(decl)

    def load_pool(pool=pool, official=official):
        return list(pool), (list(official) if official is not None else None)

    spec = tasks.TaskSpec(name, decl.title, load_pool, decl.template, family=decl.family, test_size=decl.test_size,
                          kind=kind)
    tasks.register(spec, replace=True)
    _REGISTERED[name] = fp
    return spec


def register_config(config) -> list[str]:
    """Register every ``config.task_files`` entry (none: a no-op); returns the registered names."""
    decls = config.get("task_files") if hasattr(config, "get") else None
    if not decls:
        return []
    items = decls.items() if hasattr(decls, "items") else None
    if items is None:
        raise TaskFileError(f"config.task_files must map task names to files, got {type(decls).__name__}")
    return [register_task(name, value).name for name, value in items]


def generator_training_config(workdir: str | Path, step: int | None = None):
    """The config a generator was trained with (an ``ml_collections.ConfigDict``), or None when the
    workdir holds no checkpoint or not that step (loading the generator then reports it)."""
    import ml_collections

    from dnd_jax import checkpoint

    if not (Path(workdir) / checkpoint.CKPT_DIR).is_dir():
        return None
    with checkpoint.manager(workdir, create=False) as mngr:
        step = mngr.latest_step() if step is None else int(step)
        if step is None or step not in mngr.all_steps():
            return None
        meta = checkpoint.read_meta(mngr, step)
    return ml_collections.ConfigDict(meta.get("config", {}))


def register_from_generator(workdir: str | Path, step: int | None = None) -> list[str]:
    """Register the file tasks of the config a generator was trained with (for ``generate --task``)."""
    config = generator_training_config(workdir, step)
    return [] if config is None else register_config(config)
