"""Zoo-diversity study: the SmolLM2 commonsense recipe with five more, different training tasks.

The weight-update geometry (``python -m dnd_jax.geometry``) shows each held-out task's LoRA update
is nearly orthogonal to every training task's, so a generator trained on six tasks has almost
nothing to interpolate. This variant adds Social IQa, CommonsenseQA, MedMCQA, SST-2 and RTE as
training-only tasks (same LoRA recipe, same shared zoo) and re-runs ARC-c and OBQA held out.
Outputs go to ``W/variants/diverse`` and reuse ``W``'s zoo and evaluation cache.

    python -m dnd_jax.collect --config configs/smollm2_diverse.py --workdir workdir/smollm2 \
        --tasks socialiqa,csqa,medmcqa,sst2,rte
    python -m dnd_jax.experiment --config configs/smollm2_diverse.py --workdir workdir/smollm2 \
        --docs docs/study/diverse
"""
import ml_collections

from configs import smollm2_commonsense

EXTRA_TASKS = ("socialiqa", "csqa", "medmcqa", "sst2", "rte")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = smollm2_commonsense.get_config(arg)
    config.tasks = tuple(config.tasks) + EXTRA_TASKS
    config.experiment.variant = "diverse"
    config.experiment.holdouts = ("arc_c", "obqa")
    config.experiment.cross_domain = ("sciq",)  # still never a training task
    # The training-LoRA columns and 'nearest' of the main table are not repeated (11 more evaluations
    # per target); base and oracle come from the shared cache, merged averages the 11 training tasks.
    config.experiment.baselines = ("base", "merged", "oracle")
    return config
