"""The function-space loss on the real base model: does the JAX forward match torch, and what does a step cost?

Two measurements on SmolLM2-135M-Instruct (``configs/smollm2_many.py``'s base model):

1. **Agreement**: logits of :mod:`dnd_jax.jax_lm` against transformers on the same sequences
   (right-padded, two lengths), with a random rank-8 all-linear LoRA applied on both sides via
   peft: max absolute difference and the logits' scale.
2. **Cost** of the function-loss term alone: forward + backward of ``function_loss.make_loss``'s
   answer NLL with respect to ``B`` generated adapters (the generator's output, 1590 tokens of
   192 x 8), for ``E`` examples of ``S`` tokens each, with and without rematerialisation: compile
   time, step time (median of 3), and the process's peak RSS; and the cut of the tokens into the
   per-row LoRA factors alone (forward + backward, 4 adapters). The bench fails if the loss does not
   depend on the tokens (it would be timing the base model alone).

    python bench/function_loss.py --out docs/bench/function_loss.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: configs/, dnd_jax/


def _timed(fn, *args) -> tuple[float, float, object]:
    """(seconds of the first call (compile included), median seconds of 3 more, the last result)."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first, times = time.perf_counter() - t, []
    for _ in range(3):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return first, float(np.median(times)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="4x2x64,8x2x64,4x4x96", help="BxExS cases, comma-separated")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from configs import common
    from dnd_jax import base_model, function_loss, jax_lm
    from dnd_jax.weights import layout as layout_lib
    from dnd_jax.weights import normalization

    ref = base_model.resolve({"kind": "smollm2"})
    cfg, params = jax_lm.load(ref.path)
    rng = np.random.default_rng(0)

    # 1. Agreement with transformers + peft.
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(common.LLAMA_ALL_LINEAR),
                                            lora_dropout=0.0)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    named = dict(peft.named_parameters())
    sd = {k: v.detach().numpy() for k, v in named.items() if "lora_" in k}
    factors = {k.split(".lora_A.")[0].removeprefix("base_model.model."):
               (v, sd[k.replace(".lora_A.", ".lora_B.")]) for k, v in sd.items() if ".lora_A." in k}
    ids = rng.integers(10, cfg.vocab_size, (2, 48))
    lengths = np.array([48, 29])
    ids[1, 29:] = 2
    att = (np.arange(48)[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        want = peft(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att)).logits.numpy()
    lora = jax_lm.stack_lora(cfg, {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in factors.items()})
    got = np.asarray(jax.jit(lambda p, i, n, lo: jax_lm.logits(cfg, p, i, n, lo, 2.0))(
        params, jnp.asarray(ids)[:, None], jnp.asarray(lengths)[:, None], lora))[:, 0]
    diff = max(float(np.abs(got[i, :n] - want[i, :n]).max()) for i, n in enumerate(lengths))
    agreement = {"max_abs_logit_diff": diff, "max_abs_logit": float(np.abs(want).max()),
                 "sequences": [int(n) for n in lengths], "lora": "rank 8, alpha 16, all-linear, N(0, 0.02)"}
    print("agreement", agreement, flush=True)

    # 2. Cost of the loss term, from normalized weight tokens as the generator emits them.
    layout = layout_lib.build_layout({k: v.shape for k, v in sd.items()}, (192, 8))
    tokens, mask = layout_lib.tokenize_batch(layout, [sd])
    norm = normalization.Normalizer.fit(np.concatenate([tokens, 0.9 * tokens]), mask, "per_element")
    # The cut of generated tokens into per-row LoRA factors, alone (forward + backward, B=4).
    cut = jax.jit(jax.grad(lambda x: sum(jnp.sum(a * a) + jnp.sum(b * b) for a, b in jax_lm.stack_lora(
        cfg, function_loss.lora_from_tokens(layout, norm.denormalize(x))).values())))
    pred4 = jnp.asarray(np.repeat(norm.normalize(tokens), 4, axis=0))
    _, cut_s, _ = _timed(cut, pred4)
    cut_row = {"B": 4, "tensors": len(layout.entries), "grid": list(layout.grid_shape),
               "fwd_bwd_s": round(cut_s, 4), "load_avg_1m": os.getloadavg()[0]}
    print("cut", cut_row, flush=True)
    cases = []
    for spec in args.shapes.split(","):
        b, e, s = (int(x) for x in spec.split("x"))
        pred = jnp.asarray(np.repeat(norm.normalize(tokens), b, axis=0))
        ids = jnp.asarray(rng.integers(10, cfg.vocab_size, (b, e, s)), jnp.int32)
        lens = jnp.full((b, e), s, jnp.int32)
        ans = jnp.full((b, e), 8, jnp.int32)
        for remat in (True, False):
            loss = function_loss.make_loss(cfg, layout, norm, 2.0, max_answer=8, remat=remat)
            step = jax.jit(jax.value_and_grad(loss))
            first, step_s, (value, grad) = _timed(step, pred, params, 0.0, ids, lens, ans)
            grad_max = float(jnp.abs(grad).max())
            if not grad_max > 0:  # the adapter must reach the loss, or this times the base model alone
                raise SystemExit(f"the loss does not depend on the generated tokens (max |grad| {grad_max})")
            row = {"B": b, "E": e, "S": s, "remat": remat, "compile_and_first_s": round(first, 2),
                   "step_s": round(step_s, 3), "tokens": b * e * s,
                   "nll": round(float(value), 4), "grad_abs_max": grad_max,
                   "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                   "load_avg_1m": os.getloadavg()[0]}
            print(row, flush=True)
            cases.append(row)
    out = {"command": "python bench/function_loss.py --out " + args.out, "base_model": ref.name,
           "devices": str(jax.devices()), "agreement": agreement, "cut": cut_row, "cost": cases,
           "note": "peak RSS is the process's running maximum (it includes the torch model of part 1)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
