"""Supervised LoRA fine-tuning of the frozen base model (torch + peft): the zoo's producer.

One function, :func:`train_lora`, trains a task's LoRA with the loss on answer tokens only and
calls back at every step it is asked to keep. Everything that decides the result comes from
arguments (seed, data order, hyper-parameters), so the same call gives the same tensors, and a run
resumed from a :class:`ResumeState` continues exactly where an uninterrupted run would be.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dnd_jax import tasks as tasks_lib

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 on context and padding


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int,
                 min_context: int = 0) -> list[tuple[list[int], int]]:
    """Token ids of context+answer and the answer's length; the context is cut from the left.

    ``min_context`` > 0 (generative tasks, whose solutions can be longer than ``max_len``): the
    context keeps its last ``min(len, min_context)`` tokens and the answer loses its tail instead.
    With 0, an answer keeps up to ``max_len`` tokens (choice answers are short).
    """
    out = []
    for context, answer in pairs:
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        ans = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ans = ans[: max_len - min(len(ctx), min_context)]
        ctx = ctx[max(0, len(ctx) - (max_len - len(ans))):]
        out.append((ctx + ans, len(ans)))
    return out


def collate(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> Batch:
    """Right-pad to the longest sequence of the batch (not a fixed length: short tasks run faster)."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    for i, (ids, n_ans) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, len(ids) - n_ans : len(ids)] = torch.tensor(ids[len(ids) - n_ans :])
    return Batch(input_ids, attention, labels)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Example indices of optimizer step ``step``: epoch-wise seeded permutations, a pure function."""
    per_epoch = max(1, num_examples // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    if num_examples < batch_size:
        return np.resize(perm, batch_size)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def answer_loss(model, batch: Batch):
    """Mean next-token cross-entropy over answer tokens; the LM head runs on those positions only."""
    import torch.nn.functional as F

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    targets = batch.labels[:, 1:]
    keep = targets != -100
    logits = inner.lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


def make_lora_model(base_model, r: int, alpha: float, dropout: float, target_modules: Sequence[str], seed: int):
    """Wrap the base model with a fresh LoRA; the init depends on ``seed`` only.

    Every task of a zoo uses the same seed, so all LoRA A matrices start from the same point: the
    generator must then learn task differences, not random initializations.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                     bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base_model, cfg)


def checkpoint_activations(model, every_n_layers: int) -> None:
    """Recompute every ``every_n_layers``-th decoder layer's activations in the backward (0: off).

    Activation memory of LoRA training grows with batch x sequence x layers (a 384-token batch of 8 on
    SmolLM2-135M holds ~11 GB here); checkpointing trades it for one more forward of those layers. The
    loss and gradients are the same computation (``tests/test_collect.py``).
    """
    if every_n_layers < 0:
        raise ValueError(f"every_n_layers must be >= 0 (0 = off), got {every_n_layers}")
    if every_n_layers:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.activation_checkpointing_enable(every_n_layers=every_n_layers)


def trainable_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def train_lora(
    model,
    tokenizer,
    examples: Sequence[tasks_lib.Example],
    *,
    answer_format: str,
    max_len: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    seed: int,
    keep_step: Callable[[int], bool],
    on_keep: Callable[[int, float, float], None],
    resume: dict | None = None,
    save_resume: Callable[[dict], None] | None = None,
    resume_every: int = 20,
    resume_every_s: float = 300.0,
    desc: str = "lora",
) -> dict:
    """Train ``model`` (already LoRA-wrapped) for ``total_steps``; call ``on_keep(step, loss, wall)``.

    ``resume`` is a state from ``save_resume`` (LoRA tensors, optimizer state, step, wall time):
    training continues from it exactly. A state is saved at every kept step, every ``resume_every`` steps
    and whenever ``resume_every_s`` seconds have passed since the last save (slow steps, e.g. 384-token
    batches at ~3 min a step on one thread, would otherwise lose up to an hour to a kill). Returns {'final_loss', 'wall_time_s', 'cpu_time_s', 'losses'}:
    ``wall_time_s`` is the steps' wall time, ``cpu_time_s`` this process's CPU time over the same steps
    (every thread; unlike the wall time it does not grow when other jobs share the cores; None when
    resumed from a state that did not record it).
    """
    import torch

    # Generative tasks (math/code solutions): sequences over max_len keep the last max_len // 2 context
    # tokens at most and the solution's head; its tail is dropped (the loss covers solution tokens only).
    generative = bool(examples) and tasks_lib.is_generative(examples[0].task)
    encoded = encode_pairs(tokenizer, [tasks_lib.training_pair(e, answer_format, tokenizer) for e in examples], max_len,
                           min_context=max_len // 2 if generative else 0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    start, wall, cpu, losses = 0, 0.0, 0.0, []
    if resume is not None:
        load_lora_state(model, resume["lora"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start, wall, losses = int(resume["step"]), float(resume["wall_time_s"]), list(resume["losses"])
        cpu = None if resume.get("cpu_time_s") is None else float(resume["cpu_time_s"])
        if "torch_rng" in resume:  # LoRA dropout draws from torch's global generator
            torch.set_rng_state(resume["torch_rng"])
    model.train()
    last_save = time.monotonic()
    bar = tqdm(range(start, total_steps), desc=desc, initial=start, total=total_steps, dynamic_ncols=True)
    for step in bar:
        t0, c0 = time.perf_counter(), time.process_time()
        idx = batch_indices(len(encoded), batch_size, step, seed)
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id)
        loss = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        wall += time.perf_counter() - t0
        if cpu is not None:
            cpu += time.process_time() - c0
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if keep_step(done):
            on_keep(done, losses[-1], wall)
        due = keep_step(done) or done % resume_every == 0 or time.monotonic() - last_save >= resume_every_s
        if save_resume is not None and due and done < total_steps:
            last_save = time.monotonic()
            save_resume({"lora": trainable_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "step": done, "wall_time_s": wall, "cpu_time_s": cpu, "losses": losses, "torch_rng": torch.get_rng_state()})
    model.eval()
    return {"final_loss": losses[-1] if losses else float("nan"), "wall_time_s": wall, "cpu_time_s": cpu,
            "losses": losses}


def save_resume_state(path: Path, state: dict) -> None:
    """Atomically save a resume state (tensors + plain Python values; loaded with weights_only)."""
    import os

    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_resume_state(path: Path) -> dict | None:
    """The resume state at ``path`` (None if there is none). Saved atomically, so a file that does not
    load is corruption: an :class:`~dnd_jax.errors.IntegrityError` naming it, never a silent restart."""
    import pickle

    import torch

    from dnd_jax.errors import IntegrityError

    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise IntegrityError(f"resume state {path} cannot be read ({type(e).__name__}); delete it to redo that "
                             f"task from the start") from None
    if not isinstance(state, dict) or not {"lora", "optimizer", "scheduler", "step"} <= set(state):
        raise IntegrityError(f"resume state {path} is not one dnd_jax wrote; delete it to redo that task")
    return state


def load_lora_state(model, lora: dict) -> None:
    """Load saved LoRA tensors: exactly the model's trainable parameters, no more, no fewer."""
    from dnd_jax.errors import IntegrityError

    want = {k for k, v in model.named_parameters() if v.requires_grad}
    if set(lora) != want:
        extra, missing = sorted(set(lora) - want), sorted(want - set(lora))
        raise IntegrityError(f"resume state does not fit this LoRA model (unexpected {extra[:2]}, missing "
                             f"{missing[:2]})")
    result = model.load_state_dict(lora, strict=False)  # strict=False only because the frozen base is not saved
    if result.unexpected_keys:
        raise IntegrityError(f"resume state has unexpected tensors {result.unexpected_keys[:2]}")
