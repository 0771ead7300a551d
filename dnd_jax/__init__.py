"""dnd_jax: Drag-and-Drop LLMs in JAX/Flax — prompts in, a peft LoRA adapter out.

    from dnd_jax import Generator
    adapter = Generator.load("W").generate(prompts)   # one decoder forward
    adapter.save("my_adapter")                         # PeftModel.from_pretrained(base, "my_adapter")

The public names below are imported on first use, so ``import dnd_jax`` stays cheap (no JAX, torch
or peft until a name that needs them is touched); every name lives in a library module, never in a
verb. Verbs: ``python -m dnd_jax.<verb>`` or the console scripts ``dnd-collect``, ``dnd-train``,
``dnd-generate``, ``dnd-evaluate``, ``dnd-experiment``, ``dnd-scaling``, ``dnd-geometry``,
``dnd-weights``, ``dnd-serve``, ``dnd-zoo-import``; each is a thin shell over :mod:`dnd_jax.cli`, and
every verb exits 2 on a user error (:mod:`dnd_jax.errors`).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# (No export may share a name with a submodule: ``from dnd_jax import collect`` must stay the module.)
_EXPORTS = {
    # generation
    "Generator": "dnd_jax.generator",
    "Adapter": "dnd_jax.generator",
    "read_prompts": "dnd_jax.generator",
    "load_generator": "dnd_jax.checkpoint",
    "LoadedGenerator": "dnd_jax.checkpoint",
    # training and the run plan
    "train_and_evaluate": "dnd_jax.trainer",
    "training_tasks": "dnd_jax.plan",
    "validate": "dnd_jax.plan",
    # evaluation
    "evaluate_target": "dnd_jax.evaluation",
    "evaluate_adapter": "dnd_jax.evaluation",
    # weights
    "WeightLayout": "dnd_jax.weights.layout",
    "build_layout": "dnd_jax.weights.layout",
    "tokenize": "dnd_jax.weights.layout",
    "detokenize": "dnd_jax.weights.layout",
    "Normalizer": "dnd_jax.weights.normalization",
    "read_adapter": "dnd_jax.weights.peft_io",
    "lora_scaling": "dnd_jax.weights.lora",
    "write_adapter": "dnd_jax.weights.peft_io",
    # errors
    "UserError": "dnd_jax.errors",
    "ConfigError": "dnd_jax.errors",
    "InputError": "dnd_jax.errors",
    "IntegrityError": "dnd_jax.errors",
    "LockedError": "dnd_jax.errors",
    "ResumeMismatchError": "dnd_jax.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dnd_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from dnd_jax.checkpoint import LoadedGenerator, load_generator  # noqa: F401
    from dnd_jax.errors import (  # noqa: F401
        ConfigError,
        InputError,
        IntegrityError,
        LockedError,
        ResumeMismatchError,
        UserError,
    )
    from dnd_jax.evaluation import evaluate_adapter, evaluate_target  # noqa: F401
    from dnd_jax.generator import Adapter, Generator, read_prompts  # noqa: F401
    from dnd_jax.plan import training_tasks, validate  # noqa: F401
    from dnd_jax.trainer import train_and_evaluate  # noqa: F401
    from dnd_jax.weights.layout import WeightLayout, build_layout, detokenize, tokenize  # noqa: F401
    from dnd_jax.weights.lora import lora_scaling  # noqa: F401
    from dnd_jax.weights.normalization import Normalizer  # noqa: F401
    from dnd_jax.weights.peft_io import read_adapter, write_adapter  # noqa: F401
