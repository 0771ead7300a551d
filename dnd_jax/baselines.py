"""Baselines for a held-out task T, built from the checkpoint zoo only.

- ``base``: the frozen base model, no adapter.
- ``training_loras``: the final checkpoint of every training task, each evaluated on T (the
  evaluation also reports their mean).
- ``merged``: the element-wise average of the training tasks' final LoRA updates, written *exactly*
  as one peft adapter of rank ``sum(r_k)`` (see :func:`merge_adapters`).
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
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dnd_jax import assets, zoo

BASELINES = ("base", "training_loras", "merged", "nearest", "oracle")
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


def lora_scaling(cfg: dict, r: int | None = None) -> float:
    """peft's multiplier of ``B @ A``: ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA)."""
    r = int(cfg["r"] if r is None else r)
    alpha = float(cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _check_plain_lora(cfg: dict, where: Path) -> None:
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise ValueError(f"{where}: only plain LoRA adapters can be merged")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{where}: adapters with rank_pattern/alpha_pattern are not supported")


def merge_adapters(ckpts: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write the average of the adapters' weight updates as one exact peft LoRA adapter.

    With ``s_k`` each adapter's scaling and ``K`` adapters, the target update of every module is
    ``(1/K) sum_k s_k B_k A_k``. Stacking ``A = [A_1; ...; A_K]`` (rows) and
    ``B = [c_1 B_1, ..., c_K B_K]`` (columns), ``c_k = s_k / (K s)``, gives ``s B A`` exactly, for an
    adapter of rank ``R = sum r_k`` whose ``lora_alpha`` keeps its scaling ``s`` equal to the first
    adapter's (``alpha * K`` for equal plain LoRAs). Idempotent: an existing folder is kept.
    """
    from dnd_jax.weights import peft_io

    ckpts = [Path(c) for c in ckpts]
    out_dir = Path(out_dir)
    if not ckpts:
        raise ValueError("merge_adapters needs at least one adapter")
    if (out_dir / zoo.ADAPTER_WEIGHTS).is_file() and (out_dir / zoo.ADAPTER_CONFIG).is_file():
        return out_dir
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
    rank = sum(int(cfg["r"]) for cfg in cfgs)
    scale = lora_scaling(cfgs[0])
    new_cfg = dict(cfgs[0])
    new_cfg["r"] = rank
    new_cfg["lora_alpha"] = scale * math.sqrt(rank) if new_cfg.get("use_rslora") else scale * rank
    coef = [lora_scaling(cfg) / (k_count * scale) for cfg in cfgs]
    merged = {}
    for key in keys:
        if ".lora_A." in key:
            merged[key] = np.concatenate([sd[key] for sd in sds], axis=0)
        else:
            merged[key] = np.concatenate([c * sd[key] for c, sd in zip(coef, sds, strict=True)], axis=1)
    sources = json.dumps({"sources": [str(c) for c in ckpts], "coefficients": coef, "scaling": scale}, indent=2)
    peft_io.write_adapter(out_dir, merged, overwrite=True, extra_files={"merge_sources.json": sources},
                          **peft_io.write_kwargs_from_config(new_cfg))
    return out_dir


def _ckpt_id(ckpt: Path) -> str:
    return zoo.checkpoint_meta(ckpt).get("sha256") or assets.file_sha256(ckpt / zoo.ADAPTER_WEIGHTS)


# --- nearest -----------------------------------------------------------------------------------------


def minilm_embedder(batch_size: int = 64) -> Embedder:
    """Mean-pooled, L2-normalized sentence embeddings from the embedded all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(assets.minilm_dir()), device="cpu")

    def embed(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                       show_progress_bar=False), dtype=np.float64)

    return embed


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
                    max_prompts: int = 256) -> list[System]:
    """The requested baseline systems for held-out ``task`` (adapter folders from the zoo).

    ``training_tasks`` defaults to every zoo task but ``task``; ``target_prompts`` (unlabeled, e.g.
    T's test prompts) is needed by ``nearest`` only; merged adapters go to ``adapter_root``
    (default ``<workdir>/eval_cache/adapters``). A baseline that cannot be built from this zoo
    (``oracle`` without T in the zoo) is skipped with a warning.
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")
    train = [t for t in (training_tasks if training_tasks is not None else zoo.tasks(workdir)) if t != task]
    finals = {t: zoo.final_checkpoint(workdir, t) for t in train} if set(names) - {"base", "oracle"} else {}
    if set(names) & {"training_loras", "merged", "nearest"} and not train:
        raise ValueError(f"no training tasks in the zoo at {zoo.zoo_dir(workdir)} besides '{task}'")
    systems: list[System] = []
    for name in names:
        if name == "base":
            systems.append(System("base", "base"))
        elif name == "training_loras":
            for t in train:
                systems.append(System(f"lora:{t}", "training_lora", str(finals[t]),
                                      {"source_task": t, "step": zoo.checkpoint_meta(finals[t]).get("step")}))
        elif name == "merged":
            tag = hashlib.sha256(json.dumps([[t, _ckpt_id(finals[t])] for t in train]).encode()).hexdigest()[:16]
            root = Path(adapter_root) if adapter_root else Path(workdir) / "eval_cache" / "adapters"
            path = merge_adapters([finals[t] for t in train], root / f"merged-{tag}")
            systems.append(System("merged", "merged", str(path), {"source_tasks": list(train)}))
        elif name == "nearest":
            if target_prompts is None:
                raise ValueError("the 'nearest' baseline needs target_prompts (T's unlabeled prompts)")
            best, sims = nearest_task(target_prompts, {t: zoo.prompts(workdir, t) for t in train}, embed,
                                      max_prompts)
            systems.append(System("nearest", "nearest", str(finals[best]),
                                  {"source_task": best, "cosine": sims, "num_target_prompts":
                                   min(len(target_prompts), max_prompts)}))
        elif name == "oracle":
            try:
                ckpt = zoo.final_checkpoint(workdir, task)
                manifest = zoo.task_manifest(workdir, task)
            except FileNotFoundError as e:
                warnings.warn(f"skipping the oracle baseline: {e}", stacklevel=2)
                continue
            systems.append(System("oracle", "oracle", str(ckpt), {
                "source_task": task, "train_wall_time_s": manifest.get("train_wall_time_s"),
                "total_steps": manifest.get("total_steps"), "train_examples_used": manifest.get("train_examples_used"),
            }))
    return systems
