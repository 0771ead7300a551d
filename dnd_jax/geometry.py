"""Geometry of LoRA weight updates of an experiment: ``python -m dnd_jax.geometry``.

    python -m dnd_jax.geometry --config configs/smollm2_commonsense.py --workdir workdir/smollm2 \
        --out docs/results/geometry

What is measured and how: :mod:`dnd_jax.weight_space`; the factor math: :mod:`dnd_jax.weights.lora`;
geometry.json/.md/.png: :func:`dnd_jax.report.write_geometry`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dnd_jax import report
from dnd_jax.errors import InputError

# The analysis' former home: these names stay importable from here.
from dnd_jax.report import geometry_markdown as markdown  # noqa: F401
from dnd_jax.report import geometry_plot as plot  # noqa: F401
from dnd_jax.report import write_geometry as write  # noqa: F401
from dnd_jax.weight_space import Space, analyse, experiment_targets, find_generated, sample_checkpoints  # noqa: F401
from dnd_jax.weights.lora import A_SUFFIX, B_SUFFIX, Factors, load_factors, lora_factors, update_gram  # noqa: F401


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
    report.write_geometry(result, out)
    print(report.geometry_markdown(result))


def cli_main() -> None:
    """Console script ``dnd-geometry`` (= ``python -m dnd_jax.geometry``)."""
    from dnd_jax import cli

    cli.run(define_flags, main, required=("config", "workdir"))


if __name__ == "__main__":
    cli_main()
