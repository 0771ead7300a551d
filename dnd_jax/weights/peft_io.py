"""Reading and writing peft LoRA adapter folders (safetensors only, never pickle).

A written folder is what ``PeftModel.save_pretrained`` would write: ``adapter_model.safetensors``
(keys without the adapter name, e.g. ``...q_proj.lora_A.weight``; metadata ``format=pt``) and
``adapter_config.json`` produced by the installed peft's own ``LoraConfig.to_dict()``, so every field
the installed version expects is present. Folders are written into a temp folder beside the target
and renamed into place: a reader never sees a partial adapter.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnd_jax import assets
from dnd_jax.errors import ExistsError, InputError, IntegrityError, MissingError, OutputError
from dnd_jax.weights.layout import natural_sorted, to_numpy_f32

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PICKLE_WEIGHTS = "adapter_model.bin"
# peft's in-model keys carry the adapter name (``lora_A.default.weight``); saved files must not.
_WITH_ADAPTER_NAME = re.compile(r"\.(lora_[A-Za-z_]+)\.([^.]+)\.weight$")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


class AdapterFormatError(InputError):
    """A folder or state dict is not a usable peft LoRA adapter."""


# What an adapter folder written here holds; ``overwrite`` replaces only folders made of these.
REPLACEABLE = frozenset({ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md", "dnd_generation.json",
                         "dnd_generation_timing.json"})


def check_output_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse (before any compute) an output folder that cannot or must not be written.

    A new folder needs a writable nearest existing parent; an existing one needs ``overwrite`` and
    must be an adapter folder (only the files an adapter folder holds, or empty): user files are never
    replaced.
    """
    import os

    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise ExistsError(f"{out_dir} exists and is not a folder; refusing to replace it")
        if not overwrite:
            raise ExistsError(f"adapter folder {out_dir} already exists (pass --overwrite / overwrite=True to "
                              f"replace it)")
        entries = sorted(p.name for p in out_dir.iterdir())
        foreign = [n for n in entries if n not in REPLACEABLE]
        if foreign:
            raise OutputError(f"refusing to replace {out_dir}: it is not an adapter folder (it holds "
                              f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''})")
    parent = out_dir.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out_dir}: {parent} is not a writable folder")
    return out_dir


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise ValueError(f"unsupported adapter dtype {dtype!r} (float32, bfloat16, float16)")
    return getattr(torch, name)


def check_state_dict(state_dict: Mapping[str, Any], r: int | None = None) -> None:
    """Raise :class:`AdapterFormatError` for keys peft would not load or ranks that contradict ``r``."""
    if not state_dict:
        raise AdapterFormatError("empty LoRA state dict")
    for key in natural_sorted(state_dict):
        m = _WITH_ADAPTER_NAME.search(key)
        if m:
            raise AdapterFormatError(
                f"key '{key}' contains the adapter name '{m.group(2)}'; adapter files use peft's saved names "
                f"(...{m.group(1)}.weight, as returned by peft.get_peft_model_state_dict)")
        if r is None:
            continue
        shape = tuple(state_dict[key].shape)
        if key.endswith("lora_A.weight") and (len(shape) != 2 or shape[0] != r):
            raise AdapterFormatError(f"'{key}' has shape {shape}, expected (r={r}, in_features)")
        if key.endswith("lora_B.weight") and (len(shape) != 2 or shape[1] != r):
            raise AdapterFormatError(f"'{key}' has shape {shape}, expected (out_features, r={r})")


def lora_config_dict(*, r: int, lora_alpha: float, target_modules: Sequence[str] | str, base_model_name_or_path: str,
                     lora_dropout: float = 0.0, **lora_kwargs: Any) -> dict:
    """``adapter_config.json`` contents as the installed peft writes them (sets become sorted lists).

    Memoized on disk per installed peft version and arguments (``dnd_jax.cache``): ``import peft``
    costs ~10 s, more than the rest of a generation.
    """
    import importlib.metadata

    from dnd_jax import cache

    args = dict(r=r, lora_alpha=lora_alpha, target_modules=target_modules, lora_dropout=lora_dropout,
                base_model_name_or_path=base_model_name_or_path, **lora_kwargs)
    key = {"peft": importlib.metadata.version("peft"), "args": args}
    return cache.json_memo("peft_lora_config", key, lambda: _lora_config_dict(**args))


def _lora_config_dict(*, r: int, lora_alpha: float, target_modules: Sequence[str] | str,
                      base_model_name_or_path: str, lora_dropout: float = 0.0, **lora_kwargs: Any) -> dict:
    from peft import LoraConfig

    kwargs = dict(task_type="CAUSAL_LM", bias="none", fan_in_fan_out=False)
    kwargs.update(lora_kwargs)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)  # str: a regex
    cfg = LoraConfig(r=int(r), lora_alpha=lora_alpha, target_modules=targets,
                     base_model_name_or_path=str(base_model_name_or_path), lora_dropout=float(lora_dropout), **kwargs)
    cfg.inference_mode = True  # what PeftModel.save_pretrained records
    out = cfg.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    return json.loads(json.dumps(out, default=str))  # plain JSON types (enums -> their values)


def write_adapter(out_dir: str | Path, state_dict: Mapping[str, Any], *, r: int, lora_alpha: float,
                  target_modules: Sequence[str] | str, base_model_name_or_path: str, lora_dropout: float = 0.0,
                  overwrite: bool = False, extra_files: Mapping[str, str] | None = None, dtype: Any = "float32",
                  **lora_kwargs: Any) -> Path:
    """Write a peft adapter folder atomically; returns its path.

    ``state_dict`` values may be numpy, torch or jax arrays, keyed by peft's saved names. Extra
    ``LoraConfig`` fields (``use_rslora``, ``rank_pattern``, ...) go in ``lora_kwargs``.
    ``extra_files`` maps plain file names to text (e.g. a README). An existing ``out_dir`` raises
    ``FileExistsError`` unless ``overwrite``; on any failure nothing is left behind.
    float32 is written with ``safetensors.numpy`` (the same bytes, tested; no ``import torch``).
    """
    out_dir = check_output_dir(out_dir, overwrite)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if not name or Path(name).name != name or name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) or name.startswith("."):
            raise ValueError(f"extra file name '{name}' must be a plain, non-hidden file name other than the adapter's")
    check_state_dict(state_dict, None if lora_kwargs.get("rank_pattern") else int(r))
    for k in natural_sorted(state_dict):
        if not np.isfinite(to_numpy_f32(state_dict[k])).all():
            raise IntegrityError(f"refusing to write {out_dir}: tensor '{k}' holds NaN/inf values")
    config = lora_config_dict(r=r, lora_alpha=lora_alpha, target_modules=target_modules,
                              base_model_name_or_path=base_model_name_or_path, lora_dropout=lora_dropout, **lora_kwargs)
    if _DTYPES.get(str(dtype).removeprefix("torch.")) == "float32":
        from safetensors.numpy import save_file

        tensors = {k: np.ascontiguousarray(to_numpy_f32(state_dict[k])) for k in natural_sorted(state_dict)}
    else:
        import torch
        from safetensors.torch import save_file

        tdtype = _torch_dtype(dtype)
        tensors = {k: torch.from_numpy(to_numpy_f32(state_dict[k])).to(tdtype).contiguous()
                   for k in natural_sorted(state_dict)}

    tmp = assets.atomic_dir(out_dir)
    try:
        save_file(tensors, str(tmp.path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp.path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, text in extra_files.items():
            (tmp.path / name).write_text(text, encoding="utf-8")
        return tmp.commit(replace=overwrite)
    except BaseException:
        tmp.abort()
        raise


def _adapter_files(adapter_dir: str | Path) -> tuple[Path, Path]:
    d = Path(adapter_dir)
    if not d.is_dir():
        raise MissingError(f"adapter folder {d} does not exist")
    weights, config = d / ADAPTER_WEIGHTS, d / ADAPTER_CONFIG
    if not weights.is_file():
        hint = f" (found {PICKLE_WEIGHTS}: pickled weights are not read; re-save with safetensors)" if (
            d / PICKLE_WEIGHTS).exists() else ""
        raise MissingError(f"no {ADAPTER_WEIGHTS} in {d}{hint}")
    if not config.is_file():
        raise MissingError(f"no {ADAPTER_CONFIG} in {d}")
    return weights, config


def read_adapter_config(adapter_dir: str | Path) -> dict:
    _, config = _adapter_files(adapter_dir)
    try:
        return json.loads(config.read_text())
    except ValueError as e:
        raise AdapterFormatError(f"{config} is not valid JSON: {e}") from None


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """(state dict as float32 numpy in natural key order, adapter_config.json as a dict)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, _ = _adapter_files(adapter_dir)
    config = read_adapter_config(adapter_dir)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise AdapterFormatError(f"cannot read {weights}: {e}") from None
    if not tensors:
        raise AdapterFormatError(f"{weights} holds no tensors")
    sd = {k: to_numpy_f32(tensors[k]) for k in natural_sorted(tensors)}
    check_adapter(sd, config, weights)
    return sd, config


_LORA_KEY = re.compile(r"\.lora_(A|B)\.weight$")


def check_adapter(sd: Mapping[str, np.ndarray], config: Mapping[str, Any], where: Path | str) -> None:
    """A read adapter is a LoRA (every key a lora_A/lora_B weight, in pairs), finite, with the rank its config says."""
    foreign = [k for k in sd if not _LORA_KEY.search(k)]
    if foreign:
        raise AdapterFormatError(f"{where} is not a LoRA adapter: tensor '{foreign[0]}' is not a lora_A/lora_B weight"
                                 f"{f' ({len(foreign)} such tensors)' if len(foreign) > 1 else ''}")
    unpaired = sorted({k for k in sd if k.replace("lora_A.", "lora_B.") not in sd or k.replace("lora_B.", "lora_A.")
                       not in sd})
    if unpaired:
        raise AdapterFormatError(f"{where}: '{unpaired[0]}' has no matching lora_A/lora_B partner")
    bad = [k for k, v in sd.items() if not np.isfinite(v).all()]
    if bad:
        raise IntegrityError(f"{where} holds NaN/inf values in '{bad[0]}'"
                             f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}: a corrupt adapter")
    r = config.get("r")
    if isinstance(r, int) and not config.get("rank_pattern"):
        try:
            check_state_dict(sd, r)
        except AdapterFormatError as e:
            raise AdapterFormatError(f"{where}: the tensors disagree with adapter_config.json's r={r}: {e}") from None


def lora_config_from_adapter(adapter_dir: str | Path):
    """The folder's config as a ``peft.LoraConfig`` (fields unknown to the installed peft are dropped)."""
    from peft import LoraConfig

    config = read_adapter_config(adapter_dir)
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterFormatError(f"{adapter_dir} is a {config.get('peft_type')} adapter, not LORA")
    known = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    return LoraConfig(**{k: v for k, v in config.items() if k in known and k != "peft_type"})


# Written by write_adapter from its named arguments, or by peft itself: never forwarded as lora_kwargs.
_MANAGED = {"r", "lora_alpha", "target_modules", "base_model_name_or_path", "lora_dropout", "peft_type",
            "peft_version", "inference_mode", "auto_mapping"}


def write_kwargs_from_config(config: Mapping[str, Any]) -> dict:
    """``write_adapter`` keyword arguments reproducing an adapter_config.json (for round trips)."""
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    kwargs = {k: config[k] for k in ("r", "lora_alpha", "lora_dropout") if k in config}
    kwargs["target_modules"] = config.get("target_modules") or []
    kwargs["base_model_name_or_path"] = config.get("base_model_name_or_path") or ""
    kwargs.update({k: v for k, v in config.items() if k in known and k not in _MANAGED})
    return kwargs
