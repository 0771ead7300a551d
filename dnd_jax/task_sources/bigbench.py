"""Multiple-choice BIG-bench tasks, read from the ``bigbench`` 1.0.0 source distribution.

The package is never installed (its requirements pull TensorFlow, t5 and seqio). ``make data`` runs
``python -m dnd_jax.task_sources.bigbench``, which

1. downloads the sdist (358 MB) into the cache (``$DND_JAX_CACHE``, default ``~/.cache/dnd_jax``) and
   checks its sha256 against :data:`SDIST_SHA256` (an existing file is verified, never re-fetched);
2. reads every ``task.json`` straight from the archive and keeps, for each top-level BIG-bench task,
   the sub-task with the most single-answer multiple-choice examples (``target_scores`` with one
   best choice), if it has at least :data:`MIN_EXAMPLES`; tasks with very long inputs (ASCII-art and
   pixel-string images) and tasks whose source is one of this project's own tasks are left out;
3. writes the normalized examples (prompt, choices, gold) of each kept task to
   ``<cache>/bigbench-1.0.0/<task>.json`` and an ``index.json`` listing them, atomically.

At import the module registers one task ``bb_<task>`` per index entry (family ``bigbench_<task>``:
the sub-tasks of one BIG-bench task are one family). Without the index, the :data:`EXPECTED_TASKS` are
registered by name and family only, so configs, pools and family checks work without the download;
loading or collecting one raises :class:`DataNotPrepared`, which says to run ``make data``, and any
other ``bb_`` name is unknown. Tests build a tiny archive of the same layout.

``pip download --no-deps --no-binary :all: bigbench==1.0.0`` cannot be used: pip prepares the
sdist's metadata, which declares direct-URL dependencies, and refuses it ("Distributions from PyPI
cannot declare direct URL dependencies"). The file is fetched from the index's URL instead.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dnd_jax import assets, errors, tasks
from dnd_jax.task_sources import cap_choices

SDIST_NAME = "bigbench-1.0.0.tar.gz"
SDIST_URL = ("https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cf"
             "c721c157/bigbench-1.0.0.tar.gz")
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
INDEX_VERSION = 1
TASKS_ROOT = "bigbench/benchmark_tasks/"
MIN_EXAMPLES = 100
MAX_MEDIAN_INPUT_CHARS = 1500  # cifar10 / mnist ASCII images and the like
# Same source as a task of this project's registry: never a BIG-bench training task.
EXCLUDED = {"social_iqa": "duplicates the registry's socialiqa", "winowhy": "built on Winograd schemas (WinoGrande's source)"}
PREFIX = "bb_"
TEST_SIZE = 100
TEST_FRACTION = 0.25


# The tasks ``make data`` selects from the pinned sdist (``build`` checks it): configs can name the
# many-task pool without the download.
EXPECTED_TASKS = (
    "bb_abstract_narrative_understanding", "bb_anachronisms", "bb_analogical_similarity", "bb_arithmetic",
    "bb_bbq_lite_json", "bb_causal_judgment", "bb_checkmate_in_one", "bb_color",
    "bb_contextual_parametric_knowledge_conflicts", "bb_cryobiology_spanish", "bb_cs_algorithms",
    "bb_date_understanding", "bb_disambiguation_qa", "bb_discourse_marker_prediction", "bb_dyck_languages",
    "bb_elementary_math_qa", "bb_emoji_movie", "bb_emojis_emotion_prediction", "bb_entailed_polarity",
    "bb_entailed_polarity_hindi", "bb_epistemic_reasoning", "bb_fact_checker", "bb_fantasy_reasoning",
    "bb_formal_fallacies_syllogisms_negation", "bb_geometric_shapes", "bb_goal_step_wikihow", "bb_hindu_knowledge",
    "bb_hinglish_toxicity", "bb_hyperbaton", "bb_implicatures", "bb_intent_recognition",
    "bb_international_phonetic_alphabet_nli", "bb_intersect_geometry", "bb_kanji_ascii", "bb_kannada",
    "bb_language_identification", "bb_logic_grid_puzzle", "bb_logical_deduction", "bb_logical_fallacy_detection",
    "bb_metaphor_boolean", "bb_metaphor_understanding", "bb_misconceptions", "bb_mnist_ascii",
    "bb_moral_permissibility", "bb_movie_dialog_same_or_different", "bb_movie_recommendation", "bb_multiemo",
    "bb_navigate", "bb_parsinlu_qa", "bb_penguins_in_a_table", "bb_periodic_elements", "bb_phrase_relatedness",
    "bb_physics", "bb_play_dialog_same_or_different", "bb_presuppositions_as_nli", "bb_question_selection",
    "bb_real_or_fake_text", "bb_reasoning_about_colored_objects", "bb_ruin_names",
    "bb_salient_translation_error_detection", "bb_simple_ethical_questions", "bb_snarks", "bb_social_support",
    "bb_sports_understanding", "bb_strange_stories", "bb_strategyqa", "bb_swahili_english_proverbs",
    "bb_symbol_interpretation", "bb_temporal_sequences", "bb_timedial", "bb_tracking_shuffled_objects",
    "bb_understanding_fables", "bb_undo_permutation", "bb_unit_conversion", "bb_vitaminc_fact_verification",
)


DataNotPrepared = errors.DataNotPrepared  # the BIG-bench index or archive is missing: run ``make data``


def data_dir() -> Path:
    return assets.default_cache_dir() / "bigbench-1.0.0"


def sdist_path() -> Path:
    return assets.default_cache_dir() / SDIST_NAME


def fetch(path: Path | None = None, url: str = SDIST_URL, sha256: str = SDIST_SHA256) -> Path:
    """Download the sdist once (``.part`` then rename) and verify its sha256; returns its path."""
    path = Path(path or sdist_path())
    if path.is_file():
        if assets.file_sha256(path) != sha256:
            raise ValueError(f"{path} does not have the expected sha256 {sha256}; delete it and run `make data` again")
        return path
    import urllib.request

    from tqdm import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=120) as resp, open(part, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=SDIST_NAME) as bar:
            while block := resp.read(1 << 20):
                f.write(block)
                h.update(block)
                bar.update(len(block))
    if h.hexdigest() != sha256:
        part.unlink()
        raise ValueError(f"downloaded {url} has sha256 {h.hexdigest()}, expected {sha256}; nothing was kept")
    os.replace(part, path)
    return path


def _strip_answer_cue(text: str) -> str:
    t = text.strip()
    for cue in ("Answer:", "A:"):
        if t.endswith(cue):
            t = t[: -len(cue)].rstrip()
    return t


def normalize_examples(task_json: dict) -> list[dict]:
    """Single-answer multiple-choice examples of one task.json as {prompt, choices, gold}."""
    out = []
    for ex in task_json.get("examples", []):
        scores = ex.get("target_scores")
        if not isinstance(scores, dict) or len(scores) < 2 or not isinstance(ex.get("input"), str):
            continue
        choices = [str(c).strip() for c in scores]
        values = [float(v) for v in scores.values()]
        best = max(values)
        if values.count(best) != 1 or any(not c for c in choices) or len(set(choices)) != len(choices):
            continue
        gold = values.index(best)
        prompt = _strip_answer_cue(ex["input"])
        if not prompt:
            continue
        choices, gold = cap_choices(prompt, choices, gold)
        out.append({"prompt": prompt, "choices": choices, "gold": gold})
    return out


def _task_files(archive: Path) -> Iterable[tuple[str, dict]]:
    """(path under benchmark_tasks/, parsed task.json) for every task.json in the archive."""
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf:
            if not member.isfile() or not member.name.endswith("/task.json") or TASKS_ROOT not in member.name:
                continue
            rel = member.name.split(TASKS_ROOT, 1)[1][: -len("/task.json")]
            f = tf.extractfile(member)
            if f is None:
                continue
            try:
                yield rel, json.load(f)
            except ValueError as e:
                raise ValueError(f"{archive}: {member.name} is not valid JSON ({e})") from None


def select(files: Iterable[tuple[str, dict]], min_examples: int = MIN_EXAMPLES) -> tuple[dict[str, dict], dict[str, str]]:
    """Per top-level task the sub-task with the most usable examples; returns (kept, skipped reasons)."""
    best: dict[str, tuple[int, str, list[dict], str]] = {}
    skipped: dict[str, str] = {}
    for rel, task_json in files:
        top = rel.split("/")[0]
        examples = normalize_examples(task_json)
        if not examples:
            continue
        desc = str(task_json.get("description", "")).strip()
        n = len(examples)
        if top not in best or n > best[top][0] or (n == best[top][0] and rel < best[top][1]):
            best[top] = (n, rel, examples, desc)
    kept = {}
    for top, (n, rel, examples, desc) in sorted(best.items()):
        if top in EXCLUDED:
            skipped[top] = EXCLUDED[top]
        elif n < min_examples:
            skipped[top] = f"{n} single-answer examples < {min_examples}"
        elif float(np.median([len(e["prompt"]) for e in examples])) > MAX_MEDIAN_INPUT_CHARS:
            skipped[top] = f"median input longer than {MAX_MEDIAN_INPUT_CHARS} characters"
        else:
            kept[top] = {"subtask": rel, "description": desc, "examples": examples}
    return kept, skipped


def build(archive: Path | None = None, out_dir: Path | None = None, sha256: str | None = SDIST_SHA256,
          min_examples: int = MIN_EXAMPLES) -> dict:
    """Read the archive once and write the per-task JSON files and ``index.json`` (atomically)."""
    archive = Path(archive or sdist_path())
    out_dir = Path(out_dir or data_dir())
    if not archive.is_file():
        raise DataNotPrepared(f"{archive} is missing; run `make data`")
    if sha256 is not None and assets.file_sha256(archive) != sha256:
        raise ValueError(f"{archive} does not have the expected sha256 {sha256}")
    kept, skipped = select(_task_files(archive), min_examples)
    if sha256 == SDIST_SHA256 and sorted(PREFIX + t for t in kept) != sorted(EXPECTED_TASKS):
        raise RuntimeError("the selection from the pinned BIG-bench sdist differs from EXPECTED_TASKS")
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {"version": INDEX_VERSION, "source": archive.name, "min_examples": min_examples, "tasks": {}, "skipped": skipped}
    for top, entry in kept.items():
        name = PREFIX + top
        assets.write_json_atomic(out_dir / f"{name}.json", entry["examples"])
        index["tasks"][name] = {"task": top, "subtask": entry["subtask"], "num_examples": len(entry["examples"]),
                                "description": entry["description"][:300]}
    assets.write_json_atomic(out_dir / "index.json", index)
    return index


def _loader(path: Path, name: str):
    def load():
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [tasks.Example(name, f"{name}-{i}", r["prompt"], tuple(r["choices"]), int(r["gold"]))
                for i, r in enumerate(rows)], None

    return load


def register_from(out_dir: Path) -> list[str]:
    """Register every task of an index folder; returns the task names."""
    index_path = Path(out_dir) / "index.json"
    if not index_path.is_file():
        return []
    index = json.loads(index_path.read_text())
    if index.get("version") != INDEX_VERSION:
        raise ValueError(f"{index_path} has version {index.get('version')}, expected {INDEX_VERSION}; run `make data`")
    names = []
    for name, meta in index["tasks"].items():
        tasks.register(tasks.TaskSpec(
            name, f"BIG-bench {meta['subtask']}", _loader(Path(out_dir) / f"{name}.json", name), "{prompt}\nAnswer:",
            family="bigbench_" + meta["task"], test_size=TEST_SIZE, max_test_fraction=TEST_FRACTION), replace=True)
        names.append(name)
    return names


def placeholder(name: str, index_path: Path) -> tasks.TaskSpec:
    """An :data:`EXPECTED_TASKS` task known by name and family only (no index yet): configs, pools and
    family checks work without the download; loading it, or collecting it, says to run ``make data``."""
    why = f"BIG-bench task '{name}' is not prepared ({index_path} is missing); run `make data`"

    def load():
        raise DataNotPrepared(why)

    return tasks.TaskSpec(name, f"BIG-bench {name[len(PREFIX):]} (not prepared)", load, "{prompt}\nAnswer:",
                          family="bigbench_" + name[len(PREFIX):], test_size=TEST_SIZE,
                          max_test_fraction=TEST_FRACTION, unprepared=why)


def register_placeholders(out_dir: Path) -> list[str]:
    """Register a :func:`placeholder` for every expected task the index at ``out_dir`` does not hold."""
    names = [n for n in EXPECTED_TASKS if n not in tasks.TASKS]
    for name in names:
        tasks.register(placeholder(name, Path(out_dir) / "index.json"))
    return names


def task_names() -> list[str]:
    """Names of the prepared BIG-bench tasks (raises :class:`DataNotPrepared` without ``make data``)."""
    index_path = data_dir() / "index.json"
    if not index_path.is_file():
        raise DataNotPrepared(f"BIG-bench tasks are not prepared ({index_path} is missing); run `make data`")
    return list(json.loads(index_path.read_text())["tasks"])


REGISTERED = register_from(data_dir())
PLACEHOLDERS = register_placeholders(data_dir())


def main(argv: list[str]) -> int:
    path = fetch()
    print(f"[data] {path} (sha256 verified)")
    index = build(path)
    print(f"[data] {len(index['tasks'])} BIG-bench tasks -> {data_dir()} ({len(index['skipped'])} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
