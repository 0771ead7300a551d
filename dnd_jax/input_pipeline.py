"""Training data: zoo checkpoints as normalized weight tokens, paired with prompt conditions.

Everything lives in host memory (a zoo is a few hundred MB of tokens at most). An example is
(a random checkpoint of task t, N random prompts of task t). Batch ``i`` is a pure function of
``(config.seed, i)``, so resuming at step ``i`` needs no saved data state and any number of
processes agree on the global batch: each process gathers only its own rows.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from dnd_jax import conditions, zoo
from dnd_jax.weights import centering, normalization
from dnd_jax.weights import layout as layout_lib


@dataclasses.dataclass
class ZooData:
    """Normalized tokens of every training-task checkpoint, split into train and val."""

    tasks: list[str]
    layout: layout_lib.WeightLayout
    normalizer: normalization.Normalizer
    mask: np.ndarray  # (T, h, w) bool: real (not padding) positions
    token_weights: np.ndarray  # (T,) float32 loss weight per token
    train_tokens: np.ndarray  # (S, T, h, w) float32, normalized
    train_task: np.ndarray  # (S,) index into tasks
    val_tokens: np.ndarray  # (V, T, h, w)
    val_task: np.ndarray  # (V,)
    conds: list[np.ndarray]  # per task (P_t, L, C) float32
    ckpt_dirs: dict[str, list[str]]  # task -> [train..., val...] checkpoint folder names
    lora: dict  # r, lora_alpha, lora_dropout, target_modules (from the zoo manifest)
    base_model: dict  # name, path, sha
    bank: centering.Bank | None = None  # center.mode "similarity": tokens are residuals from its centers

    @property
    def cond_shape(self) -> tuple[int, int, int]:
        return (0, *self.conds[0].shape[1:])

    @property
    def token_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_tokens.shape[1:])


def inverse_count_weights(layout: layout_lib.WeightLayout) -> np.ndarray:
    """(T,) weights giving every tensor the same total weight (small matrices are not drowned out)."""
    owner = layout_lib.token_owners(layout)
    _, inv, counts = np.unique(owner, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return (w * len(owner) / w.sum()).astype(np.float32)


def load(zoo_workdir: str | Path, config, train_tasks: Sequence[str]) -> ZooData:
    """Tokenize the zoo's checkpoints of ``train_tasks``, fit the normalizer on the train split.

    Tokens are written into preallocated arrays and normalized one checkpoint at a time, so peak
    memory stays near one copy of the zoo (about 1.1 GB for SmolLM2's 6 x 19 training checkpoints).
    """
    k_val = int(config.val_checkpoints_per_task)
    per_task = {t: zoo.checkpoints(zoo_workdir, t) for t in train_tasks}
    first_path = per_task[train_tasks[0]][0]
    first = zoo.load_state_dict(first_path)
    layout = layout_lib.build_layout({k: tuple(v.shape) for k, v in first.items()}, tuple(config.layout.token_shape))
    split = {t: (ckpts[:len(ckpts) - k_val], ckpts[len(ckpts) - k_val:]) for t, ckpts in per_task.items()}

    def tokenize_all(which: int) -> tuple[np.ndarray, np.ndarray]:
        paths = [(ti, p) for ti, t in enumerate(train_tasks) for p in split[t][which]]
        tokens = np.empty((len(paths), *layout.grid_shape), np.float32)
        for i, (_, path) in enumerate(paths):
            try:
                tokens[i] = layout_lib.tokenize(layout, zoo.load_state_dict(path))[0]
            except layout_lib.LayoutMismatchError as e:
                raise layout_lib.LayoutMismatchError(f"{path} does not match the layout of {first_path}: {e}") from None
        return tokens, np.asarray([ti for ti, _ in paths], np.int32)

    train_tokens, train_task = tokenize_all(0)
    val_tokens, val_task = tokenize_all(1)
    mask = np.asarray(layout.mask(), bool)
    normalizer = normalization.Normalizer.fit(train_tokens, mask, config.layout.normalization)
    for tokens in (train_tokens, val_tokens):
        for i in range(len(tokens)):  # in place, one checkpoint at a time; padding -> 0
            tokens[i] = normalizer.normalize(tokens[i])

    conds = [conditions.task_conditions(zoo_workdir, t, config)[0] for t in train_tasks]
    bank = None
    center = centering.settings(config)
    if center["mode"] == "similarity":  # residuals from each task's leave-one-out similarity-weighted mean
        dirs = None
        if center["directions"] == "sentence":  # whole prompts through MiniLM, as the similarity merge does
            from dnd_jax import baselines

            embed = baselines.memoized(baselines.minilm_embedder(),
                                       Path(zoo_workdir) / "embedding_cache" / baselines.minilm_cache_key())
            dirs = baselines.mean_directions(embed, [zoo.prompts(zoo_workdir, t) for t in train_tasks],
                                             center["max_prompts"])
        bank = centering.fit(train_tasks, conds, train_tokens, train_task, center["temperature"], center["max_prompts"],
                             dirs)
        centering.subtract_centers(bank, [(train_tokens, train_task), (val_tokens, val_task)])
    if config.token_weights == "inverse_count":
        weights = inverse_count_weights(layout)
    else:
        weights = np.ones((layout.num_tokens,), np.float32)
    manifest = zoo.task_manifest(zoo_workdir, train_tasks[0])
    return ZooData(
        tasks=list(train_tasks), layout=layout, normalizer=normalizer, mask=mask, token_weights=weights,
        train_tokens=train_tokens, train_task=train_task, val_tokens=val_tokens, val_task=val_task, conds=conds,
        ckpt_dirs={t: [p.name for p in per_task[t]] for t in train_tasks},
        lora=dict(manifest.get("lora", {})), base_model=dict(manifest.get("base_model", {})), bank=bank,
    )


def _choose_prompts(rng: np.random.Generator, num_available: int, n: int) -> np.ndarray:
    return rng.choice(num_available, size=n, replace=num_available < n)


def batch_indices(data: ZooData, step: int, batch_size: int, num_prompts: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Global batch ``step``: checkpoint rows (B,) and prompt rows (B, N). Tasks are drawn uniformly."""
    rng = np.random.default_rng([int(seed), int(step)])
    by_task = [np.flatnonzero(data.train_task == t) for t in range(len(data.tasks))]
    tasks = rng.integers(0, len(data.tasks), size=batch_size)
    ckpt = np.asarray([rng.choice(by_task[t]) for t in tasks], np.int64)
    prompts = np.stack([_choose_prompts(rng, len(data.conds[t]), num_prompts) for t in tasks])
    return ckpt, prompts


def val_indices(data: ZooData, num_prompts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One fixed example per val checkpoint (fixed prompts), the same at every evaluation."""
    rng = np.random.default_rng([int(seed), 2**31 - 1])
    rows = np.arange(len(data.val_tokens))
    prompts = np.stack([_choose_prompts(rng, len(data.conds[t]), num_prompts) for t in data.val_task]) \
        if len(rows) else np.zeros((0, num_prompts), np.int64)
    return rows, prompts


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> np.ndarray:
    """The global batch rows this process feeds, in the order ``make_array_from_process_local_data`` wants."""
    spans = sorted({(idx[0].start or 0, idx[0].stop if idx[0].stop is not None else global_shape[0])
                    for idx in sharding.addressable_devices_indices_map(global_shape).values()})
    return np.concatenate([np.arange(a, b) for a, b in spans])


def _spans(rows: np.ndarray) -> str:
    """'0-3,8-11' for sorted row indices."""
    if not len(rows):
        return "none"
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    return ",".join(f"{g[0]}-{g[-1]}" for g in np.split(rows, cuts))


def gather(tokens: np.ndarray, task_of: np.ndarray, data: ZooData, ckpt: np.ndarray, prompts: np.ndarray,
           rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host arrays of ``rows``: conditions (b, N, L, C) and targets (b, T, h, w)."""
    cond = np.stack([data.conds[task_of[ckpt[r]]][prompts[r]] for r in rows])
    return cond, tokens[ckpt[rows]]


def make_global(arrays: Sequence[np.ndarray], shardings: Sequence[NamedSharding],
                global_shapes: Sequence[tuple[int, ...]]) -> list[jax.Array]:
    return [jax.make_array_from_process_local_data(s, a, g) for a, s, g in zip(arrays, shardings, global_shapes, strict=True)]


class Batches:
    """Deterministic global batches, each process building only its slice."""

    def __init__(self, data: ZooData, config, cond_sharding: NamedSharding, target_sharding: NamedSharding):
        self.data = data
        self.batch_size = int(config.batch_size)
        self.num_prompts = int(config.conditions.num_prompts)
        self.seed = int(config.seed)
        _, length, channels = data.conds[0].shape
        self.cond_shape = (self.batch_size, self.num_prompts, length, channels)
        self.target_shape = (self.batch_size, *data.train_tokens.shape[1:])
        self.shardings = (cond_sharding, target_sharding)
        self.rows = process_rows(cond_sharding, self.cond_shape)
        logging.info("process %d/%d builds rows %s of every global batch of %d", jax.process_index(),
                     jax.process_count(), _spans(self.rows), self.batch_size)
        self.weight_sharding = NamedSharding(cond_sharding.mesh, PartitionSpec(cond_sharding.spec[0]))

    def host(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of batch ``step`` as numpy."""
        ckpt, prompts = batch_indices(self.data, step, self.batch_size, self.num_prompts, self.seed)
        return gather(self.data.train_tokens, self.data.train_task, self.data, ckpt, prompts, self.rows)

    def tasks(self, step: int) -> np.ndarray:
        """Task index of every row of global batch ``step`` (all processes agree on it)."""
        ckpt, _ = batch_indices(self.data, step, self.batch_size, self.num_prompts, self.seed)
        return self.data.train_task[ckpt]

    def __call__(self, step: int) -> list[jax.Array]:
        return make_global(self.host(step), self.shardings, (self.cond_shape, self.target_shape))

    def val(self) -> list[tuple[list[jax.Array], jax.Array]]:
        """Val set as global batches of ``batch_size`` (the last padded) with per-example weights."""
        rows, prompts = val_indices(self.data, self.num_prompts, self.seed)
        out = []
        for start in range(0, len(rows), self.batch_size):
            sel = np.arange(start, start + self.batch_size)
            valid = (sel < len(rows)).astype(np.float32)
            sel = np.minimum(sel, len(rows) - 1)
            ck, pr = rows[sel], prompts[sel]
            host = gather(self.data.val_tokens, self.data.val_task, self.data, ck, pr, self.rows)
            arrays = make_global(host, self.shardings, (self.cond_shape, self.target_shape))
            weight = jax.make_array_from_process_local_data(self.weight_sharding, valid[self.rows], (self.batch_size,))
            out.append((arrays, weight))
        return out
