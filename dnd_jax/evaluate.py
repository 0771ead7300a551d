"""Evaluate adapters and baselines on a task: ``python -m dnd_jax.evaluate``.

    python -m dnd_jax.evaluate --config configs/tiny.py --workdir W --task piqa \\
        [--adapter [NAME=]DIR ...] [--baselines base,training_loras,merged,nearest,oracle] \\
        [--limit K] [--metrics cloze,mc] [--split test] [--out DIR]

Every (system, metric) gives an accuracy with its n and a 95% bootstrap CI over examples; results
are cached in ``W/eval_cache/``. Writes ``results.json``, ``results.md`` and ``results.png`` into
``--out`` (default ``W/eval/<task>/``). The logic: :mod:`dnd_jax.evaluation`; the report files:
:mod:`dnd_jax.report`.
"""
from __future__ import annotations

from absl import flags

from dnd_jax import cli

# The evaluation's former home: these names stay importable from here.
from dnd_jax.evaluation import (  # noqa: F401
    METRICS,
    adapter_hash,
    applicable_metrics,
    check_adapters_fit,
    evaluate_adapter,
    evaluate_adapter_metrics,
    evaluate_systems,
    evaluate_target,
    model_with_adapter,
    run,
    summarize,
)
from dnd_jax.report import metric_scale  # noqa: F401
from dnd_jax.report import target_markdown as markdown  # noqa: F401
from dnd_jax.report import target_plot as plot  # noqa: F401
from dnd_jax.report import write_target_report as write_reports  # noqa: F401


def define_flags() -> dict:
    """The CLI flags, defined only when run as a program: importing this module defines none, so it
    can share a process with the other entry points (which define --config, --task, ...)."""
    return {
        "config": cli.config_flag(),
        "workdir": flags.DEFINE_string("workdir", None, "Working directory (zoo in WORKDIR/zoo, cache in "
                                       "WORKDIR/eval_cache)."),
        "task": flags.DEFINE_string("task", None, "Task to evaluate on (the held-out task T)."),
        "adapter": flags.DEFINE_multi_string("adapter", [], "Adapter folder to evaluate, as DIR or NAME=DIR "
                                             "(repeatable)."),
        "baselines": flags.DEFINE_list("baselines", None, "Baselines (default: config.experiment.baselines); "
                                       "'' for none."),
        "limit": flags.DEFINE_integer("limit", None, "First K examples of the split (default: config.eval.limit; "
                                      "0 = all)."),
        "metrics": flags.DEFINE_list("metrics", None, "cloze, mc (choice tasks), bpb, exact_match, pass@1 "
                                     "(generative tasks) (default: config.eval.metrics)."),
        "split": flags.DEFINE_string("split", "test", "Task split to evaluate on."),
        "out": flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval/<task>)."),
        "nearest_prompts": flags.DEFINE_enum("nearest_prompts", "test", ["test", "zoo"],
                                             "T's prompts for 'nearest': its unlabeled eval prompts, or the zoo's "
                                             "prompts.jsonl."),
    }


def main(fl: dict) -> None:
    """Entry point: ``fl`` holds the flags from :func:`define_flags`."""
    baseline_names = fl["baselines"].value
    run(fl["config"].value, fl["workdir"].value, fl["task"].value, adapters=fl["adapter"].value,
        baseline_names=[b for b in baseline_names if b] if baseline_names is not None else None,
        limit=fl["limit"].value, metrics=fl["metrics"].value, split=fl["split"].value, out_dir=fl["out"].value,
        nearest_prompts=fl["nearest_prompts"].value)


def cli_main() -> None:
    """Console script ``dnd-evaluate`` (= ``python -m dnd_jax.evaluate``)."""
    cli.run(define_flags, main, required=("config", "workdir", "task"))


if __name__ == "__main__":
    cli_main()
