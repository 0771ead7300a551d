"""Geometry of LoRA weight updates: how task-specific is each adapter, and did DnD find that part?

(Library; the command line is ``python -m dnd_jax.geometry``, the factor math :mod:`dnd_jax.weights.lora`,
the report files :func:`dnd_jax.report.write_geometry`.)

The generator regresses LoRA factors, but the base model only ever sees each module's update
``dW = s B A``. This module measures adapters in that space. Inner products come straight from the
rank-r factors, ``<s B A, t D C>_F = s t sum((B^T D) * (A C^T))``, so the Gram matrix of dozens of
SmolLM2 adapters takes seconds and no dense ``dW`` is ever built. Every point (a task's mean update,
the training mean, an offset) is a coefficient vector over the loaded adapters, measured with that
Gram matrix.

For a held-out task h with training tasks T (as in the experiment):

* offset ``o_h = dW_h - m`` with ``m`` the mean of the training tasks' updates: the task-specific
  part a generator has to add to the shared update;
* ``span_fraction``: the share of ``|o_h|^2`` lying in ``span{o_t : t in T}``. A generator whose
  outputs stay near the training tasks' updates can recover no more than this of ``o_h``;
* for a generated adapter g: ``cos(g - m, o_h)`` and ``rel_err = |g - dW_h|^2 / |m - dW_h|^2``
  (below 1: g is closer to the held-out task's own update than the training mean is);
* ``span_weights``: the point ``m + P(o_h)`` of the training updates' affine hull closest to
  ``dW_h``, as weights on the training tasks' updates (summing to 1, possibly negative): the best
  any combination of the training LoRAs can do in this metric (its ``rel_err`` is
  ``1 - span_fraction``). It is fitted to ``dW_h``, so it is a ceiling, not a method;
* with a replica zoo (the same recipe, another seed: another LoRA init and data order), the same
  numbers for the replica's update of h: how reproducible ``o_h`` is at all, i.e. the best any
  prompt-conditioned generator could hope to match.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dnd_jax import zoo
from dnd_jax.errors import InputError, MissingError
from dnd_jax.weights.lora import load_factors, update_gram


class Space:
    """Points as coefficient vectors over loaded adapters, measured by their Gram matrix."""

    def __init__(self, gram: np.ndarray):
        self.gram = gram
        self.n = gram.shape[0]

    def point(self, index: int | Sequence[int]) -> np.ndarray:
        """The adapter ``index`` (or the mean of several) as a coefficient vector."""
        idx = [index] if isinstance(index, (int, np.integer)) else list(index)
        c = np.zeros(self.n)
        c[idx] = 1.0 / len(idx)
        return c

    def dot(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ self.gram @ y)

    def norm(self, x: np.ndarray) -> float:
        return float(np.sqrt(max(self.dot(x, x), 0.0)))

    def cos(self, x: np.ndarray, y: np.ndarray) -> float:
        den = self.norm(x) * self.norm(y)
        return self.dot(x, y) / den if den > 0 else float("nan")

    def projection(self, x: np.ndarray, basis: Sequence[np.ndarray]) -> np.ndarray:
        """Coefficients ``c`` of the point ``sum_i c_i basis_i`` of ``span(basis)`` closest to ``x``
        (least squares in the Gram metric; the minimum-norm ``c`` when the basis is dependent)."""
        b = np.stack(basis, axis=1)  # (n, k)
        return np.linalg.lstsq(b.T @ self.gram @ b, b.T @ self.gram @ x, rcond=1e-10)[0]

    def span_fraction(self, x: np.ndarray, basis: Sequence[np.ndarray]) -> float:
        """Share of ``|x|^2`` in ``span(basis)`` (least squares in the Gram metric)."""
        b = np.stack(basis, axis=1)
        xx = self.dot(x, x)
        return float((b.T @ self.gram @ x) @ self.projection(x, basis) / xx) if xx > 0 else float("nan")


def _affine_weights(train: Sequence[str], c: np.ndarray) -> dict[str, float]:
    """``m + sum_t c_t (u_t - m)`` (``m`` the mean of the ``u_t``) as weights on the ``u_t``: they sum to 1."""
    w = c + (1.0 - float(np.sum(c))) / len(train)
    return {t: float(x) for t, x in zip(train, w, strict=True)}


def sample_checkpoints(workdir: str | Path, task: str, k: int) -> list[Path]:
    """``k`` of the task's zoo checkpoints, evenly spaced and always including the final one."""
    ckpts = zoo.checkpoints(workdir, task)
    if not ckpts:
        raise MissingError(f"no checkpoints for '{task}' in {zoo.zoo_dir(workdir)}")
    if k <= 0 or k >= len(ckpts):
        return ckpts
    idx = np.unique(np.round(np.linspace(len(ckpts) - 1, 0, k)).astype(int))
    return [ckpts[i] for i in sorted(idx)]


def analyse(workdir: str | Path, targets: Mapping[str, Sequence[str]], generated: Mapping[str, Mapping[str, Path]],
            checkpoints_per_task: int = 4, replicas: Mapping[str, str | Path] | None = None,
            subsets_per_size: int = 20, seed: int = 0, reference: str = "dnd",
            combinations: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
            return_gram: bool = False) -> dict:
    """Per-target geometry (see the module docstring) and the tasks' offset cosines.

    ``targets`` maps each held-out task to its training tasks; ``generated[label][target]`` is an
    adapter folder generated for ``target`` (e.g. ``{"dnd": {"arc_c": W/adapters/dnd_arc_c}}``);
    targets whose task is also in a replica zoo (``replicas[label]``: same recipe, another seed) get
    an entry ``replica:<label>``. ``span_curve`` is the share of ``|o_h|^2`` in the span of k random
    training offsets, k = 1..|T| (``subsets_per_size`` subsets each): how reachability grows with the
    number of training tasks. Every other adapter of a target is also compared with the ``reference``
    label's (``cos_to_reference_step``, ``diff_from_reference_rel`` = |g - g_ref| / |g_ref - m|): how
    far prompts of another task, or another sample of the same task's, move the generator's output.
    ``combinations[label][target]`` maps training tasks to weights: the point ``sum_t w_t * task_mean[t]``
    (e.g. the similarity-weighted merge, in the merge's own update space) is measured like an adapter.
    ``return_gram``: also ``task_gram``, the inner products of the tasks' mean updates (order: ``tasks``).
    """
    if not targets:
        raise InputError("no held-out targets to analyse (config.experiment.holdouts and cross_domain are empty)")
    tasks = sorted(set(targets) | {t for ts in targets.values() for t in ts})
    paths: list[Path] = []
    task_idx: dict[str, list[int]] = {}
    for t in tasks:
        ckpts = sample_checkpoints(workdir, t, checkpoints_per_task)
        task_idx[t] = list(range(len(paths), len(paths) + len(ckpts)))
        paths += ckpts
    gen_idx: dict[tuple[str, str], int] = {}
    for label, per_target in generated.items():
        for target, path in per_target.items():
            gen_idx[(label, target)] = len(paths)
            paths.append(Path(path))
    replica_idx: dict[tuple[str, str], list[int]] = {}
    for label, rep_workdir in (replicas or {}).items():
        for t in sorted(set(targets) & set(zoo.tasks(rep_workdir))):
            ckpts = sample_checkpoints(rep_workdir, t, checkpoints_per_task)
            replica_idx[(label, t)] = list(range(len(paths), len(paths) + len(ckpts)))
            paths += ckpts
    rng = np.random.default_rng(seed)
    space = Space(update_gram([load_factors(p) for p in paths]))

    task_mean = {t: space.point(idx) for t, idx in task_idx.items()}
    out: dict = {"checkpoints_per_task": checkpoints_per_task, "reference": reference, "targets": {}}
    for h, train in targets.items():
        train = list(train)
        m = np.mean([task_mean[t] for t in train], axis=0)
        o_h = task_mean[h] - m
        offsets = [task_mean[t] - m for t in train]
        spread = np.mean([space.dot(space.point(i) - task_mean[h], space.point(i) - task_mean[h])
                          for i in task_idx[h]])
        pair_cos = [space.cos(offsets[i], offsets[j]) for i in range(len(train)) for j in range(i + 1, len(train))]
        row = {
            "training_tasks": train,
            "update_norm": space.norm(task_mean[h]),
            "train_mean_norm": space.norm(m),
            "cos_update_train_mean": space.cos(task_mean[h], m),
            "offset_rel_norm": space.norm(o_h) / space.norm(task_mean[h]),
            "span_fraction": space.span_fraction(o_h, offsets),
            # m + P(o_h) as affine weights over the training tasks' updates: sum_t c_t (u_t - m) + m
            "span_weights": _affine_weights(train, space.projection(o_h, offsets)),
            "checkpoint_spread_rel": float(spread / space.dot(o_h, o_h)),
            "train_offsets_mean_pairwise_cos": float(np.mean(pair_cos)) if pair_cos else float("nan"),
            "generated": {},
        }
        curve = []
        for k in range(1, len(train) + 1):
            subsets = {tuple(sorted(rng.choice(len(train), k, replace=False))) for _ in range(subsets_per_size)}
            fr = [space.span_fraction(o_h, [offsets[i] for i in sub]) for sub in subsets]
            curve.append({"k": k, "mean": float(np.mean(fr)), "min": float(np.min(fr)), "max": float(np.max(fr))})
        row["span_curve"] = curve
        points = {label: space.point(i) for (label, target), i in gen_idx.items() if target == h}
        for (label, t), idx in replica_idx.items():
            if t == h:
                points[f"replica:{label}"] = space.point(idx)
        for label, per_target in (combinations or {}).items():
            if h in per_target:
                unknown = sorted(set(per_target[h]) - set(task_mean))
                if unknown:
                    raise ValueError(f"combination '{label}' for '{h}' weights tasks outside the analysis: {unknown}")
                points[label] = sum(w * task_mean[t] for t, w in per_target[h].items())
        ref = points.get(reference)
        for label, g in points.items():
            d = g - m
            row["generated"][label] = {
                "cos_to_offset": space.cos(d, o_h),
                "step_rel_norm": space.norm(d) / space.norm(o_h),
                "move_from_train_mean_rel": space.norm(d) / space.norm(m),
                "step_span_fraction": space.span_fraction(d, offsets) if space.norm(d) > 0 else float("nan"),
                "rel_err": space.dot(g - task_mean[h], g - task_mean[h]) / space.dot(o_h, o_h),
            }
            if ref is not None and label != reference and space.norm(ref - m) > 0:
                # How much other prompts (or another sample) move the output, against the reference's step.
                row["generated"][label]["cos_to_reference_step"] = space.cos(d, ref - m)
                row["generated"][label]["diff_from_reference_rel"] = space.norm(g - ref) / space.norm(ref - m)
        out["targets"][h] = row
    all_mean = np.mean([task_mean[t] for t in tasks], axis=0)
    offs = {t: task_mean[t] - all_mean for t in tasks}
    out["tasks"] = tasks
    if return_gram:
        pts = np.stack([task_mean[t] for t in tasks])
        out["task_gram"] = pts @ space.gram @ pts.T
    out["offset_cosine"] = [[space.cos(offs[a], offs[b]) for b in tasks] for a in tasks]
    out["update_cosine"] = [[space.cos(task_mean[a], task_mean[b]) for b in tasks] for a in tasks]
    return out


def experiment_targets(config) -> dict[str, list[str]]:
    """Held-out task -> training tasks, exactly as :mod:`dnd_jax.experiment` splits them."""
    from dnd_jax import plan

    targets = list(config.experiment.holdouts) + list(config.experiment.cross_domain)
    return {t: plan.target_training_tasks(config, t) for t in targets}


def find_generated(roots: Mapping[str, Path], targets: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``{label: {target: root/dnd_<target>}}`` for the adapter folders that exist."""
    found: dict[str, dict[str, Path]] = {}
    for label, root in roots.items():
        for t in targets:
            path = Path(root) / f"dnd_{t}"
            if (path / zoo.ADAPTER_WEIGHTS).is_file():
                found.setdefault(label, {})[t] = path
    return found
