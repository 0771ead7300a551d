"""Greedy generation (the exact-match and pass@1 metrics) at several batch sizes: CPU time, wall time, and
whether the texts are the same.

    python bench/greedy_batch.py --task gsm8k --n 32 --batch_sizes 8,16,32 --max_new_tokens 192 \
        --out docs/bench/greedy_batch_gsm8k.json

``dnd_jax.generative.greedy_solutions`` sorts the problems by prompt length and decodes ``batch_size`` of
them at a time with left padding, so a batch runs until its last row stops. A larger batch amortizes
the per-token overhead of a 135M model over more rows but waits for more rows. CPU seconds are the
process's own (every thread), so other jobs on the cores inflate them little; the load average is
recorded with every figure. Texts are compared with the first batch size's, problem by problem: left
padding changes the positions of the padding only, so they should agree, and the count says if not.
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

from dnd_jax import assets, base_model, generative, tasks  # noqa: E402
from dnd_jax.task_sources import math_code  # noqa: E402

TASK = flags.DEFINE_string("task", "gsm8k", "a generative task")
N = flags.DEFINE_integer("n", 32, "test problems (the first n)")
BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8", "16", "32"], "batch sizes to compare")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 192, "greedy budget")
THREADS = flags.DEFINE_integer("threads", 1, "torch threads")
OUT = flags.DEFINE_string("out", "", "output JSON (printed only when empty)")


def main(argv) -> None:
    import torch

    torch.set_num_threads(THREADS.value)
    model, tok = base_model.load(base_model.resolve({"kind": "smollm2"}))
    examples = tasks.load_examples(TASK.value, "test", N.value)
    stops = math_code.stop_sequences(TASK.value)
    out: dict = {"task": TASK.value, "n": len(examples), "max_new_tokens": MAX_NEW.value,
                 "torch_threads": THREADS.value, "command": " ".join(["python", "bench/greedy_batch.py", *sys.argv[1:]]),
                 "runs": {}}
    reference = None
    for bs in [int(b) for b in BATCH_SIZES.value]:
        w, c = time.perf_counter(), time.process_time()
        texts = generative.greedy_solutions(model, tok, examples, stops, MAX_NEW.value, batch_size=bs, progress=False)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        reference = texts if reference is None else reference
        out["runs"][str(bs)] = {
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_s_per_problem": round(cpu / len(examples), 2),
            "texts_differing_from_first": sum(a != b for a, b in zip(texts, reference, strict=True)),
            "loadavg_1_5_15": [round(x, 1) for x in os.getloadavg()],
        }
        print(bs, out["runs"][str(bs)], flush=True)
    if OUT.value:
        assets.write_json_atomic(Path(OUT.value), out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    app.run(main)
