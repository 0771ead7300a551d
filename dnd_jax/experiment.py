"""The DnD experiment: ``python -m dnd_jax.experiment --config configs/X.py --workdir W``.

Collect the zoo; for each held-out task train a generator on the others, generate the task's adapter
from unlabeled prompts and evaluate it against every baseline; then the cross-domain targets. Every
stage is resumable. Results go to ``W/results/`` and, with ``--docs``, to ``docs/results/``.
``--shard=I/N`` runs the targets in N processes side by side (one per core or host), then a run
without it writes the report from their cached stages. The
stages: :mod:`dnd_jax.pipeline`; the report: :mod:`dnd_jax.report`.
"""
from __future__ import annotations

import json

from absl import flags

from dnd_jax import cli, report

# The pipeline's former home: these names stay importable from here.
from dnd_jax.pipeline import (  # noqa: F401
    generator_config,
    output_root,
    run,
    run_also_evaluate,
    run_foreign_generator,
    run_foreign_target,
    run_target,
    train_generator,
    training_tasks,
    write_report,
)


def define_flags() -> dict:
    """CLI flags, defined only when run as a program (so verbs can share one process)."""
    return {
        "config": cli.config_flag(),
        "workdir": flags.DEFINE_string("workdir", None, "Working directory for every stage."),
        "docs": flags.DEFINE_string("docs", "", "Also write results (JSON, Markdown, PNG) here, e.g. docs/results."),
        "only": flags.DEFINE_list("only", None, "Run only these targets (held-out or cross-domain tasks)."),
        "shard": flags.DEFINE_string("shard", None, "I/N: run every N-th target from the I-th beside the other "
                                     "shards (needs a complete zoo; writes no report: rerun without --shard)."),
        "train_only": flags.DEFINE_bool("train_only", False, "Collect the zoo and train the targets' generators; "
                                        "generate, evaluate and report nothing (e.g. to make another "
                                        "experiment's foreign generator: --only sciq)."),
    }


def main(fl: dict) -> None:
    results = run(fl["config"].value, fl["workdir"].value, fl["only"].value, fl["docs"].value, fl["shard"].value,
                  train_only=fl["train_only"].value)
    if fl["train_only"].value:
        print(json.dumps(results["targets"]))
    elif not fl["shard"].value:
        print(report.markdown(report.slim(results)))


def cli_main() -> None:
    """Console script ``dnd-experiment`` (= ``python -m dnd_jax.experiment``)."""
    cli.run(define_flags, main, required=("config", "workdir"))


if __name__ == "__main__":
    cli_main()
