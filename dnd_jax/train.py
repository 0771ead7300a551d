"""Train the DnD generator: ``python -m dnd_jax.train --config configs/X.py[:arg] --workdir W``.

The loop, its outputs under ``W`` and how resume works: :mod:`dnd_jax.trainer`. Rerunning resumes
from the latest checkpoint; ``--start_over`` sets a run with another recipe or other data aside.
``--dry_run`` compiles the train step for ``config.mesh`` without training (:mod:`dnd_jax.dry_run`).

Multi-process (one process per host): pass ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (see ``launch/``); each process feeds its slice of every global batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
from absl import flags

from dnd_jax import cli, sharding
from dnd_jax.plan import ConfigError

# The training loop's former home: these names stay importable from here.
from dnd_jax.trainer import (  # noqa: F401
    CKPT_DIR,
    METRICS,
    LoadedGenerator,
    decay_multipliers,
    init_distributed,
    load_generator,
    make_optimizer,
    make_steps,
    place_state,
    read_metrics,
    train_and_evaluate,
    training_tasks,
    validate,
)


def _define_flags() -> dict:
    """CLI flags, defined only when run as a script (importing this module defines none)."""
    return {
        "config": cli.config_flag(lock=False),
        "workdir": flags.DEFINE_string("workdir", None, "Generator working directory."),
        "coordinator": flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process), or "
                                           "'auto' to detect it (TPU pods, SLURM)."),
        "num_processes": flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process)."),
        "process_id": flags.DEFINE_integer("process_id", None, "This process's index (multi-process)."),
        "dry_run": flags.DEFINE_bool("dry_run", False, "Build the train step abstractly for config.mesh and print "
                                     "parameters, optimizer bytes, FLOPs/step and per-device memory; no training."),
        "start_over": flags.DEFINE_bool("start_over", False, "If --workdir holds a run with another recipe or "
                                        "other data, move it to WORKDIR/replaced-<time>/ and train from scratch."),
    }


def main(fl: dict) -> None:
    """Config errors (ConfigError, LayoutMismatchError: ValueErrors) exit non-zero via ``cli.run``."""
    init_distributed(fl["coordinator"].value, fl["num_processes"].value, fl["process_id"].value)
    if fl["dry_run"].value:
        from dnd_jax import dry_run

        try:
            result = dry_run.run(fl["config"].value, fl["workdir"].value)
        except (sharding.MeshError, sharding.ShardingRuleError) as e:
            raise ConfigError(str(e)) from None
        if jax.process_index() == 0:
            print(dry_run.summary(result))
            print(dry_run.to_json(result))
        return
    result = train_and_evaluate(fl["config"].value, fl["workdir"].value, start_over=fl["start_over"].value)
    if jax.process_index() == 0:
        last = result["history"][-1] if result["history"] else {}
        print(json.dumps({"workdir": str(Path(fl["workdir"].value).resolve()), "step": result["step"],
                          "loss": last.get("loss"), "val_loss": result["val_loss"]}))


def cli_main() -> None:
    """Console script ``dnd-train`` (= ``python -m dnd_jax.train``)."""
    cli.run(_define_flags, main, required=("config", "workdir"))


if __name__ == "__main__":
    cli_main()
