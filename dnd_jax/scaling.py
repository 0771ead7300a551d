"""The task-scaling curve: ``python -m dnd_jax.scaling --config configs/smollm2_many.py --workdir W``.

    python -m dnd_jax.scaling --config configs/smollm2_many.py --workdir workdir/many --docs docs/scaling
    python -m dnd_jax.scaling ... --status              # the many-task zoo's collection status only
    python -m dnd_jax.scaling ... --variant=NAME --config.layout.normalization=per_element

One generator per nested training pool of K tasks, DnD against merged / similarity-weighted merge /
nearest / training-LoRA mean per held-out target and K, with paired bootstrap CIs and the pool's
weight-space geometry. The protocol, variants and outputs: :mod:`dnd_jax.scaling_curve`.
"""
from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from dnd_jax import assets, cli

# The protocol's former home: these names stay importable from here.
from dnd_jax.scaling_curve import (  # noqa: F401
    COMPARISONS,
    SYSTEMS,
    VARIANT_COMPARISON,
    InputError,
    check_variant,
    compare,
    dnd_dir,
    is_collected,
    markdown,
    plot,
    pool_config,
    pools,
    run,
    run_pool,
    settings,
    status_markdown,
    stratified_paired_bootstrap,
    training_sample,
    write,
    zoo_status,
)


def define_flags() -> dict:
    return {
        "config": cli.config_flag(),
        "workdir": flags.DEFINE_string("workdir", None, "The many-task zoo's working directory."),
        "docs": flags.DEFINE_string("docs", "", "Also write results.json/.md and curve.png here (docs/scaling)."),
        "sizes": flags.DEFINE_list("sizes", None, "Only these pool sizes (default: every collected pool)."),
        "status": flags.DEFINE_bool("status", False, "Only report the zoo's collection status (to --docs too)."),
        "variant": flags.DEFINE_string("variant", "", "Name a generator variant (its --config.* overrides may "
                                       "change only the generator); see the module doc."),
    }


def main(fl: dict) -> None:
    if fl["status"].value:
        st = zoo_status(fl["config"].value, fl["workdir"].value)
        md = status_markdown(st)
        if fl["docs"].value:
            Path(fl["docs"].value).mkdir(parents=True, exist_ok=True)
            assets.write_json_atomic(Path(fl["docs"].value) / "zoo_status.json", st)
            assets.write_text_atomic(Path(fl["docs"].value) / "zoo_status.md", md)
        print(md)
        return
    sizes = [int(s) for s in fl["sizes"].value or ()]
    variant = fl["variant"].value
    default = cli.config_file_defaults(fl["config"]) if variant else None
    results = run(fl["config"].value, fl["workdir"].value, fl["docs"].value, sizes, variant, default)
    print(markdown(results))
    print(json.dumps(results.get("skipped", {})))


def cli_main() -> None:
    """Console script ``dnd-scaling`` (= ``python -m dnd_jax.scaling``)."""
    cli.run(define_flags, main, required=("config", "workdir"))


if __name__ == "__main__":
    cli_main()
