"""Quick DnD experiment on the embedded defaults (`make demo`): 46 min on 2 shared CPU cores (session 4,
docs/quickstart/experiment_stages.json: zoo 1195 s, generator 510 s, evaluation 1049 s).

SmolLM2-135M-Instruct; a 4-task zoo (ARC-e, ARC-c, OBQA, PIQA), 40 LoRA steps per task keeping the
last 8; a generator trained for 150 steps on ARC-e, OBQA and PIQA; ARC-c held out: its adapter is generated from
ARC-c *test* prompts (unlabeled) and evaluated on 100 ARC-c test questions against the baselines.

    python -m dnd_jax.experiment --config configs/quickstart.py --workdir workdir/quickstart
"""
import ml_collections

from configs import smollm2_commonsense


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = smollm2_commonsense.get_config()
    config.tasks = ("arc_e", "arc_c", "obqa", "piqa")
    config.zoo.pretrain_steps = 32
    config.zoo.save_steps = 8
    config.zoo.num_prompts_saved = 256
    config.experiment.holdouts = ("arc_c",)
    config.experiment.cross_domain = ()
    config.total_steps = 150
    config.eval_steps = 50
    config.ckpt_steps = 50
    config.eval.limit = 100
    config.eval.metrics = ("cloze", "mc")
    return smollm2_commonsense.common.apply_arg(config, arg)
