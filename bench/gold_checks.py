"""The generation metrics' ceilings: how the gold solutions themselves score on the scored problems.

    python bench/gold_checks.py --out docs/bench/gold_checks.json

Exact match of every GSM8K and MATH gold solution against its own answer (the first ``--n`` test problems
of each task), and pass@1 of every HumanEval and MBPP gold program, cut at the task's stop sequences as a
generated one would be, run in the sandbox with the evaluation's limits (``generative.SANDBOX_LIMITS``).
A gold solution that does not score is a defect of the metric, or a limit to state. The sandbox's time
limit is CPU seconds (since session 21; it was wall time), so the verdicts do not depend on the load
average, which is recorded anyway.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnd_jax import assets, generative, sandbox, tasks  # noqa: E402
from dnd_jax.task_sources import math_code  # noqa: E402

N = flags.DEFINE_integer("n", 200, "test problems per task (the first n: what the experiments score)")
OUT = flags.DEFINE_string("out", "", "output JSON (printed only when empty)")

MATH_TASKS = ("gsm8k", *(f"minerva_math_{s}" for s in ("prealgebra", "algebra", "geometry", "counting_and_probability",
                                                        "number_theory", "intermediate_algebra", "precalculus")))
CODE_TASKS = ("codex_humaneval", "codex_mbpp")


def main(argv) -> None:
    del argv
    out = {"command": "python bench/gold_checks.py " + " ".join(sys.argv[1:]), "n": N.value,
           "answer_version": math_code.ANSWER_VERSION, "exact_match": {}, "pass@1": {}}
    for task in MATH_TASKS:
        exs = tasks.load_examples(task, "test", N.value)
        wrong = [e.id for e in exs if not math_code.exact_match(task, e.id, e.choices[0])[0]]
        out["exact_match"][task] = {"n": len(exs), "correct": len(exs) - len(wrong), "wrong_ids": wrong}
    limits = generative.SANDBOX_LIMITS
    out["sandbox_limits"] = dataclasses.asdict(limits)
    for task in CODE_TASKS:
        exs = tasks.load_examples(task, "test", N.value)
        stops = math_code.stop_sequences(task)
        programs = [math_code.python_program(task, e.id, generative.truncate_at_stop(e.choices[0], stops)) for e in exs]
        t0 = time.time()
        results = sandbox.run_many(programs, limits)
        failed = {e.id: r.status for e, r in zip(exs, results, strict=True) if not r.passed}
        out["pass@1"][task] = {"n": len(exs), "passed": len(exs) - len(failed), "failed": failed,
                               "wall_s": round(time.time() - t0, 1), "loadavg_1_5_15": list(os.getloadavg())}
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    if OUT.value:
        assets.write_text_atomic(Path(OUT.value), text + "\n")


if __name__ == "__main__":
    app.run(main)
