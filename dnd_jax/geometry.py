"""Geometry of LoRA weight updates: how task-specific is each adapter, and did DnD find that part?

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
* with a replica zoo (the same recipe, another seed: another LoRA init and data order), the same
  numbers for the replica's update of h: how reproducible ``o_h`` is at all, i.e. the best any
  prompt-conditioned generator could hope to match.

    python -m dnd_jax.geometry --config configs/smollm2_commonsense.py --workdir workdir/smollm2 \
        --out docs/results/geometry
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dnd_jax import assets, zoo
from dnd_jax.errors import InputError, MissingError

A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
Factors = dict[str, tuple[np.ndarray, np.ndarray]]  # module -> (A (r, in), s * B (out, r))


def lora_factors(state_dict: Mapping[str, np.ndarray], scaling: float) -> Factors:
    """``{module: (A, scaling * B)}`` from a peft LoRA state dict (lora_A/lora_B keys only)."""
    out: Factors = {}
    for key, a in state_dict.items():
        if key.endswith(A_SUFFIX):
            module = key[: -len(A_SUFFIX)]
            b_key = module + B_SUFFIX
            if b_key not in state_dict:
                raise InputError(f"{key} has no matching {b_key}")
            b = np.asarray(state_dict[b_key], np.float32)
            a = np.asarray(a, np.float32)
            if b.shape[1] != a.shape[0]:
                raise InputError(f"{module}: lora_B {b.shape} does not match lora_A {a.shape}")
            out[module] = (a, scaling * b)
    if not out:
        raise InputError("no lora_A/lora_B pairs in the state dict")
    return out


def load_factors(adapter_dir: str | Path) -> Factors:
    """Factors of a peft adapter folder or zoo checkpoint (safetensors only)."""
    from dnd_jax.baselines import lora_scaling
    from dnd_jax.weights import peft_io

    state_dict, config = peft_io.read_adapter(adapter_dir)
    return lora_factors(state_dict, lora_scaling(config))


def update_gram(adapters: Sequence[Factors]) -> np.ndarray:
    """``G[i, j] = <dW_i, dW_j>_F`` summed over modules (float64), from the factors alone."""
    if not adapters:
        raise ValueError("update_gram needs at least one adapter")
    modules = sorted(adapters[0])
    for i, ad in enumerate(adapters):
        if sorted(ad) != modules:
            raise InputError(f"adapter {i} targets other modules than adapter 0")
    n = len(adapters)
    gram = np.zeros((n, n), np.float64)
    for module in modules:
        # Cast first: the products are accumulated in float64 (nearly orthogonal updates need it).
        a_all = np.concatenate([ad[module][0] for ad in adapters], axis=0).astype(np.float64)  # (R, in)
        b_all = np.concatenate([ad[module][1] for ad in adapters], axis=1).astype(np.float64)  # (out, R)
        starts = np.cumsum([0] + [ad[module][0].shape[0] for ad in adapters])[:-1]
        m = (a_all @ a_all.T) * (b_all.T @ b_all)
        gram += np.add.reduceat(np.add.reduceat(m, starts, axis=0), starts, axis=1)
    return gram


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

    def span_fraction(self, x: np.ndarray, basis: Sequence[np.ndarray]) -> float:
        """Share of ``|x|^2`` in ``span(basis)`` (least squares in the Gram metric)."""
        b = np.stack(basis, axis=1)  # (n, k)
        bgb, bgx = b.T @ self.gram @ b, b.T @ self.gram @ x
        w = np.linalg.lstsq(bgb, bgx, rcond=1e-10)[0]
        xx = self.dot(x, x)
        return float(bgx @ w / xx) if xx > 0 else float("nan")


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
            subsets_per_size: int = 20, seed: int = 0, reference: str = "dnd") -> dict:
    """Per-target geometry (see the module docstring) and the tasks' offset cosines.

    ``targets`` maps each held-out task to its training tasks; ``generated[label][target]`` is an
    adapter folder generated for ``target`` (e.g. ``{"dnd": {"arc_c": W/adapters/dnd_arc_c}}``);
    targets whose task is also in a replica zoo (``replicas[label]``: same recipe, another seed) get
    an entry ``replica:<label>``. ``span_curve`` is the share of ``|o_h|^2`` in the span of k random
    training offsets, k = 1..|T| (``subsets_per_size`` subsets each): how reachability grows with the
    number of training tasks. Every other adapter of a target is also compared with the ``reference``
    label's (``cos_to_reference_step``, ``diff_from_reference_rel`` = |g - g_ref| / |g_ref - m|): how
    far prompts of another task, or another sample of the same task's, move the generator's output.
    """
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
    out["offset_cosine"] = [[space.cos(offs[a], offs[b]) for b in tasks] for a in tasks]
    out["update_cosine"] = [[space.cos(task_mean[a], task_mean[b]) for b in tasks] for a in tasks]
    return out


def markdown(result: dict) -> str:
    lines = ["### Weight-update geometry (dW = s B A, Frobenius over all modules)\n",
             f"Task means over {result['checkpoints_per_task']} zoo checkpoints each; m = mean of the training "
             "tasks' updates; o = held-out update - m.\n",
             "| target | |o|/|dW| | cos(dW, m) | share of |o|^2 in span of training offsets | checkpoint spread / |o|^2 "
             "| mean cos between training offsets |",
             "|---|---|---|---|---|---|"]
    for h, r in result["targets"].items():
        lines.append(f"| {h} | {r['offset_rel_norm']:.3f} | {r['cos_update_train_mean']:.3f} | {r['span_fraction']:.3f} "
                     f"| {r['checkpoint_spread_rel']:.3f} | {r['train_offsets_mean_pairwise_cos']:+.3f} |")
    kmax = max(len(r["span_curve"]) for r in result["targets"].values())
    lines += ["", "Share of the held-out offset in the span of k training offsets (mean over random subsets):\n",
              "| target | " + " | ".join(f"k={k}" for k in range(1, kmax + 1)) + " |", "|---" * (kmax + 1) + "|"]
    for h, r in result["targets"].items():
        cells = [f"{c['mean']:.3f}" for c in r["span_curve"]] + [""] * (kmax - len(r["span_curve"]))
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    gen_rows = [(h, label, g) for h, r in result["targets"].items() for label, g in r["generated"].items()]
    if gen_rows:
        lines += ["", "Adapters g for the held-out task (step d = g - m): generated ones, and the task's own LoRA "
                  "from replica zoo runs (same recipe, another seed) where there are some. "
                  "rel_err = |g - dW_target|^2 / |m - dW_target|^2 (1 = as far as the training mean).\n",
                  "| target | adapter | cos(d, o) | |d|/|o| | |d|/|m| | share of |d|^2 in training span | rel_err |",
                  "|---|---|---|---|---|---|---|"]
        for h, label, g in gen_rows:
            lines.append(f"| {h} | {label} | {g['cos_to_offset']:+.3f} | {g['step_rel_norm']:.3f} "
                         f"| {g['move_from_train_mean_rel']:.3f} | {g['step_span_fraction']:.3f} | {g['rel_err']:.3f} |")
        ref_rows = [(h, label, g) for h, label, g in gen_rows if "cos_to_reference_step" in g]
        if ref_rows:
            lines += ["", f"Against the reference adapter r (label `{result['reference']}`): "
                      "does the output depend on which prompts go in?\n",
                      "| target | adapter | cos(d, d_r) | |g - r| / |d_r| |", "|---|---|---|---|"]
            lines += [f"| {h} | {label} | {g['cos_to_reference_step']:+.3f} | {g['diff_from_reference_rel']:.3f} |"
                      for h, label, g in ref_rows]
    lines += ["", "Cosine between task offsets (each task's update minus the mean of all tasks'):\n",
              "| | " + " | ".join(result["tasks"]) + " |", "|---" * (len(result["tasks"]) + 1) + "|"]
    for t, row in zip(result["tasks"], result["offset_cosine"], strict=True):
        lines.append(f"| {t} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    labels = sorted({label for r in result["targets"].values() for label in r["generated"]},
                    key=lambda x: (x != result["reference"], x))
    fig, axes = plt.subplots(1, 4 if labels else 3, figsize=(23 if labels else 17, 4.5))
    for ax, key, title in ((axes[0], "update_cosine", "cos between task updates dW"),
                           (axes[1], "offset_cosine", "cos between task offsets (dW - mean)")):
        mat = np.array(result[key])
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(title)
    fig.colorbar(im, ax=axes[:2], shrink=0.8)
    ax = axes[2]
    for h, row in result["targets"].items():
        ks = [c["k"] for c in row["span_curve"]]
        ax.plot(ks, [c["mean"] for c in row["span_curve"]], marker="o", label=h)
    ax.set_xlabel("number of training tasks k")
    ax.set_ylabel("share of held-out offset in their span")
    ax.set_title("reachable part of the held-out offset")
    ax.set_ylim(0, None)
    ax.legend(fontsize=7)
    if labels:  # how well each adapter's step points at the held-out offset
        ax = axes[3]
        names = list(result["targets"])
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            vals = [result["targets"][h]["generated"].get(label, {}).get("cos_to_offset", np.nan) for h in names]
            ax.bar(np.arange(len(names)) + (j - (len(labels) - 1) / 2) * width, vals, width, label=label)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_ylabel("cos(g - m, held-out offset)")
        ax.set_title("does the adapter step toward the held-out task?")
        ax.legend(fontsize=7)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def write(result: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assets.write_json_atomic(out_dir / "geometry.json", result)
    tmp = out_dir / "geometry.md.tmp"
    tmp.write_text(markdown(result))
    tmp.replace(out_dir / "geometry.md")
    plot(result, out_dir / "geometry.png")


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


def define_flags() -> dict:
    from absl import flags

    from dnd_jax import cli

    return {
        "config": cli.config_flag(),
        "workdir": flags.DEFINE_string("workdir", None, "Experiment workdir (holds zoo/ and adapters/)."),
        "out": flags.DEFINE_string("out", None, "Folder for geometry.json/.md/.png (default <workdir>/geometry)."),
        "generated": flags.DEFINE_list("generated", [], "Extra label=folder holding dnd_<target> adapters."),
        "checkpoints_per_task": flags.DEFINE_integer("checkpoints_per_task", 4, "Zoo checkpoints averaged per task."),
        "replica": flags.DEFINE_list("replica", [], "label=W2: another zoo of the same recipe with another seed."),
    }


def _labelled_paths(items: Sequence[str], flag: str) -> dict[str, Path]:
    """``["a=dir1", ...]`` -> ``{"a": Path("dir1"), ...}``; a malformed item names the flag."""
    out = {}
    for item in items:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise InputError(f"--{flag} expects label=folder, got '{item}'")
        out[label] = Path(folder)
    return out


def main(fl: dict) -> None:
    from dnd_jax import plan

    config, workdir = fl["config"].value, Path(fl["workdir"].value)
    roots = {"dnd": plan.output_root(config, workdir) / "adapters"}  # a variant's own adapters
    roots.update(_labelled_paths(fl["generated"].value, "generated"))
    replicas = _labelled_paths(fl["replica"].value, "replica")
    targets = experiment_targets(config)
    result = analyse(workdir, targets, find_generated(roots, list(targets)), fl["checkpoints_per_task"].value,
                     replicas)
    out = Path(fl["out"].value) if fl["out"].value else workdir / "geometry"
    write(result, out)
    print(markdown(result))


def cli_main() -> None:
    """Console script ``dnd-geometry`` (= ``python -m dnd_jax.geometry``)."""
    from dnd_jax import cli

    cli.run(define_flags, main, required=("config", "workdir"))


if __name__ == "__main__":
    cli_main()
