"""The frozen base LLM in JAX (Llama / Qwen2 / Mistral families), with per-example LoRA adapters.

The zoo trains and evaluation scores in torch; this module exists so that a *generated* adapter can be
judged by what it does to the model inside a jitted JAX program: the function-space loss of
``config.function_loss`` (the answer log-likelihood of the base model with the generated LoRA applied)
back-propagates through it into the generator. Pure functions over an explicit pytree:

* :func:`load` reads an HF folder (``config.json`` + ``*.safetensors``; nothing is unpickled) into
  :class:`LMConfig` and a parameter pytree with the decoder layers stacked on a leading axis (one
  :func:`jax.lax.scan` over layers: compile time does not grow with depth);
* :func:`stack_lora` turns ``{module path: (A (..., r, in), B (..., out, r))}`` into the same stacked
  form; a leading batch axis of the factors gives every example row its own adapter;
* :func:`hidden_states` / :func:`logits` / :func:`answer_logprob` run the model:
  ``y = x W^T + s (x A^T) B^T`` per adapted linear, which is exactly peft's ``W' = W + s B A``
  (``tests/test_jax_lm.py`` checks logits against transformers + peft).

Supported: RMSNorm, rotary embeddings of rope type ``default``, grouped-query attention, SwiGLU MLP,
optional q/k/v biases (Qwen2), tied or separate output embeddings. Anything else (rope scaling,
sliding windows, other activations) is refused by name at load time rather than computed wrongly.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax.errors import InputError

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEARS = ATTN + MLP
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")


class UnsupportedModelError(InputError):
    """The checkpoint's architecture or one of its settings is not implemented here."""


@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    attention_bias: bool

    @classmethod
    def from_hf(cls, d: Mapping) -> LMConfig:
        """From an HF ``config.json`` dict; refuses settings this forward does not implement."""
        model_type = d.get("model_type")
        if model_type not in ("llama", "qwen2", "mistral"):
            raise UnsupportedModelError(f"model_type '{model_type}' is not supported (llama, qwen2, mistral)")
        if d.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act '{d.get('hidden_act')}' is not supported (silu)")
        rope = {}
        for key in ("rope_parameters", "rope_scaling"):  # transformers 5 / 4 spellings
            part = d.get(key) or {}
            rope_type = part.get("rope_type", part.get("type", "default"))
            if rope_type != "default":
                raise UnsupportedModelError(f"rope type '{rope_type}' is not supported (default)")
            rope = {**part, **rope}
        if d.get("use_sliding_window") or (model_type == "mistral" and d.get("sliding_window")):
            raise UnsupportedModelError("sliding-window attention is not supported")
        if d.get("mlp_bias"):
            raise UnsupportedModelError("mlp_bias is not supported")
        heads = int(d["num_attention_heads"])
        return cls(
            vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or int(d["hidden_size"]) // heads),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", model_type == "qwen2")),
        )


def _read_safetensors(folder: Path, dtype=np.float32) -> dict[str, np.ndarray]:
    """Every tensor of ``folder/*.safetensors`` as host numpy in ``dtype`` (bfloat16/float16 checkpoints
    included; numpy's bfloat16 is ml_dtypes')."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"{folder} has no *.safetensors weights (pickled weights are never loaded)")
    out: dict[str, np.ndarray] = {}
    # The flax reader yields JAX arrays (numpy has no bfloat16 reader): keep them on the host's CPU device.
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        for f in files:
            with safe_open(str(f), framework="flax") as st:
                for k in st.keys():
                    out[k] = np.asarray(st.get_tensor(k).astype(dtype))
    return out


def read_config(path: str | Path) -> LMConfig:
    """The :class:`LMConfig` of the HF folder ``path`` (its ``config.json``; no weights are read)."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{path} has no config.json")
    return LMConfig.from_hf(json.loads(cfg_file.read_text()))


def load_host(path: str | Path, dtype=jnp.float32) -> tuple[LMConfig, dict]:
    """``(config, params)`` of the HF causal LM in ``path`` (safetensors only) as host numpy arrays in
    ``dtype``: to be placed shard by shard (:func:`dnd_jax.function_loss.put_base`)."""
    folder = Path(path)
    cfg = read_config(folder)
    raw = _read_safetensors(folder, dtype)
    need = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        need.append("lm_head.weight")
    missing = [k for k in need if k not in raw]
    if missing:
        raise InputError(f"{folder} lacks {missing[0]} ({len(missing)} expected tensors missing)")

    def stacked(name: str) -> np.ndarray:
        keys = [f"model.layers.{i}.{name}" for i in range(cfg.num_layers)]
        for key in keys:
            if key not in raw:
                raise InputError(f"{folder} lacks {key}")
        return np.stack([raw.pop(key) for key in keys])  # pop: one copy of the weights at a time

    layers = {
        "input_norm": stacked("input_layernorm.weight"),
        "post_norm": stacked("post_attention_layernorm.weight"),
    }
    for m in ATTN:
        layers[m] = stacked(f"self_attn.{m}.weight")
    for m in MLP:
        layers[m] = stacked(f"mlp.{m}.weight")
    if cfg.attention_bias:
        for m in ("q_proj", "k_proj", "v_proj"):
            layers[f"{m}_bias"] = stacked(f"self_attn.{m}.bias")
    params = {"embed": raw["model.embed_tokens.weight"], "norm": raw["model.norm.weight"], "layers": layers}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = raw["lm_head.weight"]
    return cfg, params


def load(path: str | Path, dtype=jnp.float32) -> tuple[LMConfig, dict]:
    """``(config, params)`` of the HF causal LM in ``path`` (safetensors only), on the default device."""
    cfg, params = load_host(path, dtype)
    return cfg, jax.tree.map(jnp.asarray, params)


def abstract_params(cfg: LMConfig, dtype=jnp.float32) -> dict:
    """The parameter pytree of :func:`load` as ``jax.ShapeDtypeStruct`` (dry runs: nothing is allocated)."""
    L, d, f = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    layers = {"input_norm": sds(L, d), "post_norm": sds(L, d), "q_proj": sds(L, q, d), "k_proj": sds(L, kv, d),
              "v_proj": sds(L, kv, d), "o_proj": sds(L, d, q), "gate_proj": sds(L, f, d), "up_proj": sds(L, f, d),
              "down_proj": sds(L, d, f)}
    if cfg.attention_bias:
        layers.update(q_proj_bias=sds(L, q), k_proj_bias=sds(L, kv), v_proj_bias=sds(L, kv))
    out = {"embed": sds(cfg.vocab_size, d), "norm": sds(d), "layers": layers}
    if not cfg.tie_word_embeddings:
        out["lm_head"] = sds(cfg.vocab_size, d)
    return out


def stack_lora(cfg: LMConfig, factors: Mapping[str, tuple]) -> dict:
    """``{module path: (A (..., r, in), B (..., out, r))}`` -> ``{linear: (A (L, ..., r, in), B (L, ..., out, r))}``.

    Module paths are peft's (``model.layers.3.self_attn.q_proj``, with or without a ``base_model.model.``
    prefix). A linear adapted on some layers only gets zero factors on the others (an exact no-op).
    Works on numpy or JAX arrays (differentiable: the generator's output flows through it).
    """
    by_linear: dict[str, dict[int, tuple]] = {}
    for path, (a, b) in factors.items():
        m = _LAYER.match(path.removeprefix("base_model.model."))
        if m is None or m.group(3) not in LINEARS:
            raise UnsupportedModelError(f"LoRA module '{path}' is not a decoder-layer linear of a Llama-family model")
        i = int(m.group(1))
        if i >= cfg.num_layers:
            raise InputError(f"LoRA module '{path}': the model has {cfg.num_layers} layers")
        by_linear.setdefault(m.group(3), {})[i] = (a, b)
    out = {}
    for name, per_layer in by_linear.items():
        a0, b0 = next(iter(per_layer.values()))
        za, zb = jnp.zeros(jnp.shape(a0), jnp.result_type(a0)), jnp.zeros(jnp.shape(b0), jnp.result_type(b0))
        a = jnp.stack([per_layer.get(i, (za, zb))[0] for i in range(cfg.num_layers)])
        b = jnp.stack([per_layer.get(i, (za, zb))[1] for i in range(cfg.num_layers)])
        out[name] = (a, b)
    return out


def _rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)
    return (w * y.astype(x.dtype)).astype(x.dtype)


def _rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """HF's rotate-half rotary embedding; ``x`` (..., S, H, D), positions (S,)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    ang = positions.astype(jnp.float32)[:, None] * inv[None, :]  # (S, D/2)
    emb = jnp.concatenate([ang, ang], axis=-1)[:, None, :]  # (S, 1, D)
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def _linear(x: jax.Array, w: jax.Array, lora: tuple | None, scale: float, bias: jax.Array | None = None) -> jax.Array:
    """``x W^T (+ b) + s (x A^T) B^T``; x (B, N, S, in); factors (B, r, in) / (B, out, r) or unbatched."""
    y = x @ w.T
    if bias is not None:
        y = y + bias
    if lora is not None:
        a, b = (f.astype(x.dtype) for f in lora)  # computed in the model's dtype, as peft does
        if a.ndim == 2:
            y = y + scale * ((x @ a.T) @ b.T)
        else:
            y = y + scale * jnp.einsum("bnsr,bor->bnso", jnp.einsum("bnsi,bri->bnsr", x, a), b)
    return y


def hidden_states(cfg: LMConfig, params: Mapping, ids: jax.Array, lengths: jax.Array,
                  lora: Mapping | None = None, scale: float = 1.0, remat: bool = False) -> jax.Array:
    """Final-norm hidden states (B, N, S, d) of right-padded ids (B, N, S) with ``lengths`` (B, N).

    Row ``b`` uses adapter ``b`` of ``lora`` (from :func:`stack_lora`, factors with a batch axis of size B),
    or one shared adapter (factors without a batch axis), or none. Padding positions get finite values
    that nothing reads. ``remat`` recomputes each layer in the backward pass (memory for compute).
    """
    bsz, n, s = ids.shape
    h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    x = params["embed"][ids]  # (B, N, S, d)
    positions = jnp.arange(s)
    valid = jnp.arange(s)[None, None, :] < lengths[..., None]  # (B, N, S)
    causal = jnp.tril(jnp.ones((s, s), bool))
    mask = causal[None, None, None] & valid[:, :, None, None, :]  # (B, N, 1, S, S)
    lora = dict(lora or {})

    def layer(x, xs):
        w, lw = xs
        get = lambda name: lw.get(name)  # noqa: E731
        hn = _rms_norm(x, w["input_norm"], cfg.rms_norm_eps)
        q = _linear(hn, w["q_proj"], get("q_proj"), scale, w.get("q_proj_bias"))
        k = _linear(hn, w["k_proj"], get("k_proj"), scale, w.get("k_proj_bias"))
        v = _linear(hn, w["v_proj"], get("v_proj"), scale, w.get("v_proj_bias"))
        q = _rope(q.reshape(bsz, n, s, h, hd), positions, cfg.rope_theta)
        k = _rope(k.reshape(bsz, n, s, kvh, hd), positions, cfg.rope_theta)
        v = v.reshape(bsz, n, s, kvh, hd)
        q = q.reshape(bsz, n, s, kvh, h // kvh, hd)
        att = jnp.einsum("bnqkgd,bnskd->bnkgqs", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
        att = jnp.where(mask[:, :, :, None], att, jnp.finfo(jnp.float32).min)
        att = jax.nn.softmax(att, axis=-1).astype(x.dtype)
        o = jnp.einsum("bnkgqs,bnskd->bnqkgd", att, v).reshape(bsz, n, s, h * hd)
        x = x + _linear(o, w["o_proj"], get("o_proj"), scale)
        hn = _rms_norm(x, w["post_norm"], cfg.rms_norm_eps)
        gate = _linear(hn, w["gate_proj"], get("gate_proj"), scale)
        up = _linear(hn, w["up_proj"], get("up_proj"), scale)
        x = x + _linear(jax.nn.silu(gate) * up, w["down_proj"], get("down_proj"), scale)
        return x, None

    body = jax.checkpoint(layer) if remat else layer
    x, _ = jax.lax.scan(body, x, (params["layers"], lora))
    return _rms_norm(x, params["norm"], cfg.rms_norm_eps)


def _unembed(cfg: LMConfig, params: Mapping, hidden: jax.Array) -> jax.Array:
    w = params["embed"] if cfg.tie_word_embeddings else params["lm_head"]
    return (hidden @ w.T).astype(jnp.float32)


def logits(cfg: LMConfig, params: Mapping, ids: jax.Array, lengths: jax.Array, lora: Mapping | None = None,
           scale: float = 1.0) -> jax.Array:
    """Next-token logits (B, N, S, V) in float32."""
    return _unembed(cfg, params, hidden_states(cfg, params, ids, lengths, lora, scale))


def step_flops(cfg: LMConfig, sequences: int, seq_len: int, max_answer: int, lora_rank: int,
               remat: bool = True) -> float:
    """Matmul FLOPs of one forward + backward of :func:`answer_logprob` to per-row LoRA factors on all 7 linears.

    The frozen linears run forward, backward to their inputs (no weight gradients) and, with ``remat``, once
    more in the recomputation, which stops before ``down_proj`` (its output feeds no backward); the LoRA
    products and attention also make their factors' / scores' gradients (one pass more); the unembedding
    at ``max_answer`` positions runs forward and backward to the hidden state. Attention counts the full ``seq_len`` square (the causal half is masked, not skipped). An estimate
    for what XLA's cost analysis cannot give: it counts a ``lax.scan`` body once, not once per layer, and on a
    GPU it leaves out the cuBLAS calls that large dots become.
    """
    d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    linear = 2 * (d * q + 2 * d * kv + q * d + 3 * d * f)
    lora = 2 * lora_rank * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))
    attention = 4 * seq_len * q
    down, lora_down = 2 * f * d, 2 * lora_rank * (f + d)
    per_token = 2 * linear + 3 * (lora + attention)  # forward + backward
    if remat:
        per_token += linear - down + lora - lora_down + attention
    per_token *= cfg.num_layers
    unembed = 2 * 2 * sequences * max_answer * d * cfg.vocab_size
    return float(sequences * seq_len * per_token + unembed)


def answer_logprob(cfg: LMConfig, params: Mapping, ids: jax.Array, lengths: jax.Array, answer_len: jax.Array,
                   lora: Mapping | None = None, scale: float = 1.0, max_answer: int | None = None,
                   remat: bool = False) -> jax.Array:
    """Sum of log p(answer tokens | context) per sequence, (B, N).

    The answer is the last ``answer_len`` tokens before ``lengths`` (the layout of
    :func:`dnd_jax.lora_train.encode_pairs`; an answer filling the whole sequence loses its first token,
    which nothing predicts, as in the torch loss). Only the ``max_answer`` positions that predict answer
    tokens are unembedded (the vocabulary projection is a fifth of SmolLM2's FLOPs per token);
    ``max_answer`` must be at least the longest answer (default: the whole sequence).
    """
    s = ids.shape[-1]
    amax = s - 1 if max_answer is None else int(max_answer)
    answer_len = jnp.minimum(answer_len, lengths - 1)  # a sequence's first token has no prediction
    hid = hidden_states(cfg, params, ids, lengths, lora, scale, remat=remat)
    j = jnp.arange(amax)
    pred_pos = (lengths - answer_len - 1)[..., None] + j  # positions whose logits predict answer tokens
    use = j < answer_len[..., None]
    pred_pos = jnp.clip(jnp.where(use, pred_pos, 0), 0, s - 2)
    h_at = jnp.take_along_axis(hid, pred_pos[..., None], axis=-2)  # (B, N, A, d)
    lp = jax.nn.log_softmax(_unembed(cfg, params, h_at), axis=-1)
    tgt = jnp.take_along_axis(ids, pred_pos + 1, axis=-1)
    tok = jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(use, tok, 0.0), axis=-1)
