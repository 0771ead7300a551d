"""Greedy generation (the exact-match and pass@1 metrics) at several batch sizes: CPU time, wall time, and
whether the texts are the same.

    python bench/greedy_batch.py --task gsm8k --n 32 --batch_sizes 32,64 --max_new_tokens 192 --reference \
        --out docs/bench/greedy_batch_gsm8k.json

``dnd_jax.generative.greedy_solutions`` sorts the problems by prompt length and decodes ``batch_size`` of
them at a time with left padding; a row leaves the batch when it stops. A larger batch amortizes the
per-token overhead of a 135M model over more rows. CPU seconds are the
process's own (every thread), so other jobs on the cores inflate them little; the load average is
recorded with every figure. Texts are compared problem by problem with the reference: transformers'
``generate`` at the first batch size with ``--reference`` (what greedy_solutions called before session
13's row-dropping decoder), else the first batch size's own texts.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnd_jax import assets, base_model, generative, scoring, tasks  # noqa: E402
from dnd_jax.task_sources import math_code  # noqa: E402

TASK = flags.DEFINE_string("task", "gsm8k", "a generative task (or, with --mc, a multiple-choice one)")
MC = flags.DEFINE_bool("mc", False, "the lettered-answer metric's prompts (no stop strings: rows stop at the "
                       "end-of-sequence token) instead of a generative task's")
N = flags.DEFINE_integer("n", 32, "test problems (the first n)")
BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8", "16", "32"], "batch sizes to compare")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 192, "greedy budget")
THREADS = flags.DEFINE_integer("threads", 1, "torch threads")
REFERENCE = flags.DEFINE_bool("reference", False, "also decode with transformers' generate at the first batch "
                               "size (stopped rows kept to the batch's end) and compare texts and cost")
OUT = flags.DEFINE_string("out", "", "output JSON (printed only when empty)")


def main(argv) -> None:
    import torch

    torch.set_num_threads(THREADS.value)
    model, tok = base_model.load(base_model.resolve({"kind": "smollm2"}))
    examples = tasks.load_examples(TASK.value, "test", N.value)
    stops = () if MC.value else math_code.stop_sequences(TASK.value)

    mc_prompts = [tok(tasks.mc_context(ex, tok), add_special_tokens=False)["input_ids"] for ex in examples]

    def ours(bs: int) -> list[str]:
        if MC.value:  # what scoring.mc_generate would give with greedy_decode (it keeps generate: see unit_costs.md)
            rows = [r for b in range(0, len(mc_prompts), bs)
                    for r in generative.greedy_decode(model, tok, mc_prompts[b : b + bs], MAX_NEW.value)]
            return [tok.decode(r, skip_special_tokens=True) for r in rows]
        return generative.greedy_solutions(model, tok, examples, stops, MAX_NEW.value, batch_size=bs, progress=False)

    def theirs(bs: int) -> list[str]:
        if MC.value:  # scoring.mc_generate's decoder (transformers' generate), in the same batches as ours
            return scoring.generate_texts(model, tok, mc_prompts, MAX_NEW.value, batch_size=bs)
        return generative.reference_greedy_solutions(model, tok, examples, stops, MAX_NEW.value, batch_size=bs)

    out: dict = {"task": TASK.value, "metric": "mc" if MC.value else "generative", "n": len(examples), "max_new_tokens": MAX_NEW.value,
                 "torch_threads": THREADS.value, "command": " ".join(["python", "bench/greedy_batch.py", *sys.argv[1:]]),
                 "runs": {}}
    reference = None
    if REFERENCE.value:
        bs = int(BATCH_SIZES.value[0])
        w, c = time.perf_counter(), time.process_time()
        reference = theirs(bs)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        out["runs"][f"generate@{bs}"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                                         "cpu_s_per_problem": round(cpu / len(examples), 2),
                                         "loadavg_1_5_15": [round(x, 1) for x in os.getloadavg()]}
        print(f"generate@{bs}", out["runs"][f"generate@{bs}"], flush=True)
    for bs in [int(b) for b in BATCH_SIZES.value]:
        w, c = time.perf_counter(), time.process_time()
        texts = ours(bs)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        reference = texts if reference is None else reference
        out["runs"][str(bs)] = {
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_s_per_problem": round(cpu / len(examples), 2),
            "texts_differing_from_reference": sum(a != b for a, b in zip(texts, reference, strict=True)),
            "text_tokens": [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts],  # each cut at its stop
            "loadavg_1_5_15": [round(x, 1) for x in os.getloadavg()],
        }
        print(bs, out["runs"][str(bs)], flush=True)
    if OUT.value:
        assets.write_json_atomic(Path(OUT.value), out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)
