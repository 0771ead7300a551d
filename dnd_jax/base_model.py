"""The frozen base LLM (torch): resolve it from config, load it, and name it by content hash.

``config.base_model.kind``:
- ``smollm2``: the embedded SmolLM2-135M-Instruct (GGUF de-quantized once into the cache);
- ``hf_dir``: any local HF causal-LM folder (``config.base_model.path``), safetensors only;
- ``tiny_llama``: a tiny random Llama with a byte-level tokenizer, built from the config and saved
  into ``<workdir>/base_model`` (tests and quick configs; deterministic for its seed).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dnd_jax import assets


@dataclasses.dataclass(frozen=True)
class BaseModelRef:
    name: str  # human name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct
    path: str  # local HF folder with safetensors + tokenizer
    sha: str  # content hash of the weights

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def byte_tokenizer():
    """A 256-symbol byte-level BPE tokenizer with no merges, built in-process (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_tiny_llama(out_dir: Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     intermediate: int = 64, seed: int = 0) -> Path:
    """Save a tiny random Llama + byte tokenizer as an HF folder (idempotent for the same args)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    args = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate, seed=seed)
    marker = out_dir / "dnd_jax_source.json"
    if marker.is_file() and json.loads(marker.read_text()).get("tiny_llama") == args:
        return out_dir
    tok = byte_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    tmp = assets.atomic_dir(out_dir)
    try:
        model.save_pretrained(tmp.path, safe_serialization=True)
        tok.save_pretrained(tmp.path)
        assets.write_json_atomic(tmp.path / "dnd_jax_source.json", {"name": f"tiny-llama-{hidden}x{layers}", "tiny_llama": args})
        tmp.commit(replace=True)
    except BaseException:
        tmp.abort()
        raise
    return out_dir


def resolve(cfg, workdir: str | Path | None = None) -> BaseModelRef:
    """The base model named by ``cfg`` (a ConfigDict/dict with ``kind``), materialized on disk."""
    kind = cfg["kind"]
    if kind == "smollm2":
        path = assets.smollm2_hf_dir(cfg.get("cache_dir") or None)
        name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    elif kind == "tiny_llama":
        if workdir is None:
            raise ValueError("a tiny_llama base model needs a workdir to live in")
        kw = {k: cfg[k] for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "seed") if k in cfg}
        path = build_tiny_llama(Path(workdir) / "base_model", **kw)
        name = json.loads((path / "dnd_jax_source.json").read_text())["name"]
    elif kind == "hf_dir":
        path = Path(cfg["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"base_model.path {path} is not a folder")
        name = cfg.get("name") or str(path)
    else:
        raise ValueError(f"unknown base_model.kind '{kind}' (smollm2, tiny_llama, hf_dir)")
    return BaseModelRef(name=name, path=str(path), sha=assets.model_content_hash(path))


ALL_LINEAR = "all-linear"  # lora.target_modules value: every linear layer of the model but its output head


def linear_module_names(path: str | Path) -> list[str]:
    """Names of the linear layers of the causal LM at ``path`` (output head excluded), from its config alone.

    The model is built on the meta device (no weights read), so this is cheap for any size; the names
    are what peft's ``target_modules`` matches (``q_proj``, ``qkv_proj``, ``gate_up_proj``, ...).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and mod is not head}
    if not names:
        raise ValueError(f"the model at {path} has no linear layers besides its output head")
    return sorted(names)


def resolve_target_modules(spec, ref: BaseModelRef) -> list[str]:
    """``lora.target_modules`` as module names: ``"all-linear"`` (or ``("all-linear",)``) derives them from the model."""
    names = [spec] if isinstance(spec, str) else list(spec)
    if names == [ALL_LINEAR]:
        return linear_module_names(ref.path)
    if ALL_LINEAR in names:
        raise ValueError(f"lora.target_modules: '{ALL_LINEAR}' cannot be combined with module names ({names})")
    return names


def load(ref: BaseModelRef, dtype=None):
    """(model, tokenizer) in eval mode; safetensors only, no remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype or torch.float32, use_safetensors=True)
    model.eval()
    tok = AutoTokenizer.from_pretrained(ref.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
