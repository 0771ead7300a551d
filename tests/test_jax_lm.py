"""The JAX base LM (dnd_jax/jax_lm.py) against transformers + peft: same logits, same LoRA math."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dnd_jax import jax_lm, lora_train
from dnd_jax.errors import InputError

jax.config.update("jax_default_matmul_precision", "highest")


def _peft_model(path, r=4, alpha=8.0, seed=0, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                         "down_proj")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(modules), lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B is zero at init: give every factor random values so the LoRA path matters
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return peft.eval()


def _factors(peft) -> dict:
    out = {}
    for name, p in peft.named_parameters():
        if ".lora_A." in name:
            mod = name.split(".lora_A.")[0].removeprefix("base_model.model.")
            b = dict(peft.named_parameters())[name.replace(".lora_A.", ".lora_B.")]
            out[mod] = (p.detach().numpy(), b.detach().numpy())
    return out


def _batch(vocab: int, rows: int = 3, width: int = 11, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = np.array([width, width - 4, width - 7][:rows])
    ids = rng.integers(3, vocab, (rows, width))
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    return ids, lengths


def _torch_logits(model, ids, lengths):
    att = (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att)).logits.float().numpy()


def _check_logits(path, **lora_kw):
    peft = _peft_model(path, **lora_kw)
    cfg, params = jax_lm.load(path)
    ids, lengths = _batch(cfg.vocab_size)
    scale = lora_kw.get("alpha", 8.0) / lora_kw.get("r", 4)
    lora = jax_lm.stack_lora(cfg, {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in _factors(peft).items()})
    got = np.asarray(jax_lm.logits(cfg, params, jnp.asarray(ids)[:, None], jnp.asarray(lengths)[:, None], lora, scale))
    want = _torch_logits(peft, ids, lengths)
    with peft.disable_adapter():
        want_base = _torch_logits(peft, ids, lengths)
    got_base = np.asarray(jax_lm.logits(cfg, params, jnp.asarray(ids)[:, None], jnp.asarray(lengths)[:, None]))
    for i, n in enumerate(lengths):  # padded positions are never read
        np.testing.assert_allclose(got[i, 0, :n], want[i, :n], atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(got_base[i, 0, :n], want_base[i, :n], atol=2e-5, rtol=1e-4)
        assert np.abs(want[i, :n] - want_base[i, :n]).max() > 1e-2  # the LoRA really changes the logits


def test_llama_logits_match_transformers_and_peft(tiny_base):
    _check_logits(tiny_base.path)


def test_partial_lora_modules_match_peft(tiny_base):
    _check_logits(tiny_base.path, r=2, alpha=3.0, modules=("q_proj", "down_proj"))


def test_qwen2_attention_bias_matches_transformers(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=48, tie_word_embeddings=False, rope_theta=5000.0)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape))
    model.save_pretrained(tmp_path, safe_serialization=True)
    _check_logits(tmp_path)


def test_mistral_matches_transformers(tmp_path):
    """The Mistral family (no sliding window: v0.2 and later) is the Llama forward; checked, not assumed."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(1)
    cfg = MistralConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=48, sliding_window=None, rope_theta=20000.0)
    MistralForCausalLM(cfg).save_pretrained(tmp_path, safe_serialization=True)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mistral"
    _check_logits(tmp_path)


def test_bfloat16_checkpoints_load_exactly(tmp_path, tiny_base):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base.path, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = jax_lm.load(tmp_path)
    want = model.model.layers[1].mlp.down_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(params["layers"]["down_proj"][1]), want)
    np.testing.assert_array_equal(np.asarray(params["embed"]), model.model.embed_tokens.weight.detach().float().numpy())


def test_per_row_adapters_equal_one_adapter_at_a_time(tiny_base):
    cfg, params = jax_lm.load(tiny_base.path)
    ids, lengths = _batch(cfg.vocab_size)
    facs = [_factors(_peft_model(tiny_base.path, seed=s)) for s in (1, 2, 3)]
    batched = jax_lm.stack_lora(cfg, {k: (jnp.stack([f[k][0] for f in facs]), jnp.stack([f[k][1] for f in facs]))
                                      for k in facs[0]})
    # every adapter row b scores the same 3 sequences: (B=3, N=3, S)
    ids3, len3 = jnp.broadcast_to(jnp.asarray(ids), (3, *ids.shape)), jnp.broadcast_to(jnp.asarray(lengths), (3, 3))
    got = np.asarray(jax_lm.logits(cfg, params, ids3, len3, batched, 2.0))
    for b, f in enumerate(facs):
        one = jax_lm.stack_lora(cfg, {k: (jnp.asarray(a), jnp.asarray(bb)) for k, (a, bb) in f.items()})
        want = np.asarray(jax_lm.logits(cfg, params, jnp.asarray(ids)[None], jnp.asarray(lengths)[None], one, 2.0))[0]
        np.testing.assert_allclose(got[b], want, atol=1e-5, rtol=1e-5)


def test_answer_logprob_equals_the_torch_answer_loss(tiny_base):
    """The function-space objective is the zoo's own training loss (lora_train.answer_loss), per token."""
    from transformers import AutoTokenizer

    peft = _peft_model(tiny_base.path, seed=4)
    tok = AutoTokenizer.from_pretrained(tiny_base.path)
    pairs = [("The sky is", " blue"), ("Two plus two makes a number that is", " four, of course"), ("Q: cats? A:", " yes")]
    enc = lora_train.encode_pairs(tok, pairs, max_len=64)
    batch = lora_train.collate(enc, tok.pad_token_id)
    with torch.no_grad():
        want = float(lora_train.answer_loss(peft, batch))  # mean NLL over all answer tokens of the batch
    cfg, params = jax_lm.load(tiny_base.path)
    lora = jax_lm.stack_lora(cfg, {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in _factors(peft).items()})
    ids = jnp.asarray(batch.input_ids.numpy())[:, None]
    lengths = jnp.asarray(batch.attention_mask.numpy().sum(1))[:, None]
    n_ans = jnp.asarray([n for _, n in enc])[:, None]
    lp = jax_lm.answer_logprob(cfg, params, ids, lengths, n_ans, lora, 2.0, max_answer=int(n_ans.max()))
    assert float(-lp.sum() / n_ans.sum()) == pytest.approx(want, rel=1e-5)
    # max_answer only bounds the work: the full-width default gives the same numbers
    full = jax_lm.answer_logprob(cfg, params, ids, lengths, n_ans, lora, 2.0)
    np.testing.assert_allclose(np.asarray(full), np.asarray(lp), rtol=1e-6)
    # and the gradient reaches the LoRA factors
    g = jax.grad(lambda lo: jax_lm.answer_logprob(cfg, params, ids, lengths, n_ans, lo, 2.0, remat=True).sum())(lora)
    assert all(float(jnp.abs(gb).max()) > 0 for _, gb in g.values())


def test_refuses_unsupported_settings_by_name(tmp_path, tiny_base):
    d = json.loads((Path(tiny_base.path) / "config.json").read_text())
    for change, needle in (({"model_type": "gpt2"}, "model_type 'gpt2'"),
                           ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
                           ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
                           ({"model_type": "qwen2", "use_sliding_window": True}, "sliding-window"),
                           ({"model_type": "mistral", "sliding_window": 4096}, "sliding-window"),
                           ({"mlp_bias": True}, "mlp_bias")):
        with pytest.raises(jax_lm.UnsupportedModelError, match=needle):
            jax_lm.LMConfig.from_hf({**d, **change})
    with pytest.raises(InputError, match="no config.json"):
        jax_lm.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(d))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InputError, match="no \\*.safetensors"):
        jax_lm.load(tmp_path)
    cfg, _ = jax_lm.load(tiny_base.path)
    with pytest.raises(jax_lm.UnsupportedModelError, match="lm_head"):
        jax_lm.stack_lora(cfg, {"lm_head": (np.zeros((2, 4)), np.zeros((4, 2)))})


def test_bfloat16_weights_and_compute_track_float32(tiny_base):
    """function_loss.dtype='bfloat16': weights rounded once to bfloat16 (as torch rounds them), activations
    in bfloat16, float32 logits; the loss and its gradient to (float32) LoRA factors follow float32's."""
    peft = _peft_model(tiny_base.path, seed=4)
    cfg, p32 = jax_lm.load(tiny_base.path)
    cfg16, p16 = jax_lm.load(tiny_base.path, jnp.bfloat16)
    assert cfg16 == cfg and {a.dtype for a in jax.tree.leaves(p16)} == {jnp.dtype(jnp.bfloat16)}
    for name in ("q_proj", "down_proj"):
        want = torch.tensor(np.asarray(p32["layers"][name])).bfloat16().float().numpy()
        np.testing.assert_array_equal(np.asarray(p16["layers"][name]).astype(np.float32), want)
    lora = jax_lm.stack_lora(cfg, {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in _factors(peft).items()})
    ids_np, len_np = _batch(cfg.vocab_size)
    ids, lengths = (jnp.asarray(x)[:, None] for x in (ids_np, len_np))
    l32, l16 = (np.asarray(jax_lm.logits(cfg, p, ids, lengths, lora, 2.0)) for p in (p32, p16))
    assert l16.dtype == np.float32
    # As close to float32 as torch + peft in bfloat16 are (its error: 0.009-0.034 on these rows; ours 0.007-0.041).
    t32 = _torch_logits(peft, ids_np, len_np)
    t16 = _torch_logits(peft.to(torch.bfloat16), ids_np, len_np)
    for i, n in enumerate(len_np):
        err, torch_err = (np.abs(x[:n] - t32[i, :n]).max() for x in (l16[i, 0], t16[i]))
        assert 0 < err < 2 * torch_err
    # The answer NLL's gradient to the LoRA factors: bfloat16 changes it as much as it changes torch's (this
    # random tiny model's saturated attention makes q/k gradients sensitive: cosine 0.92 with float32 here, 0.93 in torch).
    n_ans = [4, 3, 2]

    def nll(params):
        return lambda lo: -jax_lm.answer_logprob(cfg, params, ids, lengths, jnp.asarray(n_ans)[:, None], lo, 2.0,
                                                 remat=True).sum()

    def torch_grads(model) -> np.ndarray:
        att = torch.tensor((np.arange(ids_np.shape[1])[None] < len_np[:, None]).astype(np.int64))
        lp = torch.log_softmax(model(input_ids=torch.tensor(ids_np), attention_mask=att).logits.float(), -1)
        loss = -sum(lp[i, n - a - 1 + j, int(ids_np[i, n - a + j])] for i, (n, a) in enumerate(zip(len_np, n_ans))
                    for j in range(a))
        model.zero_grad()
        loss.backward()
        named = dict(model.named_parameters())
        return float(loss), np.concatenate([  # jax_lm's order: linear, then A/B, then layer
            named[f"base_model.model.model.layers.{i}.{'self_attn' if m in jax_lm.ATTN else 'mlp'}.{m}.lora_{f}"
                  f".default.weight"].grad.float().numpy().ravel()
            for m in sorted(lora) for f in "AB" for i in range(cfg.num_layers)])

    def cos(a, b) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    (v32, g32), (v16, g16) = (jax.value_and_grad(nll(p))(lora) for p in (p32, p16))
    flat32, flat16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g32, g16))
    assert flat16.dtype == np.float32 and np.isfinite(flat16).all()
    t32, tg32 = torch_grads(_peft_model(tiny_base.path, seed=4))
    t16, tg16 = torch_grads(_peft_model(tiny_base.path, seed=4).to(torch.bfloat16))
    assert float(v32) == pytest.approx(t32, rel=1e-5) and cos(flat32, tg32) > 1 - 1e-6  # the same function
    assert abs(float(v16) - float(v32)) < 2 * abs(t16 - t32) + 1e-3 * abs(t32)
    assert cos(flat16, flat32) > cos(tg16, tg32) - 0.02


@pytest.mark.parametrize("remat", [False, True])
def test_step_flops_match_xla_on_one_layer(remat):
    """jax_lm.step_flops (the dry run's and the device bench's count) against XLA:CPU's cost analysis of the same
    gradient program. One layer: XLA counts a scan body once, so only a one-layer model compares like for like."""
    cfg = jax_lm.LMConfig(vocab_size=512, hidden_size=128, intermediate_size=512, num_layers=1, num_heads=4,
                          num_kv_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=1e4, tie_word_embeddings=True,
                          attention_bias=False)
    rows, ex, s, r, amax = 4, 2, 32, 8, 8
    dims = {"q_proj": (128, 128), "k_proj": (128, 64), "v_proj": (128, 64), "o_proj": (128, 128),
            "gate_proj": (128, 512), "up_proj": (128, 512), "down_proj": (512, 128)}
    lora = {k: (jax.ShapeDtypeStruct((1, rows, r, i), jnp.float32), jax.ShapeDtypeStruct((1, rows, o, r), jnp.float32))
            for k, (i, o) in dims.items()}
    ints = jax.ShapeDtypeStruct((rows, ex), jnp.int32)

    def loss(lora, params, ids, lengths, answer_len):
        return jnp.sum(jax_lm.answer_logprob(cfg, params, ids, lengths, answer_len, lora, 2.0, amax, remat))

    cost = jax.jit(jax.grad(loss)).lower(lora, jax_lm.abstract_params(cfg), jax.ShapeDtypeStruct((rows, ex, s), jnp.int32),
                                         ints, ints).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ratio = jax_lm.step_flops(cfg, rows * ex, s, amax, r, remat) / cost["flops"]
    assert 0.97 < ratio < 1.07, ratio  # the rest: norms, softmax, rope, activations (not matmuls)
