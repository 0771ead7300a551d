"""A synthetic checkpoint zoo for tests and benchmarks (no base model, no LoRA training).

Writes exactly what ``dnd_jax.collect`` writes (see ``dnd_jax.zoo``): per task a manifest,
prompts.jsonl and peft checkpoint folders with ``dnd_checkpoint.json`` (step, loss, sha256).
Each task's LoRA tensors are ``shared + task offset + tiny per-checkpoint noise``, and its prompts
come from a task-specific template, so a generator can learn the prompt -> weights map.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dnd_jax import assets, zoo

#: XLA flags of every test process. The suite's programs are tiny, and XLA:CPU spends most of their
#: compile time in LLVM's optimizer (a threefry parameter init: ~0.4 s per parameter shape at the default
#: level, 3.7x less at -O0: bench/compile_level.py), so tests compile at -O0: the same programs, about 1.8x
#: less CPU for the suite (docs/test_suite.md). Production processes keep XLA's default.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


@functools.cache
def load_bench(name: str):
    """``bench/<name>.py`` of this checkout as a module, loaded once per process (a bench script that
    defines absl flags at import can define them only once)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xla_flags(devices: int = 1) -> str:
    """``XLA_FLAGS`` of a test process: ``devices`` simulated CPU devices and :data:`TEST_XLA_FLAGS`."""
    return (f"--xla_force_host_platform_device_count={devices} " if devices > 1 else "") + TEST_XLA_FLAGS


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """``os.environ`` for a CPU-only test subprocess with :func:`xla_flags` (``devices``)."""
    return {**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu", **extra}


def hold_lock(path: str | Path, seconds: float = 600.0, verb: str = "test"):
    """Another live process holding :func:`dnd_jax.locking.workdir_lock` on ``path`` (a ``subprocess.Popen``,
    returned once the lock is held). It releases the lock normally after ``seconds`` or when its stdin is
    closed (``proc.stdin.close(); proc.wait()``); kill it to leave a stale lock."""
    import subprocess
    import sys

    code = ("import select, sys; from dnd_jax import locking\n"
            "with locking.workdir_lock(sys.argv[1], sys.argv[3]):\n"
            "    print('held', flush=True); select.select([sys.stdin], [], [], float(sys.argv[2]))")
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds), verb], cwd=repo,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": repo})
    if proc.stdout.readline().strip() != "held":
        proc.kill()
        raise RuntimeError(f"the lock holder for {path} did not start (exit {proc.wait()})")
    return proc


_TEMPLATES = {
    "arc_e": ("Question: Which {a} property of {b} makes it useful in science class?", "physics chemistry"),
    "arc_c": ("Question: A student measures the {a} of a {b}; which result is most likely?", "measure test"),
    "piqa": ("Goal: how do I {a} a {b} at home without tools?", "fix clean"),
    "boolq": ("Passage: the {b} was founded in the {a} century.\nQuestion: is the {b} older than the {a}?", "history"),
    "hellaswag": ("A man is {a} a {b}. Then he", "video"),
    "obqa": ("Fact: {b} need {a} to grow. Question: what do {b} need?", "biology"),
    "winogrande": ("The {b} did not fit in the {a} because it was too", "pronoun"),
    "sciq": ("Which organelle of the {b} cell produces {a}?", "biology"),
}
_WORDS = ("red", "small", "water", "river", "tree", "metal", "glass", "light", "sound", "heavy", "warm", "cold",
          "paper", "chair", "sun", "moon", "dog", "bread", "rope", "stone")


def tiny_lora_shapes(layers: int = 2, hidden: int = 32, kv: int = 16, inter: int = 64, r: int = 4,
                     modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj")) -> dict[str, tuple[int, int]]:
    """peft LoRA tensor shapes of a Llama-like model (A: (r, in), B: (out, r))."""
    io = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
          "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    shapes = {}
    for i in range(layers):
        for m in modules:
            block = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{i}.{block}.{m}"
            d_in, d_out = io[m]
            shapes[f"{prefix}.lora_A.weight"] = (r, d_in)
            shapes[f"{prefix}.lora_B.weight"] = (d_out, r)
    return shapes


def _write_checkpoint(path: Path, tensors: dict[str, np.ndarray], step: int, loss: float, task: str, r: int,
                      modules: Sequence[str]) -> None:
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path / zoo.ADAPTER_WEIGHTS))
    (path / zoo.ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "lora_dropout": 0.0, "target_modules": list(modules),
        "base_model_name_or_path": "synthetic", "bias": "none", "task_type": "CAUSAL_LM"}))
    assets.write_json_atomic(path / zoo.CKPT_META, {"step": step, "loss": loss, "task": task,
                                                    "sha256": assets.file_sha256(path / zoo.ADAPTER_WEIGHTS)})


def make_synthetic_zoo(workdir: str | Path, tasks: Sequence[str] = ("arc_e", "piqa", "boolq"), num_ckpts: int = 4,
                       num_prompts: int = 16, shapes: dict[str, tuple[int, int]] | None = None, r: int = 4,
                       noise: float = 0.01, seed: int = 0, base_model: dict | None = None) -> Path:
    """Write a zoo under ``workdir/zoo``; returns ``workdir``. ``base_model`` ({name, path, sha}) names the
    model the zoo claims to be trained on (default: a placeholder no verb can load)."""
    workdir = Path(workdir)
    shapes = shapes or tiny_lora_shapes(r=r)
    modules = sorted({k.split(".")[-3] for k in shapes})
    rng = np.random.default_rng(seed)
    shared = {k: rng.normal(0, 0.1, s) for k, s in shapes.items()}
    lora = {"r": r, "lora_alpha": float(2 * r), "lora_dropout": 0.0, "target_modules": modules}
    base = dict(base_model or {"name": "synthetic", "path": "synthetic", "sha": "0" * 16})
    summaries = {}
    for ti, task in enumerate(tasks):
        tdir = zoo.task_dir(workdir, task)
        tdir.mkdir(parents=True, exist_ok=True)
        offset = {k: rng.normal(0, 0.1, s) for k, s in shapes.items()}
        template, _ = _TEMPLATES.get(task, ("Task {b}: {a}?", ""))
        lines = [json.dumps({"prompt": template.format(a=rng.choice(_WORDS), b=rng.choice(_WORDS)), "id": str(i)})
                 for i in range(num_prompts)]
        (tdir / "prompts.jsonl").write_text("\n".join(lines) + "\n")
        ckpts = []
        for c in range(num_ckpts):
            step = 10 + c
            tensors = {k: shared[k] + offset[k] + noise * rng.normal(0, 0.1, s) for k, s in shapes.items()}
            loss = float(2.0 - 0.1 * c - 0.01 * ti)
            _write_checkpoint(tdir / zoo.ckpt_name(step), tensors, step, loss, task, r, modules)
            ckpts.append({"step": step, "loss": loss, "dir": zoo.ckpt_name(step)})
        manifest = {"task": task, "base_model": base, "lora": lora, "answer_format": "cloze", "checkpoints": ckpts,
                    "num_prompts": num_prompts, "total_steps": 10 + num_ckpts, "final_loss": ckpts[-1]["loss"],
                    "first_loss": 3.0, "train_wall_time_s": 1.0, "split_sizes": {}, "train_examples_used": 0}
        assets.write_json_atomic(tdir / "manifest.json", manifest)
        summaries[task] = {"num_checkpoints": num_ckpts, "final_loss": ckpts[-1]["loss"], "num_prompts": num_prompts}
    assets.write_json_atomic(zoo.zoo_dir(workdir) / "manifest.json",
                             {"base_model": base, "lora": lora, "answer_format": "cloze", "tasks": summaries})
    return workdir
