"""SmolLM2-135M-Instruct on the DnD commonsense suite (the real experiment on the embedded defaults).

Zoo: rank-8 all-linear LoRAs (2.44M parameters), cloze answers (the choice text), 80 steps of
batch 8 then 20 more steps keeping a checkpoint at each (20 checkpoints per task), for the 7
commonsense tasks + SciQ (cross-domain). Measured on 2 CPU cores: see README ("Zoo").

    python -m dnd_jax.collect --config configs/smollm2_commonsense.py --workdir workdir/smollm2
    python -m dnd_jax.train --config configs/smollm2_commonsense.py:holdout=arc_c --workdir workdir/smollm2/gen_arc_c
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_config()
    config.base_model = dict(kind="smollm2")
    config.tasks = ("arc_e", "arc_c", "boolq", "hellaswag", "piqa", "obqa", "winogrande", "sciq")
    config.answer_format = "cloze"

    # --- zoo (collect) ---
    config.lora = dict(r=8, alpha=16, dropout=0.0, target_modules=common.LLAMA_ALL_LINEAR)
    config.zoo.max_train_examples = 0
    config.zoo.max_len = 128
    config.zoo.batch_size = 8
    config.zoo.lr = 3e-4
    config.zoo.warmup_steps = 5
    config.zoo.pretrain_steps = 80
    config.zoo.save_steps = 20
    config.zoo.save_every = 1
    config.zoo.num_prompts_saved = 512

    # --- generator (train) ---
    config.experiment.cross_domain = ("sciq",)
    return common.apply_arg(config, arg)
