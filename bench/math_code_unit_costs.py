"""Unit costs of the math and coding experiments on SmolLM2-135M: a LoRA step on long sequences, and
evaluating one system (bits per byte on 200 test problems; greedy generation + sandbox / exact match).

    python bench/math_code_unit_costs.py [--threads 1] [--gen_examples 8] [--out docs/results/unit_costs.json]

Reports wall seconds and CPU seconds of the process (all its threads). With ``--threads 1`` the CPU
seconds are one core's work, which a shared machine does not inflate much (a contended 2-thread pool
spin-waits and bills those waits as CPU time): the cost on a free machine is about that, divided by
the parallel speed-up of 2 threads. The load average is recorded with every figure.
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

from configs import common  # noqa: E402
from dnd_jax import assets, base_model, generative, lora_train, tasks  # noqa: E402

THREADS = flags.DEFINE_integer("threads", 1, "torch threads")
GEN_EXAMPLES = flags.DEFINE_integer("gen_examples", 8, "examples per generation measurement")
LORA_STEPS = flags.DEFINE_integer("lora_steps", 4, "LoRA steps per measurement (the first one is not timed)")
OUT = flags.DEFINE_string("out", str(ROOT / "docs" / "results" / "unit_costs.json"), "output JSON")


def main(argv) -> None:
    import torch

    torch.set_num_threads(THREADS.value)
    out: dict = {"torch_threads": THREADS.value, "cpu_count": os.cpu_count(), "results": {}}
    ref = base_model.resolve({"kind": "smollm2"})
    model, tok = base_model.load(ref)

    def log(key: str, value: dict) -> None:
        value["loadavg_1_5_15"] = [round(x, 1) for x in os.getloadavg()]
        out["results"][key] = value
        print(key, json.dumps(value)[:300], flush=True)
        assets.write_json_atomic(Path(OUT.value), out)

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        r = fn()
        return r, time.perf_counter() - w, time.process_time() - c

    for task, max_len in (("mt_mbpp_rust", 256), ("minerva_math_algebra", 384)):
        lora = lora_train.make_lora_model(base_model.load(ref)[0], 8, 16, 0.0, common.LLAMA_ALL_LINEAR, seed=0)
        stamps: list[tuple[float, float]] = []
        r = lora_train.train_lora(
            lora, tok, tasks.load_examples(task, "train"), answer_format="cloze", max_len=max_len, batch_size=8,
            lr=3e-4, weight_decay=0.0, warmup_steps=1, total_steps=LORA_STEPS.value, seed=0, keep_step=lambda s: True,
            on_keep=lambda *a, stamps=stamps: stamps.append((time.perf_counter(), time.process_time())))
        n = len(stamps) - 1
        log(f"lora_step/{task}/max_len={max_len}/batch=8", {
            "wall_s_per_step": (stamps[-1][0] - stamps[0][0]) / n, "cpu_s_per_step": (stamps[-1][1] - stamps[0][1]) / n,
            "losses": [round(x, 3) for x in r["losses"]]})
        del lora

    for task in ("mt_mbpp_python", "codex_humaneval", "gsm8k", "minerva_math_prealgebra"):
        exs = tasks.load_examples(task, "test", limit=200)
        r, w, c = timed(lambda exs=exs: generative.bits_per_byte(model, tok, exs, generative.BPB_MAX_LEN,
                                                                 progress=False))
        log(f"bpb/{task}/n={len(exs)}", {"wall_s": w, "cpu_s": c, "mean_bpb_base": sum(r["bpb"]) / len(exs),
                                         "truncated": sum(r["truncated"])})

    k = GEN_EXAMPLES.value
    for task, metric, mnt in (("codex_humaneval", "pass@1", 128), ("codex_mbpp", "pass@1", 128),
                              ("gsm8k", "exact_match", 192)):
        exs = tasks.load_examples(task, "test", limit=k)
        r, w, c = timed(lambda exs=exs, metric=metric, mnt=mnt: generative.score(
            model, tok, exs, metric, max_new_tokens=mnt, progress=False))
        log(f"{metric}/{task}/n={k}/max_new_tokens={mnt}", {
            "wall_s": w, "cpu_s": c, "score": sum(r["correct"]) / len(exs), "first_text": r["texts"][0][:300]})


if __name__ == "__main__":
    app.run(main)
