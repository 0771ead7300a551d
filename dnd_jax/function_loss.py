"""Function-space loss: the answer NLL of the frozen base LM with the *generated* adapter applied.

The weight-space MSE regresses every generated adapter to the conditional mean of its training tasks'
checkpoints: docs/scaling measured its step from the pool mean at a fifth of the length that accuracy
rewards. ``config.function_loss.weight > 0`` adds, per training example (a generated adapter for task
``t``), the mean negative log-likelihood of answer tokens of ``function_loss.examples`` labelled
training examples of ``t`` under ``base + generated LoRA`` (the zoo's own training loss, now judged on
what the adapter does instead of where its weights lie). The generator's output flows, differentiably,
through de-normalization (plus the similarity center when one is used), the weight layout and
:mod:`dnd_jax.jax_lm`'s forward of the base model.

The examples are the zoo's training examples (the train split; never a held-out target's), encoded
exactly as the zoo's LoRAs were trained on them (:func:`dnd_jax.lora_train.encode_pairs`, cut to
``function_loss.max_len`` tokens). Batch ``step``'s examples are a pure function of ``(seed, step)``,
so a resumed run draws what an uninterrupted one would.

At scale the frozen base LM is the term's largest input: ``function_loss.dtype = 'bfloat16'`` keeps its
weights and activations in bfloat16 (LoRA factors are cast to it; attention softmax, logits and the loss
stay float32), and ``config.sharding``'s rules place it like the generator's parameters, over
``base_lm/<path>`` paths (``base_lm/embed``, ``base_lm/layers/q_proj``, ...): the default rules replicate
it, ``(r"base_lm/.*", "fsdp(axis='data')")`` (or the FSDP configs' catch-all) splits every weight over
the data axis. Each process reads the checkpoint and places only its own devices' shards.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging

from dnd_jax import tasks as tasks_lib
from dnd_jax.errors import InputError
from dnd_jax.weights import layout as layout_lib
from dnd_jax.weights import lora as lora_lib

if TYPE_CHECKING:  # configs import DEFAULTS: JAX loads only where the loss is built
    from dnd_jax import jax_lm
    from dnd_jax.weights import normalization

# weight 0: off (the loss and everything trained before this key existed are unchanged).
# pool: labelled examples kept per task (the first ones of its train split); examples: drawn per row
# and step; max_len: tokens per sequence (context cut from the left); max_answer: answer positions
# scored (0: the longest answer in the pool; answers longer than it are scored on their last tokens).
# dtype: the base LM's weights and compute ('float32' or 'bfloat16').
DEFAULTS = dict(weight=0.0, examples=2, pool=256, max_len=64, max_answer=0, remat=True, dtype="float32")
DTYPES = ("float32", "bfloat16")
BASE_PREFIX = "base_lm"  # the base LM's parameter paths under config.sharding: base_lm/layers/q_proj


def settings(config) -> dict:
    """``config.function_loss`` with defaults for keys it lacks (configs written before it existed)."""
    s = dict(DEFAULTS) | dict(config.get("function_loss", {}) or {})
    if float(s["weight"]) < 0 or not np.isfinite(float(s["weight"])):
        raise InputError(f"function_loss.weight must be a finite number >= 0, got {s['weight']}")
    for k in ("examples", "pool", "max_len"):
        if int(s[k]) < 1:
            raise InputError(f"function_loss.{k} must be >= 1, got {s[k]}")
    if int(s["max_answer"]) < 0:
        raise InputError(f"function_loss.max_answer must be >= 0, got {s['max_answer']}")
    if str(s["dtype"]) not in DTYPES:
        raise InputError(f"function_loss.dtype must be one of {DTYPES}, got '{s['dtype']}'")
    return s


def enabled(config) -> bool:
    return float(settings(config)["weight"]) > 0


def dtype(config):
    """The base LM's dtype (a JAX dtype) under ``function_loss.dtype``."""
    import jax.numpy as jnp

    return jnp.dtype(str(settings(config)["dtype"]))


def put_base(host_params, shardings):
    """Host (numpy) base-LM leaves onto their shardings; every process supplies only its devices' shards."""
    import jax

    return jax.tree.map(lambda a, s: jax.make_array_from_callback(a.shape, s, lambda idx: a[idx]),
                        host_params, shardings)


@dataclasses.dataclass
class Examples:
    """Encoded labelled examples per training task, right-padded: ``(K, P, S)`` ids."""

    ids: np.ndarray  # (K, P, S) int32
    lengths: np.ndarray  # (K, P) int32
    answer_len: np.ndarray  # (K, P) int32, at most max_answer
    count: np.ndarray  # (K,) real examples per task (rows past it repeat row 0 and are never drawn)
    max_answer: int

    def sample(self, task_of_rows: np.ndarray, step: int, seed: int, n: int) -> tuple[np.ndarray, ...]:
        """``(ids (B, n, S), lengths (B, n), answer_len (B, n))`` for rows of tasks ``task_of_rows``."""
        rng = np.random.default_rng([int(seed), int(step), 0x464C])  # "FL": a stream of its own
        pick = np.stack([rng.choice(int(self.count[t]), size=n, replace=int(self.count[t]) < n)
                         for t in task_of_rows]).astype(np.int64)
        t = np.asarray(task_of_rows)[:, None]
        return self.ids[t, pick], self.lengths[t, pick], self.answer_len[t, pick]


def resolve_base(config, zoo_workdir, tasks: Sequence[str]):
    """The base model (:class:`dnd_jax.base_model.BaseModelRef`) the loss runs, checked against the zoo's."""
    from dnd_jax import base_model, zoo
    from dnd_jax.errors import ConfigError

    ref = base_model.resolve(config.base_model, zoo_workdir)
    claimed = zoo.task_manifest(zoo_workdir, tasks[0]).get("base_model", {})
    if claimed.get("sha") and claimed["sha"] != ref.sha:
        raise ConfigError(f"function_loss: config.base_model is {ref.name} (sha {ref.sha}) but the zoo was trained on "
                          f"{claimed.get('name')} (sha {claimed['sha']})")
    return ref


def load_examples(config, tasks: Sequence[str], tokenizer) -> Examples:
    """Encode the first ``function_loss.pool`` train examples of every task in ``tasks``."""
    from dnd_jax import lora_train

    s = settings(config)
    max_len, pool = int(s["max_len"]), int(s["pool"])
    t0 = time.perf_counter()
    encoded: list[list[tuple[list[int], int]]] = []
    for t in tasks:
        exs = tasks_lib.load_examples(t, "train", limit=pool)
        if not exs:
            raise InputError(f"task '{t}' has no train examples for function_loss")
        pairs = [tasks_lib.training_pair(e, config.answer_format, tokenizer) for e in exs]
        encoded.append(lora_train.encode_pairs(tokenizer, pairs, max_len))
    longest = max(n for enc in encoded for _, n in enc)
    max_answer = min(longest, int(s["max_answer"]) or longest, max_len - 1)
    k, p = len(tasks), max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((k, p, max_len), pad, np.int32)
    lengths = np.zeros((k, p), np.int32)
    ans = np.zeros((k, p), np.int32)
    for i, enc in enumerate(encoded):
        for j in range(p):
            seq, n = enc[j] if j < len(enc) else enc[0]
            ids[i, j, :len(seq)] = seq
            lengths[i, j] = len(seq)
            ans[i, j] = min(n, max_answer, len(seq) - 1)
    logging.info("function_loss: %d tasks x <= %d examples of <= %d tokens (answers <= %d scored) in %.1f s",
                 k, p, max_len, max_answer, time.perf_counter() - t0)
    return Examples(ids, lengths, ans, np.asarray([len(e) for e in encoded], np.int32), max_answer)


def lora_from_tokens(layout: layout_lib.WeightLayout, tokens: Any) -> dict[str, tuple[Any, Any]]:
    """Raw weight tokens ``(B, T, h, w)`` -> ``{module path: (A (B, r, in), B (B, out, r))}`` (differentiable).

    Every tensor of the layout must be one factor of a complete LoRA pair (peft's saved
    ``.lora_A.weight`` / in-memory ``.lora_A.<adapter>.weight`` names): anything else is refused, never
    skipped (a skipped factor would leave the loss blind to part of the generated adapter).
    """
    mats = layout_lib.detokenize_jax(layout, tokens)
    pairs: dict[str, dict[str, Any]] = {}
    for key, m in mats.items():
        try:
            module = lora_lib.module_path(key)
        except ValueError:
            raise InputError(f"function_loss: layout tensor '{key}' is not a LoRA A/B factor") from None
        pairs.setdefault(module, {})["A" if ".lora_A." in key else "B"] = m
    for module, ab in pairs.items():
        if len(ab) != 2:
            raise InputError(f"function_loss: the layout has lora_{next(iter(ab))} of {module} but not its other factor")
    return {module: (ab["A"], ab["B"]) for module, ab in pairs.items()}


def make_loss(lm_cfg: jax_lm.LMConfig, layout: layout_lib.WeightLayout, normalizer: normalization.Normalizer,
              scaling: float, max_answer: int, remat: bool = True, row_sharding=None):
    """``loss(pred, lm_params, base, ids, lengths, answer_len) -> mean NLL per answer token``.

    ``pred`` (B, T, h, w) is the generator's normalized output and ``base`` what it is a residual from
    (zeros, or the rows' similarity centers); the adapter is ``denormalize(pred + base)``. Answers are
    at most ``max_answer`` tokens (:attr:`Examples.max_answer`). ``row_sharding`` (a sharding of the
    ``(B, T, h, w)`` tokens, rows over the data axis and nothing else split) is imposed on the adapter's
    tokens before they are cut into matrices: each device then builds only its own rows' adapters.
    """

    import jax
    import jax.numpy as jnp

    from dnd_jax import jax_lm

    def loss(pred, lm_params, base, ids, lengths, answer_len):
        raw = normalizer.denormalize(pred.astype(jnp.float32) + base)
        if row_sharding is not None:
            raw = jax.lax.with_sharding_constraint(raw, row_sharding)
        lora = jax_lm.stack_lora(lm_cfg, lora_from_tokens(layout, raw))
        lp = jax_lm.answer_logprob(lm_cfg, lm_params, ids, lengths, answer_len, lora, scaling,
                                   max_answer=max_answer, remat=remat)
        return -jnp.sum(lp) / jnp.maximum(jnp.sum(answer_len), 1)

    return loss
