"""Per-user caches that make a new process fast: XLA executables and small derived JSON.

``cache_dir()`` is ``$DND_JAX_RUNTIME_CACHE`` when set (``off`` disables both caches), else
``runtime/`` under the assets cache (``$DND_JAX_CACHE``, default ``~/.cache/dnd_jax``). Everything
here is derived and safe to delete: a missing, unreadable or mismatching entry is recomputed, never
trusted.

- :func:`enable_compilation_cache`: JAX's persistent compilation cache under ``cache_dir()/xla``,
  so a new process loads the encoder's and decoder's compiled programs instead of compiling them.
- :func:`json_memo`: a JSON value computed once per key (e.g. the installed peft's
  ``LoraConfig.to_dict()`` for given arguments, which otherwise costs a 10 s ``import peft``).
- :func:`save_arrays` / :func:`load_arrays`: named numpy arrays stored once per key (safetensors with
  the key and a sha256 of the array bytes in its header), e.g. a verified generator checkpoint's
  weights, so a new process reads them without importing Orbax (``dnd_jax.checkpoint``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ENV = "DND_JAX_RUNTIME_CACHE"


def cache_dir() -> Path | None:
    """The cache folder (``None`` when disabled with ``DND_JAX_RUNTIME_CACHE=off``)."""
    env = os.environ.get(_ENV, "")
    if env.lower() in ("off", "0", "none", "false"):
        return None
    if env:
        return Path(env)
    from dnd_jax import assets

    return assets.default_cache_dir() / "runtime"


def enable_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at ``cache_dir()/xla`` (every program is cached)."""
    root = cache_dir()
    if root is None:
        return None
    import jax

    path = root / "xla"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run uncached rather than fail
    if jax.config.jax_compilation_cache_dir is None:  # never override a user's own setting
        jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(jax.config.jax_compilation_cache_dir)


def json_memo(namespace: str, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, cached on disk under ``namespace`` for the JSON-serializable ``key``.

    An entry stores its key; it is used only when that key equals this one and it parses.
    """
    key_text = json.dumps(key, sort_keys=True, default=str)
    root = cache_dir()
    if root is None:
        return compute()
    path = root / namespace / (hashlib.sha256(key_text.encode()).hexdigest()[:32] + ".json")
    try:
        entry = json.loads(path.read_text())
        if entry.get("key") == key_text:
            return entry["value"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    value = compute()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key_text, "value": value}, f)
        os.replace(tmp, path)
    except OSError:  # caching is an optimization only
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return value


def _array_entry(namespace: str, key_text: str) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    return root / namespace / (hashlib.sha256(key_text.encode()).hexdigest()[:32] + ".safetensors")


def _digest(arrays: dict) -> str:
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.asarray(a, order="C").reshape(-1).view(np.uint8).data if a.size else b"")
    return h.hexdigest()


# dtypes safetensors.numpy reads back itself; others (bfloat16, ...) travel as same-width unsigned ints
_NATIVE = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8",
           "bool"}


def save_arrays(namespace: str, key: Any, arrays: dict) -> Path | None:
    """Store ``arrays`` (name -> numpy array) under ``namespace`` for the JSON-serializable ``key``.

    Best effort: returns the entry's path, or ``None`` when caching is off or the folder is not writable.
    """
    import numpy as np
    from safetensors.numpy import save

    key_text = json.dumps(key, sort_keys=True, default=str)
    path = _array_entry(namespace, key_text)
    if path is None:
        return None
    arrays = {k: np.asarray(v, order="C") for k, v in arrays.items()}
    dtypes = {k: v.dtype.name for k, v in arrays.items()}
    stored = {k: v if v.dtype.name in _NATIVE else v.view(f"uint{8 * v.dtype.itemsize}") for k, v in arrays.items()}
    meta = {"key": key_text, "dtypes": json.dumps(dtypes, sort_keys=True), "sha256": _digest(arrays)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(save(stored, metadata=meta))
        os.replace(tmp, path)
    except OSError:  # caching is an optimization only
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        return None
    return path


def load_arrays(namespace: str, key: Any) -> dict | None:
    """The arrays :func:`save_arrays` stored for ``key``, or ``None`` (missing, unreadable, another key,
    or bytes that do not match the digest recorded with them: never trusted, the caller recomputes)."""
    import numpy as np

    key_text = json.dumps(key, sort_keys=True, default=str)
    path = _array_entry(namespace, key_text)
    if path is None or not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("key") != key_text:
                return None
            dtypes = json.loads(meta["dtypes"])
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        if set(arrays) != set(dtypes):
            return None
        if any(dtypes[k] not in _NATIVE for k in arrays):
            import ml_dtypes  # noqa: F401  (registers bfloat16 & co. with numpy)
        arrays = {k: v if dtypes[k] in _NATIVE else v.view(np.dtype(dtypes[k])) for k, v in arrays.items()}
        if any(v.dtype.name != dtypes[k] for k, v in arrays.items()) or _digest(arrays) != meta["sha256"]:
            return None
    except Exception:  # noqa: BLE001 - a damaged cache entry of any kind is recomputed, never trusted
        return None
    return arrays

