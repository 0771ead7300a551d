"""Scoring a causal LM on a task: cloze log-likelihoods, multiple-choice generation, bootstrap CIs.

Two protocols, both on the registry's :class:`~dnd_jax.tasks.Example`:

- ``cloze`` (lm-eval-harness style): the log-likelihood of each choice continuation after
  :func:`~dnd_jax.tasks.cloze_context`; the prediction is the argmax. ``acc_norm`` divides each
  log-likelihood by the continuation's length in *characters* (the string as scored, including its
  leading space), exactly like lm-eval's ``acc_norm``; ``acc`` uses the raw sum.
- ``mc`` (the DnD paper's protocol): greedy-decode a few tokens after the chat-formatted lettered
  question (:func:`~dnd_jax.tasks.mc_context`) and parse a label out of the text; an unparseable
  answer counts as wrong. Accuracy and the valid-answer rate are reported.

Every metric keeps its per-example correctness vector so that two systems can be compared with a
paired bootstrap over the same examples.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from dnd_jax import tasks as tasks_lib

# --- cloze ----------------------------------------------------------------------------------------


def encode_cloze(tokenizer, ex: tasks_lib.Example, max_len: int | None = None) -> list[tuple[list[int], int]]:
    """(context ids + continuation ids, continuation length) for each choice of ``ex``.

    Context and continuation are tokenized separately and concatenated, so every choice is scored
    on the same context tokens and the boundary never merges a context token into the answer (no
    special tokens are added, as in training). Over-long contexts are cut from the left.
    """
    ctx = tokenizer(tasks_lib.cloze_context(ex), add_special_tokens=False)["input_ids"]
    out = []
    for cont_text in tasks_lib.cloze_continuations(ex):
        cont = tokenizer(cont_text, add_special_tokens=False)["input_ids"]
        if not cont:
            raise ValueError(f"{ex.task}/{ex.id}: empty continuation {cont_text!r}")
        c = ctx
        if max_len is not None and len(c) + len(cont) > max_len:
            c = ctx[max(0, len(ctx) - (max_len - len(cont))):]
        if not c:
            raise ValueError(f"{ex.task}/{ex.id}: no context left after truncation to {max_len} tokens")
        out.append((list(c) + list(cont), len(cont)))
    return out


def _model_max_len(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _logits_at(model, rows: Sequence[int], cols: Sequence[int], **inputs):
    """Logits at positions ``(rows[i], cols[i])`` of one forward over ``inputs``.

    Only those positions go through the LM head (the full ``(B, T, V)`` logits of a real vocabulary
    would not fit in memory for a batch of long contexts); models that post-process logits (softcap)
    take the full forward.
    """
    import torch

    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if softcap is None and hasattr(model, "get_decoder") and model.get_output_embeddings() is not None:
        hidden = model.get_decoder()(**inputs).last_hidden_state
        return model.get_output_embeddings()(hidden[rows_t, cols_t])
    return model(**inputs).logits[rows_t, cols_t]


def _continuation_logprobs(model, seqs: Sequence[tuple[list[int], int]], pad_id: int) -> list[float]:
    """Summed log-prob of each sequence's last ``n`` tokens: one right-padded forward.

    Only the continuation positions go through the LM head (the full ``(B, T, V)`` logits of a real
    vocabulary would not fit in memory for a batch of long contexts).
    """
    import torch

    width = max(len(ids) for ids, _ in seqs) - 1
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols, targets, owner = [], [], [], []
    for i, (ids, n) in enumerate(seqs):
        inp = ids[:-1]
        input_ids[i, : len(inp)] = torch.tensor(inp)
        attention[i, : len(inp)] = 1
        start = len(ids) - n  # first continuation token; predicted at position start - 1
        for j in range(start, len(ids)):
            rows.append(i)
            cols.append(j - 1)
            targets.append(ids[j])
            owner.append(i)
    logits = _logits_at(model, rows, cols, input_ids=input_ids, attention_mask=attention)
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_lp = logp[torch.arange(len(targets)), torch.tensor(targets)]
    sums = torch.zeros(len(seqs), dtype=torch.float64).index_add_(0, torch.tensor(owner), token_lp.double())
    return sums.tolist()


def _shared_prefix(seqs: Sequence[tuple[list[int], int]]) -> int:
    """Length of the prefix all of a question's choice sequences share, never a scored token."""
    lcp = min(len(ids) - n for ids, n in seqs)
    first = seqs[0][0]
    for ids, _ in seqs[1:]:
        j = 0
        while j < lcp and ids[j] == first[j]:
            j += 1
        lcp = j
    return lcp


PACKING_MIN_SAVING = 0.25  # below this share of tokens saved, the dense 4D mask costs more than it saves


def packing_saving(encoded: Sequence[Sequence[tuple[list[int], int]]]) -> float:
    """Share of input tokens that packing saves over scoring each choice in its own row."""
    plain = sum(len(ids) for seqs in encoded for ids, _ in seqs)
    packed = sum(sum(len(ids) for ids, _ in seqs) - (len(seqs) - 1) * _shared_prefix(seqs) for seqs in encoded)
    return 1.0 - packed / max(1, plain)


def _packed_continuation_logprobs(model, groups: Sequence[Sequence[tuple[list[int], int]]],
                                  pad_id: int) -> list[list[float]]:
    """:func:`_continuation_logprobs` for groups of sequences that share a prefix (the choices of one
    question), each group packed into one row: the common prefix once, then every choice's remainder,
    with a 4D mask so a remainder sees the prefix and itself only and position ids that restart after
    the prefix. Same log-likelihoods as scoring each choice on its own (up to float reassociation), at
    the cost of the prefix once instead of once per choice.
    """
    import torch

    rows = []
    for seqs in groups:
        lcp = _shared_prefix(seqs)
        tokens, pos, block = list(seqs[0][0][:lcp]), list(range(lcp)), [0] * lcp
        where = []  # per choice: packed index of each of its own positions >= lcp
        for c, (ids, _) in enumerate(seqs):
            where.append(list(range(len(tokens), len(tokens) + len(ids) - lcp)))
            tokens += ids[lcp:]
            pos += range(lcp, len(ids))
            block += [c + 1] * (len(ids) - lcp)
        rows.append((tokens, pos, block, lcp, where))
    width = max(len(r[0]) for r in rows)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    blocks = torch.full((b, width), -1, dtype=torch.long)
    for i, (tokens, pos, block, _, _) in enumerate(rows):
        input_ids[i, : len(tokens)] = torch.tensor(tokens)
        position_ids[i, : len(tokens)] = torch.tensor(pos)
        blocks[i, : len(tokens)] = torch.tensor(block)
    q, k = blocks[:, :, None], blocks[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & ((k == 0) | (k == q)) & (k >= 0) & (q >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no empty softmax)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((b, 1, width, width), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    gather_rows, gather_cols, targets, owner = [], [], [], []
    for i, ((_, _, _, lcp, where), seqs) in enumerate(zip(rows, groups, strict=True)):
        for c, (ids, n) in enumerate(seqs):
            for j in range(len(ids) - n, len(ids)):
                m = j - 1  # the position (in the choice's own sequence) that predicts token j
                gather_rows.append(i)
                gather_cols.append(m if m < lcp else where[c][m - lcp])
                targets.append(ids[j])
                owner.append((i, c))
    logits = _logits_at(model, gather_rows, gather_cols, input_ids=input_ids, attention_mask=mask,
                        position_ids=position_ids)
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_lp = logp[torch.arange(len(targets)), torch.tensor(targets)].double().tolist()
    out = [[0.0] * len(seqs) for seqs in groups]
    for (i, c), lp in zip(owner, token_lp, strict=True):
        out[i][c] += lp
    return out


def cloze_scores(model, tokenizer, examples: Sequence[tasks_lib.Example], batch_size: int = 16,
                 max_len: int | None = None, progress: bool = True, packed: bool = False,
                 pack_min_saving: float = PACKING_MIN_SAVING) -> list[dict]:
    """Per example: ``loglik`` (summed, per choice), ``chars`` (normalizer, per choice), ``tokens``.

    ``batch_size`` examples go into one forward with all their choices. Examples are batched in
    order of length (less padding) and the results returned in the input order. ``packed``: one row
    per example, the shared context computed once (:func:`_packed_continuation_logprobs`), when that
    saves at least ``pack_min_saving`` of the input tokens over these examples (PIQA's short goals
    and long solutions save little and run slower packed: 0.9x; ARC-c 3.0x, OBQA 2.4x).
    """
    import torch

    max_len = max_len or _model_max_len(model)
    encoded = [encode_cloze(tokenizer, ex, max_len) for ex in examples]
    packed = packed and packing_saving(encoded) >= pack_min_saving
    if packed:  # packed row length: shared context + every choice's remainder (roughly)
        order = sorted(range(len(examples)), key=lambda i: -sum(len(ids) for ids, _ in encoded[i]))
    else:
        order = sorted(range(len(examples)), key=lambda i: -max(len(ids) for ids, _ in encoded[i]))
    out: list[dict | None] = [None] * len(examples)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(examples), desc="cloze", disable=not progress, leave=False)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            if packed:
                per = _packed_continuation_logprobs(model, [encoded[i] for i in idx], pad_id)
                sums = [x for p in per for x in p]
            else:
                sums = _continuation_logprobs(model, [s for i in idx for s in encoded[i]], pad_id)
            k = 0
            for i in idx:
                n = len(encoded[i])
                out[i] = {
                    "loglik": sums[k : k + n],
                    "chars": [len(c) for c in tasks_lib.cloze_continuations(examples[i])],
                    "tokens": [t for _, t in encoded[i]],
                }
                k += n
            bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


def cloze_predictions(scores: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(argmax of raw log-likelihood, argmax of per-character log-likelihood) per example."""
    raw = [int(np.argmax(s["loglik"])) for s in scores]
    norm = [int(np.argmax(np.asarray(s["loglik"]) / np.asarray(s["chars"]))) for s in scores]
    return raw, norm


# --- multiple choice (generation) -----------------------------------------------------------------

_YES_NO = {"yes": "true", "no": "false"}


def parse_mc_answer(text: str, labels: Sequence[str]) -> int | None:
    """The index of the label a generated answer names, or None if it names none.

    Accepted, in this order: a bracketed label ``[C]``/``[True]``; a parenthesized one ``(C)``;
    ``Answer: C`` / ``answer is C``; a leading label word ``C``, ``C.``, ``C)``, ``True``. For
    True/False labels, ``yes``/``no`` are synonyms. Inside brackets and after ``Answer:`` case
    is ignored; a bare leading single letter must be upper case (a leading ``a`` is an article).
    """
    low = [lab.lower() for lab in labels]
    boolean = set(low) == {"true", "false"}

    def lookup(word: str, strict_case: bool) -> int | None:
        w = word.lower()
        if boolean:
            w = _YES_NO.get(w, w)
        if w not in low:
            return None
        idx = low.index(w)
        if strict_case and len(labels[idx]) == 1 and word != labels[idx]:
            return None
        return idx

    text = text.strip()
    patterns = [
        (r"\[\s*([A-Za-z]+)\s*\]", False),
        (r"\(\s*([A-Za-z]+)\s*\)", False),
        (r"\banswer(?:\s+is)?\s*[:\-]?\s*[\[\(]?\s*([A-Za-z]+)", False),
        (r"^([A-Za-z]+)(?![A-Za-z])", True),
    ]
    for pattern, strict in patterns:
        for m in re.finditer(pattern, text, flags=re.IGNORECASE if not strict else 0):
            idx = lookup(m.group(1), strict)
            if idx is not None:
                return idx
    return None


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int):
    """Token-id prompts as one left-padded batch: ``(input_ids, attention_mask)``, both ``(B, longest)``
    int64, every row's last prompt token in the last column."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        input_ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        attention[r, width - len(p):] = 1
    return input_ids, attention


def generate_texts(model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   stops: Sequence[str] = (), batch_size: int = 16, desc: str = "generate",
                   progress: bool = False) -> list[str]:
    """New text of each token-id prompt by transformers' ``generate``: greedy, ``batch_size`` prompts at a
    time, left-padded (the attention mask keeps the pads out and sets the positions), a row done at the
    end-of-sequence token or once its new text holds one of ``stops``; a batch runs until all its rows
    are done."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnStrings(StoppingCriteria):
        def __init__(self, width: int):
            self.width = width

        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts], dtype=torch.bool)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[str] = []
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    with torch.inference_mode():
        for b in range(0, len(prompts), batch_size):
            input_ids, attention = left_pad(prompts[b : b + batch_size], pad_id)
            width = input_ids.shape[1]
            gen = model.generate(
                input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, temperature=None, top_p=None, top_k=None, pad_token_id=pad_id,
                stopping_criteria=StoppingCriteriaList([StopOnStrings(width)]) if stops else None,
            )
            out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            bar.update(len(input_ids))
    bar.close()
    return out


def mc_generate(model, tokenizer, examples: Sequence[tasks_lib.Example], batch_size: int = 16,
                max_new_tokens: int = 8, progress: bool = True) -> list[str]:
    """Greedy continuations (decoded text) of the chat-formatted lettered questions, longest first in
    batches (:func:`generate_texts`)."""
    prompts = [tokenizer(tasks_lib.mc_context(ex, tokenizer), add_special_tokens=False)["input_ids"]
               for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = generate_texts(model, tokenizer, [prompts[i] for i in order], max_new_tokens, batch_size=batch_size,
                           desc="mc", progress=progress)
    out = [""] * len(prompts)
    for i, text in zip(order, texts, strict=True):
        out[i] = text
    return out


# --- bootstrap --------------------------------------------------------------------------------------


def _resampled_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // max(1, len(x)))  # bound the index matrix's memory
    for s in range(0, n_boot, step):
        k = min(step, n_boot - s)
        means[s : s + k] = x[rng.integers(0, len(x), size=(k, len(x)))].mean(axis=1)
    return means


def bootstrap_ci(correct: Sequence[float], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over examples (NaNs when there are no examples)."""
    x = np.asarray(correct, dtype=np.float64)
    if len(x) == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    means = _resampled_means(x, n_boot, seed)
    a = (1.0 - level) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


def paired_bootstrap(correct_a: Sequence[float], correct_b: Sequence[float], n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``a - b`` over the same examples, its percentile CI, and ``p`` = P*(resampled diff <= 0).

    ``p`` is a one-sided bootstrap p-value-ish for "a is better than b": small means the gain is
    unlikely to be resampling noise; identical vectors give a difference of 0 and ``p`` = 1.
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same examples: {a.shape} vs {b.shape}")
    if len(a) == 0:
        return {"diff": float("nan"), "ci": [float("nan"), float("nan")], "p": float("nan"), "n": 0}
    d = a - b
    means = _resampled_means(d, n_boot, seed)
    lo, hi = (1.0 - level) / 2, 1 - (1.0 - level) / 2
    return {"diff": float(d.mean()), "ci": [float(np.quantile(means, lo)), float(np.quantile(means, hi))],
            "p": float(np.mean(means <= 0)), "n": int(len(d))}
