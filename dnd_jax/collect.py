"""Collect the checkpoint zoo: ``python -m dnd_jax.collect --config configs/X.py --workdir W``.

For each task: fine-tune a LoRA on the frozen base model, keeping many nearby checkpoints (the DnD
recipe); crash-safe and resumable. ``--shard=I/N`` collects every N-th task starting at the I-th,
one process per shard, then helps with the other shards' tasks that no live process holds. The logic and the layout it writes: :mod:`dnd_jax.collection`, :mod:`dnd_jax.zoo`.
"""
from __future__ import annotations

from absl import flags

from dnd_jax import cli

# The collection's former home: these names stay importable from here.
from dnd_jax.collection import (  # noqa: F401
    RESUME_FILE,
    collect,
    collect_task,
    data_seed,
    kept_steps,
    parse_shard,
    summary_table,
    write_checkpoint,
)


def define_flags() -> dict:
    """CLI flags, defined only when run as a program (so verbs can share one process)."""
    return {
        "config": cli.config_flag(),
        "workdir": flags.DEFINE_string("workdir", None, "Working directory; the zoo goes to WORKDIR/zoo."),
        "tasks": flags.DEFINE_list("tasks", None, "Only these tasks (default: config.tasks)."),
        "shard": flags.DEFINE_string("shard", None, "I/N: collect every N-th task from the I-th, alongside the "
                                     "other shards (one process each), then help with theirs (see the module doc)."),
    }


def main(fl: dict) -> None:
    collect(fl["config"].value, fl["workdir"].value, fl["tasks"].value, fl["shard"].value)


def cli_main() -> None:
    """Console script ``dnd-collect`` (= ``python -m dnd_jax.collect``)."""
    cli.run(define_flags, main, required=("config", "workdir"))


if __name__ == "__main__":
    cli_main()
