"""Experiment report: one row per target task, every system with its 95% CI, for both metrics.

Input is the dict built by :mod:`dnd_jax.experiment`: ``results["targets"][T]["systems"][name]
[metric] = {"acc", "ci", "n", ...}``. Writes ``results.json``, ``results.md`` and ``results.png``.
"""
from __future__ import annotations

from pathlib import Path

from dnd_jax import assets

COLUMNS = (
    ("base", "base"),
    ("training_loras_mean", "train-LoRA mean"),
    ("best_training_lora", "best train-LoRA*"),
    ("merged", "merged"),
    ("simmerge", "sim-merge"),
    ("nearest", "nearest"),
    ("dnd", "DnD"),
    ("oracle", "oracle"),
)


def _scale(metric: str) -> tuple[float, int]:
    """Display scale and digits: accuracies in percent; bpb (stored as minus bits per byte) as bits."""
    from dnd_jax.evaluate import metric_scale

    s = metric_scale(metric)
    return s, (1 if abs(s) >= 10 else 3)


def _cell(entry: dict | None, metric: str = "cloze") -> str:
    if not entry or entry.get("acc") is None:
        return "–"
    s, d = _scale(metric)
    ci = entry.get("ci")
    lo, hi = sorted((s * ci[0], s * ci[1])) if ci else (0, 0)
    return f"{s * entry['acc']:.{d}f}" + (f" [{lo:.{d}f}, {hi:.{d}f}]" if ci else "")


def markdown(results: dict) -> str:
    lines = []
    metrics = sorted({m for t in results["targets"].values() for s in t["systems"].values() for m in s
                      if isinstance(s.get(m), dict)})
    for metric in metrics:
        what = "bits per byte of the gold solution (lower is better)" if metric == "bpb" else f"{metric} (%)"
        lines.append(f"### {what} with 95% bootstrap CI\n")
        lines.append("| target | n | " + " | ".join(title for _, title in COLUMNS) + " |")
        lines.append("|---" * (len(COLUMNS) + 2) + "|")
        for target, res in results["targets"].items():
            systems = res["systems"]
            n = (systems.get("dnd") or systems.get("base") or {}).get(metric, {}).get("n", "")
            row = [_cell((systems.get(key) or {}).get(metric), metric) for key, _ in COLUMNS]
            lines.append(f"| {target} | {n} | " + " | ".join(row) + " |")
        lines.append("")
    lines.append("\\* best training LoRA is chosen on the test set itself: an optimistic reference, not a method.\n")
    speed = {t: r["speed"] for t, r in results["targets"].items() if "speed" in r}
    if speed:
        lines.append("### Speed: generating the adapter vs training the oracle LoRA\n")
        lines.append("| target | generate wall (s) | oracle LoRA training (s) | ratio |")
        lines.append("|---|---|---|---|")
        for t, s in speed.items():
            lines.append(f"| {t} | {s['generate_wall_s']:.2f} | {s['oracle_train_wall_s']:.0f} | {s['speedup']:.0f}x |")
        lines.append("")
    paired = {t: r.get("paired", {}) for t, r in results["targets"].items()}
    if any(paired.values()):
        lines.append("### Paired bootstrap: DnD minus baseline (points)\n")
        lines.append("| target | comparison | metric | diff | 95% CI | P(diff <= 0) |")
        lines.append("|---|---|---|---|---|---|")
        for t, comps in paired.items():
            for name, per_metric in comps.items():
                for metric, d in per_metric.items():
                    s, k = _scale(metric)
                    lo, hi = sorted((s * d["ci"][0], s * d["ci"][1]))
                    lines.append(f"| {t} | {name} | {metric} | {s * d['diff']:+.{k}f} | "
                                 f"[{lo:+.{k}f}, {hi:+.{k}f}] | {d['p_le_0']:.3f} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path, metric: str = "cloze") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    targets = list(results["targets"])
    keys = [(k, t) for k, t in COLUMNS if any(results["targets"][x]["systems"].get(k) for x in targets)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(targets) * len(keys) / 4), 4))
    width = 0.8 / max(1, len(keys))
    for j, (key, title) in enumerate(keys):
        accs, lo, hi = [], [], []
        for t in targets:
            e = (results["targets"][t]["systems"].get(key) or {}).get(metric) or {}
            a = e.get("acc", np.nan)
            ci = e.get("ci") or (a, a)
            s = _scale(metric)[0]
            ends = sorted((s * ci[0], s * ci[1]))
            accs.append(s * a)
            lo.append(s * a - ends[0])
            hi.append(ends[1] - s * a)
        x = np.arange(len(targets)) + (j - (len(keys) - 1) / 2) * width
        ax.bar(x, accs, width, yerr=[lo, hi], capsize=2, label=title)
    ax.set_xticks(np.arange(len(targets)), targets)
    ax.set_ylabel("bits per byte (lower is better)" if metric == "bpb" else f"{metric} accuracy (%)")
    ax.set_title(f"Held-out tasks: DnD vs baselines ({metric}, 95% CI)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write(results: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slim = slim_results(results)
    assets.write_json_atomic(out_dir / "results.json", slim)
    md = markdown(slim)
    tmp = out_dir / ".results.md.tmp"
    tmp.write_text(md)
    tmp.replace(out_dir / "results.md")
    if slim["targets"]:
        present = {m for t in slim["targets"].values() for s in t["systems"].values() for m in s}
        figure(slim, out_dir / "results.png", "cloze" if "cloze" in present or not present else sorted(present)[0])


def slim_results(results: dict) -> dict:
    return {**results, "targets": {t: _drop_vectors(r) for t, r in results["targets"].items()}}


slim = slim_results


def _drop_vectors(obj):
    """Per-example correctness vectors stay in the eval cache, not in the report."""
    if isinstance(obj, dict):
        return {k: _drop_vectors(v) for k, v in obj.items() if k not in ("correct", "per_example")}
    if isinstance(obj, list):
        return [_drop_vectors(v) for v in obj]
    return obj
