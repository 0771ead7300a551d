"""Peak memory and step time of zoo LoRA training with and without activation checkpointing.

    python bench/activation_checkpointing.py [--task minerva_math_algebra] [--max_len 384] [--batch 8]
        [--every 0,1,2] [--steps 3] [--threads 1] [--out docs/bench/activation_checkpointing.json]

Each setting (``zoo.activation_checkpointing = k``: recompute every k-th decoder layer in the backward;
0 = keep every activation) runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own: base
model + LoRA + activations of one rank-8 all-linear step at the given batch and length, or the model
load's own peak if that was higher (``peak_rss_after_load_gb``, recorded since session 17's first run). Step time:
wall and CPU seconds per step after the first; the losses show the settings compute the same thing.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK = flags.DEFINE_string("task", "minerva_math_algebra", "zoo task whose train examples are used")
MAX_LEN = flags.DEFINE_integer("max_len", 384, "sequence cut (config.zoo.max_len)")
BATCH = flags.DEFINE_integer("batch", 8, "batch size (config.zoo.batch_size)")
EVERY = flags.DEFINE_list("every", ["0", "1", "2"], "activation_checkpointing settings to compare")
STEPS = flags.DEFINE_integer("steps", 3, "LoRA steps per setting (the first is not timed)", lower_bound=2)
THREADS = flags.DEFINE_integer("threads", 1, "torch threads")
OUT = flags.DEFINE_string("out", str(ROOT / "docs" / "bench" / "activation_checkpointing.json"), "output JSON")
CHILD = flags.DEFINE_integer("child", None, "internal: run one setting and print its JSON")


def one_setting(every: int) -> dict:
    import torch

    from configs import common
    from dnd_jax import base_model, lora_train, tasks

    torch.set_num_threads(THREADS.value)
    model, tok = base_model.load(base_model.resolve({"kind": "smollm2"}))
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB -> GB; loading alone
    model = lora_train.make_lora_model(model, 8, 16, 0.0, common.LLAMA_ALL_LINEAR, seed=0)
    lora_train.checkpoint_activations(model, every)
    stamps: list[tuple[float, float]] = []
    r = lora_train.train_lora(
        model, tok, tasks.load_examples(TASK.value, "train"), answer_format="cloze", max_len=MAX_LEN.value,
        batch_size=BATCH.value, lr=3e-4, weight_decay=0.0, warmup_steps=1, total_steps=STEPS.value, seed=0,
        keep_step=lambda s: True, on_keep=lambda *a: stamps.append((time.perf_counter(), time.process_time())))
    n = len(stamps) - 1
    return {"activation_checkpointing": every, "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
            "peak_rss_after_load_gb": round(load_peak, 2),
            "wall_s_per_step": round((stamps[-1][0] - stamps[0][0]) / n, 2),
            "cpu_s_per_step": round((stamps[-1][1] - stamps[0][1]) / n, 2),
            "losses": [round(x, 5) for x in r["losses"]], "loadavg_1_5_15": [round(x, 1) for x in os.getloadavg()]}


def main(argv) -> None:
    if CHILD.value is not None:
        print("RESULT " + json.dumps(one_setting(CHILD.value)), flush=True)
        return
    from dnd_jax import assets

    # absl leaves only positional arguments in argv: the children get the flags from sys.argv
    passed, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.split("=")[0] in ("--every", "--out", "--child"):
            skip = a in ("--every", "--out", "--child")  # "--flag value": drop the value too
            continue
        passed.append(a)
    out = {"command": " ".join(["python", "bench/activation_checkpointing.py", *sys.argv[1:]]), "task": TASK.value,
           "max_len": MAX_LEN.value, "batch": BATCH.value, "torch_threads": THREADS.value, "runs": []}
    for every in (int(e) for e in EVERY.value):
        proc = subprocess.run([sys.executable, __file__, f"--child={every}", *passed], capture_output=True,
                              text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(THREADS.value)))
        run = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
        out["runs"].append(run)
        print(json.dumps(run), flush=True)
        assets.write_json_atomic(Path(OUT.value), out)


if __name__ == "__main__":
    app.run(main)
