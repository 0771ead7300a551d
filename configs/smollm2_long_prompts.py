"""Condition-length study: the SmolLM2 commonsense recipe with L = 128 encoder tokens per prompt.

BoolQ prompts are a passage followed by the question; at the default L = 32 the encoder sees only the
passage's first sentence, and two samples of BoolQ prompts give generator steps at cos 0.50 (the
conditioning check in ``docs/study/README.md``). This variant re-encodes every condition at L = 128
and re-runs BoolQ held out with the main run's 6 training tasks (``--only boolq``: SciQ stays
cross-domain, out of training, but is not run). Outputs go to ``W/variants/long_prompts`` and reuse
``W``'s zoo and evaluation cache (base, merged and oracle are the same adapters: not re-scored).

    python -m dnd_jax.experiment --config configs/smollm2_long_prompts.py --workdir workdir/smollm2 \
        --only boolq --docs docs/study/long_prompts
"""
import ml_collections

from configs import smollm2_commonsense


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = smollm2_commonsense.get_config(arg)
    config.conditions.max_len = 128
    config.experiment.variant = "long_prompts"
    config.experiment.holdouts = ("boolq",)
    # SciQ stays cross-domain so BoolQ's generator sees the main run's 6 training tasks (--only boolq).
    config.experiment.baselines = ("base", "merged", "oracle")
    return config
