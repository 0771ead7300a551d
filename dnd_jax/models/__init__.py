"""Generator models, looked up by ``config.model_name`` (a module in this package).

Each model module exposes ``build(model_config, in_shape, out_shape) -> flax.linen.Module``: the
module maps conditions ``(B, *in_shape)`` to weight tokens ``(B, *out_shape)``. ``out_shape`` is
derived from the weight layout, never typed in a config.
"""
from __future__ import annotations

import importlib

import flax.linen as nn


def build(name: str, model_config, in_shape: tuple[int, int, int], out_shape: tuple[int, int, int]) -> nn.Module:
    """The decoder named ``name`` (``dnd_jax.models.<name>``) for the given condition/token shapes."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise ValueError(f"unknown model_name '{name}': no module {__name__}.{name}") from None
    if not hasattr(module, "build"):
        raise ValueError(f"model module {module.__name__} has no build(model_config, in_shape, out_shape)")
    return module.build(model_config, tuple(in_shape), tuple(out_shape))
