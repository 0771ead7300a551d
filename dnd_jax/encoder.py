"""A BERT sentence encoder's token embeddings in JAX: no torch, no transformers, loaded in ~0.06 s.

``sentence-transformers`` with ``output_value="token_embeddings"`` returns the last hidden states of
its first module (a BERT). Importing it (torch + transformers) takes 10+ s on a small machine, more
than the rest of generation together. This module computes the same numbers from the folder's
``model.safetensors`` and ``tokenizer.json`` (the Rust ``tokenizers`` package: same tokenization)
in float32 JAX; ``tests/test_encoder.py`` checks them against sentence-transformers on the
embedded MiniLM. It covers BERT-type encoders (``config.json`` ``model_type == "bert"``, absolute
positions, exact GELU); :func:`supports` says whether a folder is one, and the caller falls back to
sentence-transformers otherwise.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


def _config(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def supports(folder: str | Path) -> bool:
    """Whether ``folder`` (a sentence-transformers folder) holds a BERT this module can run."""
    folder = Path(folder)
    modules = folder / "modules.json"
    try:
        first = json.loads(modules.read_text())[0]
    except (OSError, ValueError, IndexError, KeyError):
        return False
    if first.get("path", "") != "" or not str(first.get("type", "")).endswith("Transformer"):
        return False
    cfg = _config(folder)
    return bool(cfg and cfg.get("model_type") == "bert" and cfg.get("hidden_act") == "gelu"
                and cfg.get("position_embedding_type", "absolute") == "absolute"
                and (folder / WEIGHTS).is_file() and (folder / TOKENIZER).is_file())


def _layer_norm(x, g, b, eps: float):
    import jax.numpy as jnp

    mu = jnp.mean(x, -1, keepdims=True)
    xc = x - mu
    var = jnp.mean(xc * xc, -1, keepdims=True)
    return xc / jnp.sqrt(var + eps) * g + b


def _bert(w: dict, layers: dict, word, mask, num_heads: int, eps: float):
    """(B, T, C) word embeddings (rows of the embedding table), (B, T) 0/1 mask -> (B, T, C) last hidden
    states (pure; jitted by the caller). ``layers``: each layer parameter stacked over the layers,
    run with ``lax.scan`` (the same numbers as the layers written out, traced once instead of L times)."""
    import jax
    import jax.numpy as jnp

    b, t, c = word.shape
    x = word + w["embeddings.position_embeddings.weight"][:t][None]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    h, d = num_heads, c // num_heads
    neg = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)

    def layer(x, p):
        qkv = x @ p["attention.self.qkv.weight"] + p["attention.self.qkv.bias"]
        q, k, v = (a.reshape(b, t, h, d) for a in jnp.split(qkv, 3, -1))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d)) + neg
        s = jax.nn.softmax(s, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", s, v).reshape(b, t, c)
        a = ctx @ p["attention.output.dense.weight"] + p["attention.output.dense.bias"]
        x = _layer_norm(a + x, p["attention.output.LayerNorm.weight"], p["attention.output.LayerNorm.bias"], eps)
        f = jax.nn.gelu(x @ p["intermediate.dense.weight"] + p["intermediate.dense.bias"], approximate=False)
        f = f @ p["output.dense.weight"] + p["output.dense.bias"]
        return _layer_norm(f + x, p["output.LayerNorm.weight"], p["output.LayerNorm.bias"], eps), None

    return jax.lax.scan(layer, x, layers)[0]


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read-only arrays mapped from a safetensors file (nothing copied until used)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    if not all(v["dtype"] in _ST_DTYPES for v in header.values()):
        from safetensors.numpy import load_file

        return load_file(str(path))
    data = np.memmap(path, np.uint8, mode="r", offset=8 + n)
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]].view(_ST_DTYPES[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items()}


@dataclasses.dataclass
class BertEncoder:
    """Token embeddings of a BERT encoder folder; ``__call__(prompts, max_len) -> (emb, counts)``."""

    tokenizer: object  # tokenizers.Tokenizer
    word_embeddings: np.ndarray  # (vocab, C), gathered on the host: only the rows in use are read
    weights: dict[str, np.ndarray]  # embeddings' positions, token types and LayerNorm
    layers: dict[str, np.ndarray]  # each layer parameter stacked over the layers, (in, out) matrices
    num_layers: int
    num_heads: int
    eps: float
    _fn: object = dataclasses.field(default=None, repr=False)
    _device_weights: object = dataclasses.field(default=None, repr=False)

    @classmethod
    def load(cls, folder: str | Path) -> BertEncoder:
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not supports(folder):
            raise ValueError(f"{folder} is not a BERT sentence-transformers folder with model.safetensors and "
                             "tokenizer.json")
        cfg = _config(folder)
        raw = {k.removeprefix("bert."): v for k, v in _read_safetensors(folder / WEIGHTS).items()}
        num_layers = int(cfg["num_hidden_layers"])

        def stacked(name: str) -> np.ndarray:
            # x @ W.T with W (out, in): W transposed once (contiguous, for BLAS), stacked over the layers
            # (one copy out of the mapped file). The query/key/value projections become one (in, 3*out) matmul.
            parts = ([f"attention.self.{n}.{name.rsplit('.', 1)[1]}" for n in ("query", "key", "value")]
                     if name.startswith("attention.self.qkv.") else [name])
            first = [raw[f"encoder.layer.0.{p}"].T for p in parts]
            widths = [w.shape[-1] for w in first]
            out = np.empty((num_layers, *first[0].shape[:-1], sum(widths)), np.float32)
            for i in range(num_layers):
                start = 0
                for p, width in zip(parts, widths):
                    out[i, ..., start:start + width] = raw[f"encoder.layer.{i}.{p}"].T
                    start += width
            return out

        names = {k.split(".", 3)[3] for k in raw if k.startswith("encoder.layer.")}
        names = {("attention.self.qkv." + n.rsplit(".", 1)[1]) if n.startswith("attention.self.") else n for n in names}
        layers = {n: stacked(n) for n in sorted(names)}
        weights = {k: np.asarray(v, np.float32) for k, v in raw.items()
                   if k.startswith("embeddings.") and k.endswith((".weight", ".bias"))
                   and k != "embeddings.word_embeddings.weight"}
        tok = Tokenizer.from_file(str(folder / TOKENIZER))
        tok.no_padding()
        return cls(tokenizer=tok, word_embeddings=raw["embeddings.word_embeddings.weight"], weights=weights,
                   layers=layers, num_layers=num_layers, num_heads=int(cfg["num_attention_heads"]),
                   eps=float(cfg.get("layer_norm_eps", 1e-12)))

    def token_ids(self, prompts: Sequence[str], max_len: int | None) -> list[list[int]]:
        """Token ids with special tokens, cut to ``max_len`` (``None``: uncut) as sentence-transformers cuts them."""
        if max_len is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length=int(max_len), strategy="longest_first")
        return [e.ids for e in self.tokenizer.encode_batch(list(prompts))]

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(B, T) ids, (B, T) 0/1 mask -> (B, T, C) last hidden states (one compiled program per shape)."""
        import functools

        import jax

        if self._fn is None:
            self._fn = jax.jit(functools.partial(_bert, num_heads=self.num_heads, eps=self.eps))
            self._device_weights = jax.device_put((self.weights, self.layers))
        word = np.asarray(self.word_embeddings[ids], np.float32)
        return np.asarray(self._fn(*self._device_weights, word, mask))

    def __call__(self, prompts: Sequence[str], max_len: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """``(P, max_len, C)`` float32 token embeddings (zeros past each prompt) and ``(P,)`` lengths.

        Batches are padded to power-of-two rows and a multiple of 8 tokens (masked: padding changes
        no real token's value beyond float rounding), so a handful of compiled programs serve every call.
        """
        ids = self.token_ids(prompts, max_len)
        c = self.word_embeddings.shape[1]
        emb = np.zeros((len(ids), int(max_len), c), np.float32)
        counts = np.array([len(x) for x in ids], np.int32)
        order = np.argsort(-counts, kind="stable")  # similar lengths together: less padding
        rows = min(_pow2(len(ids)), _pow2(batch_size))
        for s in range(0, len(order), rows):
            idx = order[s:s + rows]
            t = min(-(-int(counts[idx].max()) // 8) * 8, int(max_len))  # tokens: a multiple of 8
            batch = np.zeros((rows, t), np.int32)
            mask = np.zeros((rows, t), np.float32)
            for j, i in enumerate(idx):
                batch[j, :counts[i]] = ids[i]
                mask[j, :counts[i]] = 1.0
            mask[len(idx):, 0] = 1.0  # rows of pure padding attend to something (no 0/0)
            out = self._forward(batch, mask)
            for j, i in enumerate(idx):
                emb[i, :counts[i]] = out[j, :counts[i]]
        return emb, counts


def _pow2(n: int, least: int = 8) -> int:
    return max(least, 1 << (max(int(n), 1) - 1).bit_length())
