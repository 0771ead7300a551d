"""Metrics of generative tasks (math, code): bits per byte, greedy solutions, exact match, pass@1.

- ``bpb``: bits per byte of the **gold** solution under the model, per example:
  ``-sum(log p(gold tokens | context)) / (ln 2 * UTF-8 bytes of the scored gold text)``. Lower is
  better. It moves even where a 135M model solves nothing, and it is per example, so the registry's
  paired bootstrap compares two systems exactly as for accuracy. Sequences longer than ``max_len``
  tokens: the context keeps its last ``min(len, max_len // 2)`` tokens, the gold solution fills the
  rest and loses its tail; the bytes counted are those of the scored prefix (decoded), and the
  number of truncated examples is reported.
- ``exact_match`` (GSM8K; the MATH subjects): greedy decoding (``max_new_tokens``), cut at the task's
  stop sequences, final answer parsed (GSM8K: the number after "the answer is", else the last number;
  MATH: the last ``\\boxed{}``) and compared with the gold answer.
- ``pass@1`` (HumanEval, MBPP in Python): the greedy solution, cut at the stop sequences, run with
  the task's tests in :mod:`dnd_jax.sandbox`; 1 if it exits cleanly within the limits.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from dnd_jax import assets, sandbox, scoring
from dnd_jax import tasks as tasks_lib

LN2 = math.log(2.0)
BPB_MAX_LEN = 1024  # tokens per scored sequence (context + gold)
MAX_PROMPT_LEN = 768  # prompt tokens kept for generation
SANDBOX_LIMITS = sandbox.Limits(cpu_s=5, wall_s=60.0, memory_mb=512)
# Everything besides the model and examples that decides a generative result (goes into the evaluation cache
# key; pass@1's key also holds SANDBOX_LIMITS). Version 2: the sandbox limits moved to pass@1's key alone
# when its time limit became CPU seconds (it was 5 s of wall time, which a loaded machine could eat).
SETTINGS = {"version": 2, "bpb_max_len": BPB_MAX_LEN, "max_prompt_len": MAX_PROMPT_LEN}


def encode_gold(tokenizer, ex: tasks_lib.Example, max_len: int) -> tuple[list[int], int, int, bool]:
    """(context + kept gold ids, number of kept gold tokens, bytes of the kept gold text, truncated?)."""
    ctx = tokenizer(tasks_lib.cloze_context(ex), add_special_tokens=False)["input_ids"]
    gold_text = tasks_lib.gold_continuation(ex)
    gold = tokenizer(gold_text, add_special_tokens=False)["input_ids"]
    if not gold:
        raise ValueError(f"{ex.task}/{ex.id}: empty gold continuation")
    truncated = len(ctx) + len(gold) > max_len
    if truncated:
        gold = gold[: max_len - min(len(ctx), max_len // 2)]
        ctx = ctx[max(0, len(ctx) - (max_len - len(gold))):]
        n_bytes = len(tokenizer.decode(gold).encode("utf-8"))
    else:
        n_bytes = len(gold_text.encode("utf-8"))
    if not ctx:
        raise ValueError(f"{ex.task}/{ex.id}: no context left after truncation to {max_len} tokens")
    return list(ctx) + list(gold), len(gold), max(1, n_bytes), truncated


def bits_per_byte(model, tokenizer, examples: Sequence[tasks_lib.Example], max_len: int = 1024,
                  token_budget: int = 4096, progress: bool = True) -> dict:
    """Per example ``bpb``, ``loglik`` (nats), ``bytes``, ``tokens`` and ``truncated`` (lists, input order).

    Examples are batched by length until a batch holds ``token_budget`` padded tokens.
    """
    import torch

    max_len = min(max_len, getattr(getattr(model, "config", None), "max_position_embeddings", None) or max_len)
    encoded = [encode_gold(tokenizer, ex, max_len) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(encoded[i][0]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loglik = [0.0] * len(examples)
    bar = tqdm(total=len(examples), desc="bpb", disable=not progress, leave=False)
    with torch.inference_mode():
        b = 0
        while b < len(order):
            width = len(encoded[order[b]][0])
            k = max(1, token_budget // width)
            idx = order[b : b + k]
            sums = scoring._continuation_logprobs(model, [(encoded[i][0], encoded[i][1]) for i in idx], pad_id)
            for i, s in zip(idx, sums, strict=True):
                loglik[i] = s
            bar.update(len(idx))
            b += k
    bar.close()
    n_bytes = [e[2] for e in encoded]
    bpb = [-ll / (LN2 * nb) for ll, nb in zip(loglik, n_bytes, strict=True)]
    if not all(np.isfinite(bpb)):
        raise FloatingPointError("non-finite bits per byte: the model's log-probabilities are not finite")
    return {"bpb": bpb, "loglik": loglik, "bytes": n_bytes, "tokens": [e[1] for e in encoded],
            "truncated": [int(e[3]) for e in encoded]}


def greedy_solutions(model, tokenizer, examples: Sequence[tasks_lib.Example], stops: Sequence[str],
                     max_new_tokens: int, batch_size: int = 8, max_prompt_len: int = 768,
                     progress: bool = True, journal: Path | None = None, journal_key: dict | None = None) -> list[str]:
    """Greedy continuations of each example's context, cut at the first stop sequence.

    Left padding (every row's last prompt token at the same position); prompts longer than
    ``max_prompt_len`` tokens keep their last ``max_prompt_len`` tokens. A row leaves its batch as soon
    as its text holds a stop sequence or it emits the end-of-sequence token (:func:`greedy_decode`), so
    a batch costs what its rows need, not ``batch_size`` times its longest row.

    ``journal``: after every batch the texts so far are written there (atomically, with ``journal_key`` and
    the decoding seconds behind them, summed over runs), and a run that finds a journal with the same key
    decodes only the problems it lacks, so a killed evaluation loses at most one batch. A problem's text does not depend on its batch
    (``tests/test_math_code.py::test_greedy_texts_do_not_depend_on_the_batch_size``), so a resumed run
    returns what an uninterrupted one would. The caller removes the journal once the result is stored.
    """
    prompts = [tokenizer(tasks_lib.cloze_context(ex), add_special_tokens=False)["input_ids"][-max_prompt_len:]
               for ex in examples]
    out: list[str] = [""] * len(prompts)
    prior = read_journal(journal, journal_key, len(prompts))
    done, t0 = dict(prior.texts), time.time()
    for i, text in done.items():
        out[i] = text
    order = sorted((i for i in range(len(prompts)) if i not in done), key=lambda i: -len(prompts[i]))
    bar = tqdm(total=len(prompts), initial=len(done), desc="generate", disable=not progress, leave=False)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        rows = greedy_decode(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, stops)
        for i, tokens in zip(idx, rows, strict=True):
            out[i] = done[i] = truncate_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops)
        if journal is not None and len(done) < len(prompts):
            assets.write_json_atomic(journal, {"key": journal_key, "texts": {str(i): t for i, t in done.items()},
                                               "wall_s": None if prior.wall_s is None else prior.wall_s + time.time() - t0})
        bar.update(len(idx))
    bar.close()
    return out


class Journal(NamedTuple):
    """What a :func:`greedy_solutions` journal holds: the texts decoded so far, by problem index, and the
    seconds their decoding took over every run that wrote them (None: a journal from before that was kept)."""
    texts: dict[int, str]
    wall_s: float | None


def read_journal(path: Path | None, key: dict | None, n: int) -> Journal:
    """The :func:`greedy_solutions` journal at ``path`` written under ``key`` (absent, or another key's: empty).
    It is written atomically, so one that does not parse is corruption: an IntegrityError naming it."""
    from dnd_jax.errors import IntegrityError

    if path is None or not path.is_file():
        return Journal({}, 0.0)
    try:
        obj = json.loads(path.read_text())
        if obj.get("key") != key:
            return Journal({}, 0.0)
        texts = {int(i): t for i, t in obj["texts"].items()}
        if not all(0 <= i < n and isinstance(t, str) for i, t in texts.items()):
            raise ValueError("indices or texts out of range")
        wall = obj.get("wall_s")
        if wall is not None and not (isinstance(wall, (int, float)) and wall >= 0):
            raise ValueError(f"wall_s {wall!r}")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path}: not a readable generation journal ({e}); it is written atomically, so "
                             "this is corruption: delete it to decode those problems again") from None
    return Journal(texts, None if wall is None else float(wall))


def greedy_decode(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  stops: Sequence[str] = ()) -> list[list[int]]:
    """Greedy new tokens for a batch of token-id prompts (left-padded, one KV cache).

    What ``model.generate(do_sample=False)`` with a stop-string criterion gives, up to the order of
    floating-point sums: positions count each row's real tokens from 0 (pads get 0), a row stops after
    the token that puts a stop sequence into its new text or after an end-of-sequence token (kept in its
    list, as generate keeps it), and at ``max_new_tokens``. Unlike generate, a stopped row is dropped
    from the batch and its cache, so the rest decode without it.
    """
    import torch
    from transformers import DynamicCache

    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos_ids = set(eos if isinstance(eos, list | tuple) else [] if eos is None else [eos])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention = scoring.left_pad(prompts, pad_id)
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    new: list[list[int]] = [[] for _ in prompts]
    alive = list(range(len(prompts)))
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
        last = positions[:, -1]
        for step in range(max_new_tokens):
            token = logits.argmax(-1)
            keep = []
            for r, row in enumerate(alive):
                t = int(token[r])
                new[row].append(t)
                done = t in eos_ids or (stops and any(
                    s in tokenizer.decode(new[row], skip_special_tokens=True) for s in stops))
                if not done:
                    keep.append(r)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(alive):
                sel = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(sel)
                attention, last, token = attention[sel], last[sel], token[sel]
                alive = [alive[r] for r in keep]
            attention = torch.cat([attention, attention.new_ones((len(alive), 1))], dim=-1)
            last = last + 1
            logits = model(input_ids=token[:, None], attention_mask=attention, position_ids=last[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
    return new


def reference_greedy_solutions(model, tokenizer, examples: Sequence[tasks_lib.Example], stops: Sequence[str],
                               max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """:func:`greedy_solutions` through transformers' ``generate`` (:func:`scoring.generate_texts`, stopped
    rows kept to the batch's end): the reference that tests and ``bench/greedy_batch.py`` hold
    :func:`greedy_decode` to."""
    prompts = [tokenizer(tasks_lib.cloze_context(ex), add_special_tokens=False)["input_ids"] for ex in examples]
    texts = scoring.generate_texts(model, tokenizer, prompts, max_new_tokens, stops, batch_size)
    return [truncate_at_stop(t, stops) for t in texts]


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def exact_match_scores(examples: Sequence[tasks_lib.Example], texts: Sequence[str]) -> dict:
    from dnd_jax.task_sources import math_code

    rows = [math_code.exact_match(ex.task, ex.id, t) for ex, t in zip(examples, texts, strict=True)]
    return {"correct": [c for c, _ in rows], "pred": [p for _, p in rows],
            "valid": [int(p is not None) for _, p in rows]}


def pass_at_1_scores(examples: Sequence[tasks_lib.Example], texts: Sequence[str],
                     limits: sandbox.Limits = sandbox.Limits(), workers: int | None = None) -> dict:
    """Run each solution against its tests in the sandbox; ``workers`` at a time (default: up to 2, at
    most one per core this process may use). The verdicts do not depend on ``workers`` or on the machine's
    load: the time limit is CPU seconds; only the wall-clock backstop, for programs that wait, is wall time."""
    import os

    from dnd_jax.task_sources import math_code

    if workers is None:
        workers = max(1, min(2, len(os.sched_getaffinity(0))))
    programs = [math_code.python_program(ex.task, ex.id, t) for ex, t in zip(examples, texts, strict=True)]
    results = sandbox.run_many(programs, limits, workers)
    return {"correct": [int(r.passed) for r in results], "status": [r.status for r in results]}


def score(model, tokenizer, examples: Sequence[tasks_lib.Example], metric: str, *, max_new_tokens: int,
          batch_size: int = 8, progress: bool = True, journal: Path | None = None,
          journal_key: dict | None = None) -> dict:
    """The per-example record of one metric (``correct`` is higher-is-better: minus bpb for ``bpb``).
    ``journal``/``journal_key``: the decoding metrics' resume journal (:func:`greedy_solutions`)."""
    from dnd_jax.task_sources import math_code

    if metric == "bpb":
        r = bits_per_byte(model, tokenizer, examples, BPB_MAX_LEN, progress=progress)
        return {"correct": [-x for x in r["bpb"]], **r}
    if not examples:
        return {"correct": [], "texts": []}
    task = examples[0].task
    if any(ex.task != task for ex in examples):
        raise ValueError("generation metrics score one task at a time")
    texts = greedy_solutions(model, tokenizer, examples, math_code.stop_sequences(task), max_new_tokens,
                             batch_size=batch_size, max_prompt_len=MAX_PROMPT_LEN, progress=progress,
                             journal=journal, journal_key=journal_key)
    if metric == "exact_match":
        return exact_match_scores(examples, texts) | {"texts": texts}
    if metric == "pass@1":
        return pass_at_1_scores(examples, texts, SANDBOX_LIMITS) | {"texts": texts}
    raise ValueError(f"unknown generative metric '{metric}' (bpb, exact_match, pass@1)")
