"""Per-user caches that make a new process fast: XLA executables and small derived JSON.

``cache_dir()`` is ``$DND_JAX_RUNTIME_CACHE`` when set (``off`` disables both caches), else
``runtime/`` under the assets cache (``$DND_JAX_CACHE``, default ``~/.cache/dnd_jax``). Everything
here is derived and safe to delete: a missing, unreadable or mismatching entry is recomputed, never
trusted.

- :func:`enable_compilation_cache`: JAX's persistent compilation cache under ``cache_dir()/xla``,
  so a new process loads the encoder's and decoder's compiled programs instead of compiling them.
- :func:`json_memo`: a JSON value computed once per key (e.g. the installed peft's
  ``LoraConfig.to_dict()`` for given arguments, which otherwise costs a 10 s ``import peft``).
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
