"""Baselines for a held-out task T, built from the checkpoint zoo only.

- ``base``: the frozen base model, no adapter.
- ``training_loras``: the final checkpoint of every training task, each evaluated on T (the
  evaluation also reports their mean).
- ``merged``: the element-wise average of the training tasks' final LoRA updates, written *exactly*
  as one peft adapter of rank ``sum(r_k)`` (see :func:`merge_adapters`).
- ``simmerge``: the similarity-weighted merge: each training LoRA weighted by the softmax over tasks of
  the cosine between T's and its prompts' mean MiniLM embeddings (temperature 0.05); label-free, like
  DnD; kept as a merge recipe folded in at evaluation (:func:`write_merge_spec`).
- ``nearest``: the training task whose prompts look most like T's (cosine of mean MiniLM sentence
  embeddings); it sees the same unlabeled prompts a DnD generator is conditioned on.
- ``oracle``: T's own final zoo checkpoint, i.e. a LoRA trained on T's labeled train split (an upper
  reference, not a competitor); its training wall time comes from the task manifest.

None of them reads T's test labels; only ``oracle`` uses T's (train) labels at all.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dnd_jax import assets, locking, zoo
from dnd_jax.errors import InputError, IntegrityError
from dnd_jax.weights import lora
from dnd_jax.weights.lora import lora_scaling  # (the LoRA math lives in dnd_jax.weights.lora)
from dnd_jax.weights.lora import module_path as _module_path

BASELINES = ("base", "training_loras", "merged", "simmerge", "nearest", "oracle")
SIMMERGE_TEMPERATURE = 0.05  # softmax temperature over prompt-embedding cosines (see similarity_weights)
Embedder = Callable[[list[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class System:
    """One thing to evaluate: a name, an adapter folder (None = base model), and provenance."""

    name: str
    kind: str  # base | training_lora | merged | nearest | oracle | adapter
    adapter: str | None = None
    info: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- merged ------------------------------------------------------------------------------------------


def _check_plain_lora(cfg: dict, where: Path) -> None:
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise InputError(f"{where}: only plain LoRA adapters can be merged")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise InputError(f"{where}: adapters with rank_pattern/alpha_pattern are not supported")


def merge_weights(k: int, weights: Sequence[float] | None, signed: bool = False) -> np.ndarray:
    """``weights`` as an array checked to be ``k`` non-negative finite numbers summing to 1 (default 1/k).

    ``signed``: negative weights are allowed (an affine combination, still summing to 1).
    """
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or (np.any(w < 0) and not signed) or abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"merge weights must be {k} {'' if signed else 'non-negative '}finite numbers summing to 1")
    return w


def merge_adapters(ckpts: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None) -> Path:
    """Write the average of the adapters' weight updates as one exact peft LoRA adapter.

    ``weights`` (non-negative, summing to 1; default ``1/K`` each) makes it a weighted average
    ``sum_k w_k s_k B_k A_k`` (the similarity-weighted merge); ``c_k = w_k s_k / s`` below.

    With ``s_k`` each adapter's scaling and ``K`` adapters, the target update of every module is
    ``(1/K) sum_k s_k B_k A_k``. Stacking ``A = [A_1; ...; A_K]`` (rows) and
    ``B = [c_1 B_1, ..., c_K B_K]`` (columns), ``c_k = s_k / (K s)``, gives ``s B A`` exactly, for an
    adapter of rank ``R = sum r_k`` whose ``lora_alpha`` keeps its scaling ``s`` equal to the first
    adapter's (``alpha * K`` for equal plain LoRAs). Idempotent: an existing folder is kept.
    """
    ckpts = [Path(c) for c in ckpts]
    out_dir = Path(out_dir)
    if not ckpts:
        raise ValueError("merge_adapters needs at least one adapter")
    if (out_dir / zoo.ADAPTER_WEIGHTS).is_file() and (out_dir / zoo.ADAPTER_CONFIG).is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Processes sharing a workdir (experiment shards helping each other) may build the same merge at once:
    # one writes it, the others find it written.
    with locking.file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if (out_dir / zoo.ADAPTER_WEIGHTS).is_file() and (out_dir / zoo.ADAPTER_CONFIG).is_file():
            return out_dir
        return _write_merge(ckpts, out_dir, weights)


def _write_merge(ckpts: list[Path], out_dir: Path, weights: Sequence[float] | None) -> Path:
    from dnd_jax.weights import peft_io

    cfgs = [zoo.adapter_config(c) for c in ckpts]
    sds = [zoo.load_state_dict(c) for c in ckpts]
    for c, cfg in zip(ckpts, cfgs, strict=True):
        _check_plain_lora(cfg, c)
    keys = sorted(sds[0])
    for c, sd in zip(ckpts, sds, strict=True):
        if sorted(sd) != keys:
            raise ValueError(f"{c}: its LoRA modules differ from {ckpts[0]}'s")
    other = [k for k in keys if ".lora_A." not in k and ".lora_B." not in k]
    if other:
        raise ValueError(f"only lora_A/lora_B tensors can be merged; found {other[:3]}")
    k_count = len(ckpts)
    w = merge_weights(k_count, weights)
    rank = sum(int(cfg["r"]) for cfg in cfgs)
    scale = lora_scaling(cfgs[0])
    new_cfg = dict(cfgs[0])
    new_cfg["r"] = rank
    new_cfg["lora_alpha"] = lora.alpha_for_scaling(scale, rank, bool(new_cfg.get("use_rslora")))
    coef = [float(wk) * lora_scaling(cfg) / scale for wk, cfg in zip(w, cfgs, strict=True)]
    merged = lora.stack_factors(sds, coef)
    sources = json.dumps({"sources": [str(c) for c in ckpts], "coefficients": coef, "scaling": scale}, indent=2)
    peft_io.write_adapter(out_dir, merged, overwrite=True, extra_files={"merge_sources.json": sources},
                          **peft_io.write_kwargs_from_config(new_cfg))
    return out_dir


# --- merges kept as recipes (many adapters) ------------------------------------------------------------

MERGE_SPEC = "merge_spec.json"


def is_merge_spec(adapter: str | Path) -> bool:
    """True for a folder holding a merge recipe (``merge_spec.json``) instead of adapter weights."""
    adapter = Path(adapter)
    return (adapter / MERGE_SPEC).is_file() and not (adapter / zoo.ADAPTER_WEIGHTS).exists()


def write_merge_spec(ckpts: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None,
                     signed: bool = False) -> Path:
    """A weighted average of many LoRA updates, kept as its recipe and folded in when loaded.

    :func:`merge_adapters` writes the exact merge as one adapter of rank ``sum r_k``: 1.5 GB for
    152 rank-8 all-linear SmolLM2 LoRAs. Here the folder holds only ``merge_spec.json``: each source
    checkpoint with its weights' sha256, its scaling ``s_k`` and weight ``w_k``; loading folds
    ``sum_k w_k s_k B_k A_k`` into the base weights (:func:`fold_merge_spec`), which is what
    evaluating a merged peft adapter does too. Idempotent for the same recipe. ``signed`` allows
    negative weights (an affine combination, e.g. the span oracle of :mod:`dnd_jax.scaling_curve`).
    """
    ckpts = [Path(c) for c in ckpts]
    if not ckpts:
        raise ValueError("a merge needs at least one adapter")
    w = merge_weights(len(ckpts), weights, signed)
    sources = []
    for c, wk in zip(ckpts, w, strict=True):
        cfg = zoo.adapter_config(c)
        _check_plain_lora(cfg, c)
        sources.append({"path": str(c.resolve()), "sha256": _ckpt_id(c), "weight": float(wk),
                        "scaling": lora_scaling(cfg)})
    spec = {"version": 1, "kind": "weighted_lora_sum", "sources": sources}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MERGE_SPEC
    if path.is_file() and json.loads(path.read_text()) == spec:
        return out_dir
    assets.write_json_atomic(path, spec)
    return out_dir


def merge_spec_hash(adapter: str | Path) -> str:
    """Identity of a merge recipe: its sources' weights hashes, scalings and weights (not their paths)."""
    spec = json.loads((Path(adapter) / MERGE_SPEC).read_text())
    ident = [[s["sha256"], s["scaling"], s["weight"]] for s in spec["sources"]]
    return hashlib.sha256(json.dumps(["weighted_lora_sum", ident]).encode()).hexdigest()


def fold_merge_spec(model, adapter: str | Path):
    """Add the recipe's ``sum_k w_k s_k B_k A_k`` to ``model``'s linear weights in place (torch).

    Every source's weights file must still have the sha256 recorded in the recipe (a changed or
    corrupt checkpoint is an error, never silently folded); non-finite updates are refused.
    """
    import torch

    spec = json.loads((Path(adapter) / MERGE_SPEC).read_text())
    modules = dict(model.named_modules())
    deltas: dict[str, torch.Tensor] = {}
    for src in spec["sources"]:
        path = Path(src["path"])
        if assets.file_sha256(path / zoo.ADAPTER_WEIGHTS) != src["sha256"]:
            raise IntegrityError(f"{path}: weights changed since the merge recipe {adapter} was written")
        sd = zoo.load_state_dict(path)
        coef = float(src["weight"]) * float(src["scaling"])
        for key in sd:
            if ".lora_A." not in key:
                continue
            name = _module_path(key)
            a = torch.from_numpy(np.asarray(sd[key], np.float32))
            b = torch.from_numpy(np.asarray(sd[key.replace(".lora_A.", ".lora_B.")], np.float32))
            d = lora.delta(a, b, coef)
            deltas[name] = deltas[name] + d if name in deltas else d
    with torch.no_grad():
        for name, d in deltas.items():
            if name not in modules:
                raise ValueError(f"{adapter}: module '{name}' is not in the base model")
            if not torch.isfinite(d).all():
                raise ValueError(f"{adapter}: the merged update of '{name}' is not finite")
            weight = modules[name].weight
            if tuple(weight.shape) != tuple(d.shape):
                raise ValueError(f"{adapter}: '{name}' has shape {tuple(weight.shape)}, the update {tuple(d.shape)}")
            weight.add_(d.to(weight.dtype))
    return model


def similarity_weights(target_prompts: Sequence[str], candidates: dict[str, Sequence[str]],
                       embed: Embedder | None = None, temperature: float = 0.05,
                       max_prompts: int = 256) -> tuple[dict[str, float], dict[str, float]]:
    """Label-free merge weights: softmax over tasks of cos(mean prompt embedding) / ``temperature``.

    ``temperature`` -> infinity is the uniform merge, -> 0 is ``nearest``. Returns (weights, cosines).
    """
    if temperature <= 0:
        raise ValueError("the similarity temperature must be positive")
    if not target_prompts or not candidates:
        raise ValueError("a similarity-weighted merge needs target prompts and at least one candidate task")
    embed = embed or minilm_embedder()
    target = _mean_direction(embed, list(target_prompts)[:max_prompts])
    names = sorted(candidates)
    sims = np.array([float(target @ _mean_direction(embed, list(candidates[t])[:max_prompts])) for t in names])
    z = np.exp((sims - sims.max()) / temperature)
    w = z / z.sum()
    return dict(zip(names, w.tolist(), strict=True)), dict(zip(names, sims.tolist(), strict=True))


KERNEL_TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
KERNEL_MIXES = (0.1, 0.25, 0.5, 0.75, 1.0)


def kernel_weights(sims: np.ndarray, temperature: float, mix: float) -> np.ndarray:
    """``(1 - mix) / K + mix * softmax(sims / temperature)`` along the last axis (rows sum to 1)."""
    sims = np.asarray(sims, dtype=np.float64)
    z = np.exp((sims - sims.max(axis=-1, keepdims=True)) / temperature)
    return (1.0 - mix) / sims.shape[-1] + mix * z / z.sum(axis=-1, keepdims=True)


def relative_distance(gram: np.ndarray, pool: Sequence[int], target: int, weights: np.ndarray) -> np.ndarray:
    """Squared distance of ``sum_j w_j dW_pool[j]`` to ``dW_target`` over the uniform merge's, per row of ``weights``.

    ``gram[i, j] = <dW_i, dW_j>``; ``weights`` is one weighting over ``pool`` or a stack of them. Below
    1: that weighting lands closer to the target's update than averaging the pool does.
    """
    pool = np.asarray(pool)
    g, gh, hh = gram[np.ix_(pool, pool)], gram[pool, target], gram[target, target]
    w = np.atleast_2d(np.asarray(weights, np.float64))
    u = np.full(len(pool), 1.0 / len(pool))
    return (np.einsum("ij,jk,ik->i", w, g, w) - 2 * w @ gh + hh) / (u @ g @ u - 2 * u @ gh + hh)


def tune_kernel(gram: np.ndarray, sims: np.ndarray, temperatures: Sequence[float] = KERNEL_TEMPERATURES,
                mixes: Sequence[float] = KERNEL_MIXES) -> dict:
    """Leave-one-out choice of the similarity kernel's (temperature, mix) on K training tasks, no labels.

    ``gram[i, j] = <dW_i, dW_j>`` over the tasks' LoRA updates; ``sims[i, j]`` the cosine of their mean
    prompt embeddings. Each task i is rebuilt from the others with :func:`kernel_weights` of its
    similarities to them; the loss is ``|sum_j w_j dW_j - dW_i|^2`` relative to the uniform merge of
    the others', averaged over i. Returns the best grid point, its loss (``loo_rel``; below 1: the
    kernel rebuilds a left-out task better than averaging) and the whole grid.
    """
    gram, sims = np.asarray(gram, np.float64), np.asarray(sims, np.float64)
    k = len(gram)
    if k < 3 or gram.shape != (k, k) or sims.shape != (k, k):
        raise ValueError(f"tune_kernel needs K >= 3 tasks and K x K gram and sims, got {gram.shape}, {sims.shape}")

    def loss(temperature: float, mix: float) -> float:
        rel = []
        for i in range(k):
            rest = np.delete(np.arange(k), i)
            rel.append(relative_distance(gram, rest, i, kernel_weights(sims[i, rest], temperature, mix))[0])
        return float(np.mean(rel))

    grid = {(float(t), float(m)): loss(t, m) for t in temperatures for m in mixes}
    (t, m), best = min(grid.items(), key=lambda kv: (kv[1], -kv[0][0]))
    return {"temperature": t, "mix": m, "loo_rel": best,
            "grid": [{"temperature": a, "mix": b, "loo_rel": v} for (a, b), v in grid.items()]}


def mean_directions(embed: Embedder, prompt_sets: Sequence[Sequence[str]], max_prompts: int = 256) -> np.ndarray:
    """Unit mean embedding of each prompt set's first ``max_prompts`` prompts, one row per set."""
    return np.stack([_mean_direction(embed, list(ps)[:max_prompts]) for ps in prompt_sets])


def _ckpt_id(ckpt: Path) -> str:
    return zoo.checkpoint_meta(ckpt).get("sha256") or assets.file_sha256(ckpt / zoo.ADAPTER_WEIGHTS)


def merged_tag(train: Sequence[str], finals: dict[str, Path]) -> str:
    """The merged adapter's content tag (its folder is ``merged-<tag>``): a hash of the training tasks and
    their final LoRAs' sha256, so equal tags mean bit-identical LoRAs."""
    return hashlib.sha256(json.dumps([[t, _ckpt_id(finals[t])] for t in train]).encode()).hexdigest()[:16]


# --- nearest -----------------------------------------------------------------------------------------


def minilm_embedder(batch_size: int = 64) -> Embedder:
    """Mean-pooled, L2-normalized sentence embeddings from the embedded all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(assets.minilm_dir()), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                       show_progress_bar=False), dtype=np.float64)

    return embed


def memoized(embed: Embedder, cache_dir: str | Path | None = None) -> Embedder:
    """``embed`` remembering every text's embedding: a task's prompts are encoded once per process,
    however many targets, pool sizes and variants compare against them (the scaling curve's 8 targets
    x 345 pool slots x 256 prompts would otherwise be 706k encodings).

    ``cache_dir``: also remember them across processes (one folder per embedding model: the caller
    names it). Each call that encodes new texts adds one shard (safetensors: the texts' sha256 and
    their float64 vectors, written to a temporary name and renamed), so a killed run leaves whole
    shards only; a shard that does not read back as such is ignored (with a warning) and its texts
    are encoded again. The vectors are the ones ``embed`` returned, bit for bit. Before encoding texts it
    has not seen, a memo reads the shards other processes wrote since (experiment shards, a curve and
    its helper): the same texts get the first encoder's vectors in every process.
    """
    seen: dict[bytes, np.ndarray] = {}
    folder = Path(cache_dir) if cache_dir is not None else None
    read: set[str] = set()  # shards already read (or found unreadable) by this memo

    def read_new_shards() -> None:
        if folder is None or not folder.is_dir():
            return
        for shard in sorted(folder.glob("*.safetensors")):
            if shard.name in read:
                continue
            read.add(shard.name)
            try:
                keys, vecs = _read_embedding_shard(shard)
            except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed, never used
                warnings.warn(f"ignoring embedding cache shard {shard}: {e}", stacklevel=3)
                continue
            seen.update(zip(map(bytes, keys), vecs, strict=True))

    read_new_shards()

    def embed_once(texts: list[str]) -> np.ndarray:
        keys = [hashlib.sha256(t.encode("utf-8")).digest() for t in texts]
        new = {k: t for k, t in zip(keys, texts, strict=True) if k not in seen}
        if new and folder is not None:  # another process sharing the folder may have encoded them meanwhile
            read_new_shards()
            new = {k: t for k, t in new.items() if k not in seen}
        if new:
            vecs = np.asarray(embed(list(new.values())), dtype=np.float64)
            if vecs.ndim != 2 or len(vecs) != len(new) or not np.isfinite(vecs).all():
                raise ValueError(f"the embedder returned {vecs.shape} for {len(new)} texts (or non-finite values)")
            seen.update(zip(new, vecs, strict=True))
            if folder is not None:
                _write_embedding_shard(folder, list(new), vecs)
        return np.stack([seen[k] for k in keys]) if texts else np.zeros((0, 0))

    return embed_once


def _write_embedding_shard(folder: Path, keys: list[bytes], vecs: np.ndarray) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"sha256": np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), 32),
              "vectors": np.ascontiguousarray(vecs, np.float64)}
    name = hashlib.sha256(arrays["sha256"].tobytes()).hexdigest()[:24]
    path = folder / f"{name}.safetensors"
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        save_file(arrays, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves nothing (a killed one a .tmp, never read)
    return path


def _read_embedding_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from safetensors.numpy import load_file

    t = load_file(str(path))
    keys, vecs = t.get("sha256"), t.get("vectors")
    if keys is None or vecs is None or set(t) != {"sha256", "vectors"}:
        raise ValueError(f"expected tensors sha256 and vectors, found {sorted(t)}")
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 32 or vecs.ndim != 2 or len(vecs) != len(keys):
        raise ValueError(f"shapes sha256 {keys.shape} {keys.dtype}, vectors {vecs.shape} do not match")
    if vecs.dtype != np.float64 or not np.isfinite(vecs).all():
        raise ValueError("vectors are not finite float64")
    return keys, vecs


def minilm_cache_key() -> str:
    """Names the embedding cache folder of the embedded MiniLM: its weights' sha256 (prefix)."""
    return "minilm-" + assets.file_sha256(assets.minilm_dir() / "model.safetensors")[:16]


def _mean_direction(embed: Embedder, prompts: Sequence[str]) -> np.ndarray:
    v = np.asarray(embed(list(prompts)), dtype=np.float64).mean(axis=0)
    return v / max(np.linalg.norm(v), 1e-12)


def nearest_task(target_prompts: Sequence[str], candidates: dict[str, Sequence[str]],
                 embed: Embedder | None = None, max_prompts: int = 256) -> tuple[str, dict[str, float]]:
    """The candidate task whose mean prompt embedding has the highest cosine with the target's.

    Each side uses at most ``max_prompts`` prompts (a prefix: the zoo's prompts.jsonl is already a
    seeded shuffle). Returns (task, cosine per candidate).
    """
    if not target_prompts:
        raise ValueError("nearest needs at least one target prompt")
    if not candidates:
        raise ValueError("nearest needs at least one candidate task")
    embed = embed or minilm_embedder()
    target = _mean_direction(embed, list(target_prompts)[:max_prompts])
    sims = {t: float(target @ _mean_direction(embed, list(p)[:max_prompts])) for t, p in candidates.items()}
    return max(sims, key=lambda t: (sims[t], t)), sims


# --- all baselines ---------------------------------------------------------------------------------


def build_baselines(workdir: str | Path, task: str, names: Sequence[str] = BASELINES, *,
                    training_tasks: Sequence[str] | None = None, target_prompts: Sequence[str] | None = None,
                    adapter_root: str | Path | None = None, embed: Embedder | None = None,
                    max_prompts: int = 256, oracle_task: str | None = None) -> list[System]:
    """The requested baseline systems for held-out ``task`` (adapter folders from the zoo).

    ``training_tasks`` defaults to every zoo task but ``task``; ``target_prompts`` (unlabeled, e.g.
    T's test prompts) is needed by ``nearest`` and ``simmerge`` only; merged adapters go to ``adapter_root``
    (default ``<workdir>/eval_cache/adapters``). A baseline that cannot be built from this zoo
    (``oracle`` without T in the zoo) is skipped with a warning. Without ``embed``, ``nearest`` and
    ``simmerge`` share one MiniLM whose vectors are kept in ``<workdir>/embedding_cache`` (as the
    scaling curve's are): a rerun or a resumed run weighs the tasks with the first run's vectors, bit
    for bit, so its similarity merge is the same recipe (and hits the evaluation cache).
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise InputError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    train = [t for t in (training_tasks if training_tasks is not None else zoo.tasks(workdir)) if t != task]
    finals = {t: zoo.final_checkpoint(workdir, t) for t in train} if set(names) - {"base", "oracle"} else {}
    if set(names) & {"training_loras", "merged", "simmerge", "nearest"} and not train:
        raise InputError(f"no training tasks in the zoo at {zoo.zoo_dir(workdir)} besides '{task}'")
    if embed is None and target_prompts is not None and set(names) & {"simmerge", "nearest"}:
        embed = memoized(minilm_embedder(), Path(workdir) / "embedding_cache" / minilm_cache_key())
    systems: list[System] = []
    for name in names:
        if name == "base":
            systems.append(System("base", "base"))
        elif name == "training_loras":
            for t in train:
                systems.append(System(f"lora:{t}", "training_lora", str(finals[t]),
                                      {"source_task": t, "step": zoo.checkpoint_meta(finals[t]).get("step")}))
        elif name == "merged":
            tag = merged_tag(train, finals)
            root = Path(adapter_root) if adapter_root else Path(workdir) / "eval_cache" / "adapters"
            path = merge_adapters([finals[t] for t in train], root / f"merged-{tag}")
            systems.append(System("merged", "merged", str(path), {"source_tasks": list(train)}))
        elif name == "simmerge":  # the similarity-weighted merge: label-free, from the same prompts as nearest
            if target_prompts is None:
                raise InputError("the 'simmerge' baseline needs target_prompts (T's unlabeled prompts)")
            weights, sims = similarity_weights(target_prompts, {t: zoo.prompts(workdir, t) for t in train}, embed,
                                               SIMMERGE_TEMPERATURE, max_prompts)
            w = [weights[t] for t in train]
            tag = hashlib.sha256(json.dumps([[t, _ckpt_id(finals[t]), wt] for t, wt in zip(train, w, strict=True)])
                                 .encode()).hexdigest()[:16]
            root = Path(adapter_root) if adapter_root else Path(workdir) / "eval_cache" / "adapters"
            path = write_merge_spec([finals[t] for t in train], root / f"simmerge-{tag}", w)
            systems.append(System("simmerge", "merged", str(path), {
                "source_tasks": list(train), "weights": dict(zip(train, w, strict=True)), "cosine": sims,
                "temperature": SIMMERGE_TEMPERATURE}))
        elif name == "nearest":
            if target_prompts is None:
                raise InputError("the 'nearest' baseline needs target_prompts (T's unlabeled prompts)")
            best, sims = nearest_task(target_prompts, {t: zoo.prompts(workdir, t) for t in train}, embed,
                                      max_prompts)
            systems.append(System("nearest", "nearest", str(finals[best]),
                                  {"source_task": best, "cosine": sims, "num_target_prompts":
                                   min(len(target_prompts), max_prompts)}))
        elif name == "oracle":  # ``oracle_task``: a zoo task standing in for T (HumanEval -> Python's LoRA)
            try:
                ckpt = zoo.final_checkpoint(workdir, oracle_task or task)
                manifest = zoo.task_manifest(workdir, oracle_task or task)
            except FileNotFoundError as e:
                warnings.warn(f"skipping the oracle baseline: {e}", stacklevel=2)
                continue
            systems.append(System("oracle", "oracle", str(ckpt), {
                "source_task": oracle_task or task, "train_wall_time_s": manifest.get("train_wall_time_s"),
                "total_steps": manifest.get("total_steps"), "train_examples_used": manifest.get("train_examples_used"),
            }))
    return systems
