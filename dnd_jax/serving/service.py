"""The warm service behind the HTTP routes: a loaded generator, the adapter store, the torch base model.

:meth:`AdapterService.generate_batch` is what the batcher calls: requests grouped by seed, each
group decoded in one forward padded to a power-of-two bucket (one compiled decoder per bucket, all
compiled at startup by :meth:`warm_up`), every adapter written durably before it is returned.
"""
from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from dnd_jax.serving import store as store_lib
from dnd_jax.serving.metrics import Metrics
from dnd_jax.serving.requests import AdapterRequest, ApiError


def bucket(n: int, max_batch: int) -> int:
    """The padded decoder batch for ``n`` requests: the next power of two, at most ``max_batch``."""
    b = 1
    while b < n:
        b *= 2
    return min(b, max(max_batch, n))


def generator_fingerprint(gen) -> str:
    """Identity of a loaded generator: its metadata, step and (when written) the step's checksums."""
    h = hashlib.sha256(json.dumps(gen.meta, sort_keys=True, default=str).encode())
    h.update(str(gen.step).encode())
    sums = Path(gen.workdir) / "generator" / str(gen.step) / "dnd_checksums.json"
    if sums.is_file():
        h.update(sums.read_bytes())
    return h.hexdigest()[:16]


class AdapterService:
    def __init__(self, gen, store: store_lib.AdapterStore, metrics: Metrics, *, max_batch: int,
                 base_model_path: str | None = None, max_loaded_adapters: int = 8):
        self.gen, self.store, self.metrics, self.max_batch = gen, store, metrics, max_batch
        self.fingerprint = generator_fingerprint(gen)
        self.base_model_path = base_model_path or gen.meta.get("base_model", {}).get("path")
        self._torch_lock = threading.Lock()
        self._peft = None
        self._tok = None
        self._base = None
        self._loaded: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.max_loaded_adapters = max_loaded_adapters

    # --- adapters -------------------------------------------------------------------------------

    def adapter_id(self, req: AdapterRequest) -> str:
        return store_lib.adapter_id(self.fingerprint, req.prompts, req.seed)

    def warm_up(self) -> float:
        """Load the encoder and compile the decoder for every batch bucket; returns seconds."""
        import tempfile
        import warnings

        t0 = time.perf_counter()
        sizes = sorted({bucket(n, self.max_batch) for n in range(1, self.max_batch + 1)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in sizes:
                adapter = self.gen.generate_many([["warm up"]], pad_to=b)[0]
        with tempfile.TemporaryDirectory() as tmp:  # the write path too (its first call imports peft)
            adapter.save(Path(tmp) / "warm")
        return time.perf_counter() - t0

    def generate_batch(self, items: Sequence[tuple[str, AdapterRequest]]) -> list[dict]:
        """(id, request) pairs -> stored manifests, in order; runs in the batcher's worker thread."""
        import warnings

        out: dict[str, dict] = {}
        todo: dict[int, dict[str, AdapterRequest]] = collections.defaultdict(dict)
        for aid, req in items:
            if aid in out or aid in todo[req.seed]:
                continue
            if self.store.exists(aid):
                out[aid] = self.store.manifest(aid)
                self.metrics.count("adapters_already_stored")
            else:
                todo[req.seed][aid] = req
        for seed, group in todo.items():
            ids = list(group)
            for start in range(0, len(ids), self.max_batch):
                chunk = ids[start:start + self.max_batch]
                t0 = time.perf_counter()
                timings: dict = {}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # truncation/repetition warnings are per-request noise here
                    adapters = self.gen.generate_many([group[a].prompts for a in chunk], seed=seed, timings=timings,
                                                      pad_to=bucket(len(chunk), self.max_batch))
                t_write = time.perf_counter()
                for aid, adapter in zip(chunk, adapters, strict=True):
                    info = {"num_prompts_given": len(group[aid].prompts), "seed": seed,
                            "generator_step": int(self.gen.step), "generator": self.fingerprint,
                            "prompts_sha256": hashlib.sha256(json.dumps(group[aid].prompts).encode()).hexdigest()}
                    out[aid] = self.store.put(aid, lambda folder, a=adapter: a.save(folder), info)
                self.metrics.stages({"encode_s": timings.get("encode_s", 0.0), "decode_s": timings.get("decode_s", 0.0),
                                     "write_s": time.perf_counter() - t_write})
                self.metrics.batch(len(chunk), time.perf_counter() - t0)
                self.metrics.count("adapters_generated", len(chunk))
        return [out[aid] for aid, _ in items]

    # --- completions (torch) --------------------------------------------------------------------

    def _ensure_base(self):
        if self._base is None:
            from dnd_jax import base_model

            path = self.base_model_path
            if not path or not Path(path).is_dir():
                raise ApiError(503, f"completions need the base model as a local folder; {path!r} is not one "
                                    "(start the server with --base_model HF_DIR)")
            ref = base_model.BaseModelRef(name=str(path), path=str(path), sha="")
            self._base, self._tok = base_model.load(ref)
        return self._base, self._tok

    def _model_for(self, aid: str | None):
        import warnings

        from peft import PeftModel

        base, _ = self._ensure_base()
        if aid is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(base, str(self.store.path(aid)), adapter_name=aid)
                self._loaded[aid] = None
            elif aid not in self._loaded:
                self._peft.load_adapter(str(self.store.path(aid)), adapter_name=aid)
                self._loaded[aid] = None
        self._loaded.move_to_end(aid)
        self._peft.set_adapter(aid)
        while len(self._loaded) > self.max_loaded_adapters:
            old, _ = self._loaded.popitem(last=False)
            self._peft.delete_adapter(old)
        self._peft.eval()
        return self._peft

    def complete(self, aid: str | None, prompt: str, max_new_tokens: int) -> str:
        """Greedy continuation of ``prompt`` by the base model with adapter ``aid`` (None: the base alone)."""
        import contextlib

        import torch

        if aid is not None:
            if not self.store.exists(aid):
                raise ApiError(404, f"unknown adapter id '{aid}'")
            self.store.verified_files(aid)
        with self._torch_lock:
            model = self._model_for(aid)
            base, tok = self._ensure_base()
            ctx = contextlib.nullcontext()
            if model is None:
                model = self._peft if self._peft is not None else base
                if self._peft is not None:
                    ctx = self._peft.disable_adapter()
            enc = tok([prompt], return_tensors="pt")
            with ctx, torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
