"""The served adapters on disk: one folder per adapter id, written atomically and durably.

    STORE/<id>/adapter_model.safetensors, adapter_config.json, README.md, dnd_generation.json,
               dnd_serve.json          (id, prompts hash, sha256 + size of every other file)
    STORE/.staging/                    adapters being written (removed at startup: never served)

An adapter is written into ``.staging/``, every file and the folder are fsync'd, and the folder is
renamed to ``STORE/<id>`` (same file system: atomic), then the store folder is fsync'd. Only after
that is a request acknowledged, so an acknowledged adapter survives ``kill -9`` of the server (and a
power cut), and a reader never sees a half-written one: ids are 32 hex digits, staging names are not.
Files are checked against ``dnd_serve.json`` before they are first served.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

MANIFEST = "dnd_serve.json"
STAGING = ".staging"
ID_RE = re.compile(r"^[0-9a-f]{32}$")


def adapter_id(generator_fingerprint: str, prompts: list[str], seed: int) -> str:
    """An adapter is a pure function of (generator, prompts, seed): the same request, the same id."""
    h = hashlib.sha256()
    h.update(generator_fingerprint.encode())
    h.update(json.dumps({"prompts": list(prompts), "seed": int(seed)}, ensure_ascii=False).encode())
    return h.hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CorruptAdapterError(RuntimeError):
    """A stored adapter's files do not match its manifest (tampered or damaged on disk)."""


class AdapterStore:
    """Atomic, durable adapter folders keyed by id (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = self.root / STAGING
        if self.staging.exists():  # leftovers of a killed server: never acknowledged, never served
            shutil.rmtree(self.staging)
        self.staging.mkdir()
        self._verified: set[str] = set()
        self._lock = threading.Lock()

    def path(self, aid: str) -> Path:
        if not ID_RE.match(aid):
            raise KeyError(aid)
        return self.root / aid

    def exists(self, aid: str) -> bool:
        return bool(ID_RE.match(aid)) and (self.root / aid / MANIFEST).is_file()

    def manifest(self, aid: str) -> dict:
        path = self.path(aid) / MANIFEST
        if not path.is_file():
            raise KeyError(aid)
        return json.loads(path.read_text())

    def put(self, aid: str, write, info: dict) -> dict:
        """Write an adapter with ``write(folder)`` (must create ``folder``), make it durable, publish it.

        Returns its manifest. An id already stored is kept as it is (first write wins).
        """
        if self.exists(aid):
            return self.manifest(aid)
        tmp = Path(tempfile.mkdtemp(prefix=f"{aid}-", dir=self.staging))
        try:
            folder = tmp / "adapter"
            write(folder)
            files = {}
            for f in sorted(folder.iterdir()):
                files[f.name] = {"sha256": _sha256(f), "size": f.stat().st_size}
            manifest = dict(info, id=aid, files=files)
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            for f in folder.iterdir():
                _fsync_file(f)
            _fsync_dir(folder)
            with self._lock:
                if self.exists(aid):
                    return self.manifest(aid)
                os.rename(folder, self.root / aid)
                _fsync_dir(self.root)
            self._verified.add(aid)
            return manifest
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def verified_files(self, aid: str) -> dict[str, Path]:
        """``{name: path}`` of an adapter's files, checked against its manifest once per process."""
        manifest = self.manifest(aid)
        folder = self.path(aid)
        if aid not in self._verified:
            for name, info in manifest["files"].items():
                f = folder / name
                if not f.is_file() or f.stat().st_size != info["size"] or _sha256(f) != info["sha256"]:
                    raise CorruptAdapterError(f"stored adapter {aid}: {name} does not match its manifest")
            self._verified.add(aid)
        return {name: folder / name for name in manifest["files"]}

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if ID_RE.match(p.name) and (p / MANIFEST).is_file())
