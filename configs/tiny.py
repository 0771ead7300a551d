"""Tiny end-to-end config: a tiny random Llama, 3 tasks, a few checkpoints each, a tiny generator.

The whole pipeline (zoo, train, generate, evaluate) runs in about a minute on 2 CPU cores; tests
and smoke runs use it. It proves plumbing, not accuracy.

    python -m dnd_jax.collect --config configs/tiny.py --workdir /tmp/tiny
    python -m dnd_jax.train --config configs/tiny.py --workdir /tmp/tiny
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_config()
    config.base_model = dict(kind="tiny_llama", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, seed=0)
    config.tasks = ("arc_e", "piqa", "boolq")
    config.answer_format = "cloze"

    config.lora.r = 4
    config.lora.alpha = 8

    config.zoo.max_train_examples = 16
    config.zoo.max_len = 96
    config.zoo.batch_size = 4
    config.zoo.lr = 3e-3
    config.zoo.pretrain_steps = 4
    config.zoo.save_steps = 4
    config.zoo.save_every = 1
    config.zoo.num_prompts_saved = 64

    config.conditions.num_prompts = 4
    config.conditions.max_len = 16

    config.layout.token_shape = (4, 16)

    config.model.hidden_shapes = ((32, 8, 32),)
    config.model.kernel_size = 3

    config.batch_size = 8  # divisible by the 8 simulated test devices
    config.total_steps = 60
    config.lr = 1e-2
    config.warmup_steps = 5
    config.log_steps = 10
    config.ckpt_steps = 20
    config.eval_steps = 30

    config.eval.limit = 16
    config.eval.batch_size = 8
    config.eval.max_new_tokens = 4
    return common.apply_arg(config, arg)
