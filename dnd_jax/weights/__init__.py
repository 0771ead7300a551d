"""LoRA state dict <-> grid of weight tokens <-> peft adapter folder, and token normalization.

- ``layout``: the token layout, derived from tensor shapes alone; ``tokenize`` / ``detokenize``.
- ``lora``: the LoRA math (scaling alpha/r, dW = s B A, factors, Gram products, exact merges).
- ``normalization``: per-token (default) or per-element standardization fitted on the zoo.
- ``centering``: optional similarity centering (the generator predicts a residual from the
  prompt-weighted mean of the other training tasks; ``config.center``).
- ``peft_io``: atomic peft adapter folders (safetensors + the installed peft's adapter_config.json).
- ``python -m dnd_jax.weights inspect|roundtrip``: the layout of any adapter, and an exact round trip.
"""
from dnd_jax.weights.layout import (
    LayoutEntry,
    LayoutMismatchError,
    WeightLayout,
    build_layout,
    detokenize,
    natural_sorted,
    token_owners,
    tokenize,
    tokenize_batch,
    validate,
)
from dnd_jax.weights.normalization import Normalizer
from dnd_jax.weights.peft_io import AdapterFormatError, lora_config_from_adapter, read_adapter, write_adapter

__all__ = [
    "AdapterFormatError",
    "LayoutEntry",
    "LayoutMismatchError",
    "Normalizer",
    "WeightLayout",
    "build_layout",
    "detokenize",
    "lora_config_from_adapter",
    "natural_sorted",
    "read_adapter",
    "token_owners",
    "tokenize",
    "tokenize_batch",
    "validate",
    "write_adapter",
]
