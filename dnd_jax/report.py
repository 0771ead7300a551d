"""Reporting: every results table, figure and report file the verbs write, in one module.

* shared: metric display (:data:`METRIC_SCALE`, :data:`METRIC_TITLE`), :func:`pyplot` (headless
  matplotlib), :func:`save_figure` (atomic PNG; text and JSON files: ``assets.write_text_atomic``,
  ``assets.write_json_atomic``), :func:`drop_vectors`;
* one target's evaluation (``evaluate``): :func:`target_markdown`, :func:`target_plot`,
  :func:`write_target_report` -> ``results.json``, ``results.md``, ``results.png``;
* the experiment (``experiment``): one row per target task, every system with its 95% CI, for each
  metric (:func:`markdown`, :func:`figure`, :func:`write`); input is ``results["targets"][T]["systems"]
  [name][metric] = {"acc", "ci", "n", ...}``;
* weight-update geometry (``geometry``): :func:`geometry_markdown`, :func:`geometry_plot`,
  :func:`write_geometry`.

(The task-scaling curve's tables and figure sit with its protocol in :mod:`dnd_jax.scaling_curve` and
use the shared helpers here.)

Every file is written to a temporary name and renamed, so a reader never sees half a report.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from dnd_jax import assets

# --- shared ------------------------------------------------------------------------------------------

# bpb keeps *minus* bits per byte as its per-example "correct" vector, so higher is better for every metric
# (means, best-of, paired p-values); displays multiply by this scale (percent for accuracies).
METRIC_SCALE = {"bpb": -1.0}
METRIC_TITLE = {"cloze": "accuracy (%)", "mc": "accuracy (%)", "bpb": "bits per byte (lower is better)",
                "exact_match": "exact match (%)", "pass@1": "pass@1 (%)"}


def metric_scale(metric: str) -> float:
    return METRIC_SCALE.get(metric, 100.0)


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """Save ``fig`` as ``path`` (PNG) atomically and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", **savefig_kwargs)
    finally:
        pyplot().close(fig)
    assets.write_bytes_atomic(Path(path), buf.getvalue())  # a failed save leaves the old figure


def drop_vectors(obj, keys: Sequence[str] = ("correct",)):
    """``obj`` without its per-example vectors (dict entries named ``keys``, at any depth): they stay in
    the eval cache and the per-target reports, not in summaries."""
    if isinstance(obj, dict):
        return {k: drop_vectors(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [drop_vectors(v, keys) for v in obj]
    return obj


# --- one target's evaluation report (dnd_jax.evaluate) ------------------------------------------------


def _fmt_ci(ci: Sequence[float], scale: float = 100.0) -> str:
    lo, hi = sorted((scale * ci[0], scale * ci[1]))
    digits = 1 if abs(scale) >= 10 else 3
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt(x: float, scale: float = 100.0, sign: bool = False) -> str:
    digits = 1 if abs(scale) >= 10 else 3
    return f"{scale * x:{'+' if sign else ''}.{digits}f}"


def target_markdown(report: dict) -> str:
    """Tables: per metric, each system's accuracy, CI, n, valid rate and difference to base."""
    lines = [f"# {report['task']} ({report['split']}): base {report['base_model']['name']}", ""]
    info = {s["name"]: s for s in report["systems"]}
    for m in report["metrics"]:
        res = report["results"][m]
        vs_base = {c["a"]: c for c in report["comparisons"] if c["metric"] == m and c["b"] == "base"}
        desc = {"cloze": "acc_norm (log-likelihood per character)", "mc": "generated [label] accuracy"}.get(
            m, METRIC_TITLE.get(m, m))
        sc = metric_scale(m)
        lines += [f"## {m}: {desc}", "",
                  f"| system | {METRIC_TITLE.get(m, m)} | 95% CI | n | valid (%) | vs base | p(diff<=0) | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in res.items():
            valid = f"{100 * r['valid_rate']:.1f}" if "valid_rate" in r else ""
            c = vs_base.get(name)
            diff = f"{_fmt(c['diff'], sc, True)} {_fmt_ci(c['ci'], sc)}" if c else ""
            p = f"{c['p']:.3f}" if c else ""
            sysinfo = info.get(name, {}).get("info", {})
            note = []
            if "source_task" in sysinfo and info[name]["kind"] != "training_lora":
                note.append(f"from {sysinfo['source_task']}")
            if sysinfo.get("train_wall_time_s") is not None:
                note.append(f"trained {sysinfo['train_wall_time_s']:.0f} s")
            if "acc_unnorm" in r:
                note.append(f"acc {100 * r['acc_unnorm']:.1f}")
            lines.append(f"| {name} | {_fmt(r['accuracy'], sc)} | {_fmt_ci(r['ci'], sc)} | {r['n']} | {valid} | "
                         f"{diff} | {p} | {'; '.join(note)} |")
        lines.append("")
    others = [c for c in report["comparisons"] if c["b"] != "base"]
    if others:
        lines += ["## adapters vs baselines (paired bootstrap)", "",
                  "| metric | adapter | baseline | diff (pp; bpb: bits) | 95% CI | p(diff<=0) | n |",
                  "|---|---|---|---|---|---|---|"]
        for c in others:
            sc = metric_scale(c["metric"])
            lines.append(f"| {c['metric']} | {c['a']} | {c['b']} | {_fmt(c['diff'], sc, True)} | {_fmt_ci(c['ci'], sc)} | "
                         f"{c['p']:.3f} | {c['n']} |")
        lines.append("")
    if "bpb" in report["metrics"]:
        lines.append("bpb: bits per byte of the gold solution; p(diff<=0) is computed on minus bpb, so small p "
                     "means the adapter's bpb is lower (better).")
    if any("oracle" in report["results"][m] for m in report["metrics"]):
        lines.append("oracle = a LoRA trained on the task's own labeled train split (an upper reference).")
    return "\n".join(lines) + "\n"


def target_plot(report: dict, path: str | Path) -> None:
    """Bar chart of accuracy with 95% CI error bars, one panel per metric."""
    plt = pyplot()
    import numpy as np

    metrics = report["metrics"]
    width = max(6.0, 0.6 * max(len(report["results"][m]) for m in metrics) + 2)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.5), squeeze=False)
    kinds = {s["name"]: s["kind"] for s in report["systems"]}
    colors = {"base": "#888888", "training_lora": "#9ecae1", "merged": "#3182bd", "nearest": "#6baed6",
              "oracle": "#31a354", "adapter": "#e6550d"}
    for ax, m in zip(axes[0], metrics, strict=True):
        res = report["results"][m]
        names = list(res)
        sc = metric_scale(m)
        acc = np.array([sc * res[n]["accuracy"] for n in names])
        ends = np.sort(np.array([[sc * res[n]["ci"][0], sc * res[n]["ci"][1]] for n in names]), axis=1)
        err = np.nan_to_num(np.stack([acc - ends[:, 0], ends[:, 1] - acc]), nan=0.0)
        ax.bar(range(len(names)), acc, yerr=err, capsize=3,
               color=[colors.get(kinds.get(n, ""), "#756bb1") for n in names])
        if "base" in res:
            ax.axhline(sc * res["base"]["accuracy"], color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(METRIC_TITLE.get(m, m))
        if sc == 100.0:
            ax.set_ylim(0, 100)
        n = max((res[x]["n"] for x in names), default=0)
        ax.set_title(f"{report['task']} — {m} (n={n}, 95% CI)")
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)


def write_target_report(report: dict, out_dir: str | Path) -> Path:
    """results.json (everything, per-example vectors included), results.md, results.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assets.write_json_atomic(out_dir / "results.json", report)
    assets.write_text_atomic(out_dir / "results.md", target_markdown(report))
    target_plot(report, out_dir / "results.png")
    return out_dir


# --- experiment report (dnd_jax.experiment) -------------------------------------------------------

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
    s = metric_scale(metric)
    return s, (1 if abs(s) >= 10 else 3)


def _cell(entry: dict | None, metric: str = "cloze") -> str:
    if not entry or entry.get("acc") is None:
        return "–"
    s, d = _scale(metric)
    ci = entry.get("ci")
    lo, hi = sorted((s * ci[0], s * ci[1])) if ci else (0, 0)
    return f"{s * entry['acc']:.{d}f}" + (f" [{lo:.{d}f}, {hi:.{d}f}]" if ci else "")


def headline_markdown(results: dict, names: dict[str, str], metrics: Sequence[str] = ("cloze", "mc")) -> str:
    """The README's compact results table: one row per (target, metric), metric-major, in ``names``'s
    order (target -> display name), point estimates only, DnD in bold; a system column appears when
    any target has it."""
    targets = {t: results["targets"][t]["systems"] for t in names if t in results["targets"]}
    columns = [(k, title) for k, title in COLUMNS
               if any(isinstance((sy.get(k) or {}).get(m), dict) for sy in targets.values() for m in metrics)]
    lines = ["| held out | metric | " + " | ".join(f"**{t}**" if k == "dnd" else t for k, t in columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for m in metrics:
        for t, systems in targets.items():
            if not any(isinstance(v.get(m), dict) for v in systems.values()):
                continue
            cells = []
            for k, _ in columns:
                entry = (systems.get(k) or {}).get(m)
                cell = _cell({"acc": entry.get("acc")} if entry else None, m)
                cells.append(f"**{cell}**" if k == "dnd" and cell != "–" else cell)
            lines.append(f"| {names[t]} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _diff_ci(d: dict, metric: str) -> tuple[str, str]:
    """A paired difference ``{diff, ci}`` on the metric's display scale: ("+1.5", "[+0.0, +3.5]").

    ``+ 0.0`` turns the -0.0 that the bpb scale (-1) makes of a zero difference into +0.0."""
    s, k = _scale(metric)
    lo, hi = sorted((s * d["ci"][0] + 0.0, s * d["ci"][1] + 0.0))
    return f"{s * d['diff'] + 0.0:+.{k}f}", f"[{lo:+.{k}f}, {hi:+.{k}f}]"


def _foreign_generators_markdown(results: dict) -> list[str]:
    """Cross-domain: another experiment's generator (``foreign``) on this domain's held-out targets, paired
    with this domain's own DnD adapter and the base model on the same questions."""
    rows, skipped = [], []
    for target, res in results["targets"].items():
        for name, f in (res.get("foreign") or {}).items():
            if "skipped" in f:
                skipped.append(f"- {target}, generator '{name}': not run ({f['skipped']})")
                continue
            other = f"dnd_from_{name}"
            for metric, entry in (f["systems"].get(other) or {}).items():
                pairs = []
                for ref in ("dnd", "base"):
                    d = f.get("paired", {}).get(f"{other} - {ref}", {}).get(metric)
                    pairs.append(" ".join(_diff_ci(d, metric)) if d else "–")
                rows.append(f"| {target} | {name} | {metric} | {_cell(f['systems'].get('base', {}).get(metric), metric)} | "
                            f"{_cell(f['systems'].get('dnd', {}).get(metric), metric)} | {_cell(entry, metric)} | "
                            + " | ".join(pairs) + " |")
    if not rows and not skipped:
        return []
    out = ["### Cross-domain: another domain's generator on these targets\n"]
    if rows:
        out += ["| target | generator | metric | base | this domain's DnD | other generator's DnD | "
                "other - this DnD | other - base |", "|---|---|---|---|---|---|---|---|", *rows, ""]
    return out + skipped + ([""] if skipped else [])


def _evaluation_only_markdown(results: dict) -> list[str]:
    """Evaluation-only targets (``experiment.also_evaluate``): whose generator made their DnD adapter, from
    which task's unscored prompts, and whose zoo LoRA is their oracle (their baselines are that task's)."""
    rows = [f"| {t} | {r['held_out']} | {r.get('conditions_from', '–')} | {r['held_out']} |"
            for t, r in results["targets"].items() if "held_out" in r]
    if not rows:
        return []
    return ["### Evaluation-only targets\n",
            "| target | generator (held-out task) | DnD conditioned on the unscored prompts of | oracle LoRA |",
            "|---|---|---|---|", *rows,
            "", "Conditioned on another task's prompts (the target has no unscored ones), the target's DnD adapter "
            "is that task's own.", ""]


def markdown(results: dict) -> str:
    lines = []
    metrics = sorted({m for t in results["targets"].values() for s in t["systems"].values() for m in s
                      if isinstance(s.get(m), dict)})
    for metric in metrics:
        what = "bits per byte of the gold solution (lower is better)" if metric == "bpb" else f"{metric} (%)"
        # only the targets scored by this metric, only the systems any of them has
        scored = {t: r["systems"] for t, r in results["targets"].items()
                  if any(isinstance(s.get(metric), dict) for s in r["systems"].values())}
        columns = [(k, title) for k, title in COLUMNS if any((s.get(k) or {}).get(metric) for s in scored.values())]
        lines.append(f"### {what} with 95% bootstrap CI\n")
        lines.append("| target | n | " + " | ".join(title for _, title in columns) + " |")
        lines.append("|---" * (len(columns) + 2) + "|")
        for target, systems in scored.items():
            n = (systems.get("dnd") or systems.get("base") or {}).get(metric, {}).get("n", "")
            row = [_cell((systems.get(key) or {}).get(metric), metric) for key, _ in columns]
            lines.append(f"| {target} | {n} | " + " | ".join(row) + " |")
        lines.append("")
    lines.append("\\* best training LoRA is chosen on the test set itself: an optimistic reference, not a method.\n")
    lines += _evaluation_only_markdown(results)
    lines += _foreign_generators_markdown(results)
    speed = {t: r["speed"] for t, r in results["targets"].items() if "speed" in r}
    if speed:
        lines.append("### Speed: generating the adapter vs training the oracle LoRA\n")
        with_cpu = any("speedup_cpu" in s for s in speed.values())
        head = "| target | generate wall (s) | oracle LoRA training (s) | ratio |"
        lines.append(head + (" generate CPU (s) | oracle LoRA CPU (s) | CPU ratio |" if with_cpu else ""))
        lines.append("|---|---|---|---|" + ("---|---|---|" if with_cpu else ""))
        for t, s in speed.items():
            row = f"| {t} | {s['generate_wall_s']:.2f} | {s['oracle_train_wall_s']:.0f} | {s['speedup']:.0f}x |"
            if with_cpu:
                row += (f" {s['generate_cpu_s']:.2f} | {s['oracle_train_cpu_s']:.0f} | {s['speedup_cpu']:.0f}x |"
                        if "speedup_cpu" in s else " – | – | – |")
            lines.append(row)
        if with_cpu:
            lines.append("\nCPU time is each process's own (every thread), so other jobs on the same cores do not "
                         "inflate it the way they inflate wall time.")
        if not all("speedup_cpu" in s for s in speed.values()):
            lines.append("\nWall times only" + (" for the targets marked –" if with_cpu else "")
                         + ": CPU time was not recorded for both the generation and the oracle LoRA's training "
                         "(zoos and runs from before it was), and other jobs sharing the cores while either side "
                         "ran inflate its wall time, so a ratio is only as comparable as the loads of its two "
                         "measurements.")
        lines.append("")
    paired = {t: r.get("paired", {}) for t, r in results["targets"].items()}
    if any(paired.values()):
        lines.append("### Paired bootstrap: DnD minus baseline (points; bpb in bits)\n")
        lines.append("| target | comparison | metric | diff | 95% CI | P(DnD not better) |")
        lines.append("|---|---|---|---|---|---|")
        for t, comps in paired.items():
            for name, per_metric in comps.items():
                for metric, d in per_metric.items():
                    diff, ci = _diff_ci(d, metric)
                    lines.append(f"| {t} | {name} | {metric} | {diff} | {ci} | {d['p_le_0']:.3f} |")
        if any("bpb" in per_metric for comps in paired.values() for per_metric in comps.values()):
            lines.append("\nbpb: DnD's bits per byte minus the baseline's, so a negative difference is DnD better; "
                         "P(DnD not better) is the bootstrap share of resamples where DnD is not better, on every metric.")
    return "\n".join(lines) + "\n"


METRIC_ORDER = ("bpb", "exact_match", "pass@1", "cloze", "mc")  # a generative domain's primary metric first


def figure_metrics(results: dict) -> list[str]:
    """The metrics the experiment figure draws, one panel each: every metric some target was scored on."""
    present = {m for t in results["targets"].values() for s in t["systems"].values() for m in (s or {})}
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


def figure(results: dict, path: Path, metrics: Sequence[str] | None = None) -> None:
    """One panel per metric: the targets scored on it, every system's score with its 95% CI."""
    plt = pyplot()
    import numpy as np

    metrics = list(metrics) if metrics is not None else figure_metrics(results)
    panels = []
    for metric in metrics:
        targets = [t for t in results["targets"] if any(metric in (s or {}) for s in
                                                        results["targets"][t]["systems"].values())]
        keys = [(k, title) for k, title in COLUMNS
                if any(metric in (results["targets"][t]["systems"].get(k) or {}) for t in targets)]
        panels.append((metric, targets, keys))
    widths = [max(4.0, 1.6 * len(t) * len(k) / 4) for _, t, k in panels]
    if sum(widths) <= 24:  # side by side
        fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1, 4.2), squeeze=False,
                                 gridspec_kw={"width_ratios": widths})
        axes = axes[0]
    else:  # one above the other (many targets)
        fig, axes = plt.subplots(len(panels), 1, figsize=(max(widths), 4.2 * len(panels)), squeeze=False)
        axes = axes[:, 0]
    colors = dict(zip([k for k, _ in COLUMNS], plt.get_cmap("tab10").colors, strict=False))  # same in every panel
    for ax, (metric, targets, keys) in zip(axes, panels, strict=True):
        width = 0.8 / max(1, len(keys))
        s = _scale(metric)[0]
        bottoms = []  # the lower CI end of every bar drawn
        for j, (key, title) in enumerate(keys):
            accs, lo, hi = [], [], []
            for t in targets:
                e = (results["targets"][t]["systems"].get(key) or {}).get(metric) or {}
                a = e.get("acc", np.nan)
                ci = e.get("ci") or (a, a)
                ends = sorted((s * ci[0], s * ci[1]))
                accs.append(s * a)
                lo.append(s * a - ends[0])
                hi.append(ends[1] - s * a)
                bottoms.append(ends[0])
            x = np.arange(len(targets)) + (j - (len(keys) - 1) / 2) * width
            ax.bar(x, accs, width, yerr=[lo, hi], capsize=2, label=title, color=colors[key])
        ax.set_xticks(np.arange(len(targets)), targets, rotation=20 if len(targets) > 3 else 0, fontsize=8)
        ax.set_ylabel(METRIC_TITLE.get(metric, metric))
        ax.set_title(f"{metric} (95% CI)")
        if metric == "bpb" and not np.isnan(bottoms).all():  # differences of hundredths: start near the data
            ax.set_ylim(0.9 * np.nanmin(bottoms), None)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Held-out tasks: DnD vs baselines")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write(results: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slim = slim_results(results)
    assets.write_json_atomic(out_dir / "results.json", slim)
    assets.write_text_atomic(out_dir / "results.md", markdown(slim))
    metrics = figure_metrics(slim)
    if metrics:
        figure(slim, out_dir / "results.png", metrics)


def slim_results(results: dict) -> dict:
    return {**results, "targets": {t: _drop_vectors(r) for t, r in results["targets"].items()}}


slim = slim_results


def _drop_vectors(obj):
    return drop_vectors(obj, ("correct", "per_example"))


# --- weight-update geometry report (dnd_jax.geometry) ----------------------------------------------


def geometry_markdown(result: dict) -> str:
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


def geometry_plot(result: dict, path: Path) -> None:
    plt = pyplot()
    import numpy as np

    tasks = result["tasks"]
    labels = sorted({label for r in result["targets"].values() for label in r["generated"]},
                    key=lambda x: (x != result["reference"], x))
    fig, axes = plt.subplots(1, 4 if labels else 3, figsize=(23 if labels else 17, 4.5))
    for ax, key, title in ((axes[0], "update_cosine", "cos between task updates dW"),
                           (axes[1], "offset_cosine", "cos between task offsets (dW - mean)")):
        mat = np.array(result[key])
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        # the second heatmap has the first's rows: its labels would overprint the first's cells
        ax.set_yticks(range(len(tasks)), tasks if key == "update_cosine" else [])
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
    save_figure(fig, path, dpi=120, bbox_inches="tight")


def write_geometry(result: dict, out_dir: str | Path) -> None:
    """geometry.json, geometry.md, geometry.png (:mod:`dnd_jax.weight_space`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assets.write_json_atomic(out_dir / "geometry.json", result)
    assets.write_text_atomic(out_dir / "geometry.md", geometry_markdown(result))
    geometry_plot(result, out_dir / "geometry.png")
