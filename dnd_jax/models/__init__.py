"""Generator models, looked up by ``config.model_name`` (a module in this package).

Each model module exposes ``build(model_config, in_shape, out_shape) -> flax.linen.Module``: the
module maps conditions ``(B, *in_shape)`` to weight tokens ``(B, *out_shape)``. ``out_shape`` is
derived from the weight layout, never typed in a config. A module may also expose
``pin_activations(model, param_shardings) -> model`` (see :func:`for_shardings`).
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


def for_shardings(model: nn.Module, param_shardings) -> nn.Module:
    """``model`` adjusted to run with parameters placed as ``param_shardings`` (numerically the same).

    Calls the model module's ``pin_activations`` when it has one (the hyperconv decoder pins its
    path outputs to work around an XLA SPMD bug); other models are returned unchanged.
    """
    module = importlib.import_module(type(model).__module__)
    pin = getattr(module, "pin_activations", None)
    return model if pin is None else pin(model, param_shardings)
