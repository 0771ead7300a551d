"""Paper scale: Qwen2.5-0.5B-Instruct on the commonsense suite. NOT trainable on the 2-core dev box.

Matches the DnD paper's commonsense setting: rank-8 LoRA on every linear layer (4.40M parameters
over 24 layers x 7 modules), conditions of 128 prompts x 384 encoder tokens. The generator maps
(128, 384, 384) to (4296, 128, 8) weight tokens (896, 128 and 4864 are multiples of 128: no
padding) in four stages: 25.2M parameters and 238 GFLOPs per example forward. Measured on the
2-core dev box (``bench/bench_generator.py --batch_size 1``, docs/bench/): one example's train
step takes 14 s, so a batch-64 step would take ~15 min; train it on accelerators (a batch-64 step
is ~46 TFLOPs, well under a second on one H100/H200-class GPU in bfloat16).

The base model is a local Hugging Face folder (nothing is downloaded):

    python -m dnd_jax.collect --config configs/qwen25_0p5b_commonsense.py \\
        --config.base_model.path=/models/Qwen2.5-0.5B-Instruct --workdir workdir/qwen
    python -m dnd_jax.train --config configs/qwen25_0p5b_commonsense.py:holdout=arc_c \\
        --config.base_model.path=/models/Qwen2.5-0.5B-Instruct --workdir workdir/qwen/gen_arc_c
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_config()
    config.base_model = dict(kind="hf_dir", path="", name="Qwen/Qwen2.5-0.5B-Instruct")
    config.tasks = ("arc_e", "arc_c", "boolq", "hellaswag", "piqa", "obqa", "winogrande", "sciq")
    config.answer_format = "cloze"

    # --- zoo (collect) ---
    config.lora = dict(r=8, alpha=16, dropout=0.0, target_modules=common.LLAMA_ALL_LINEAR)
    config.zoo.max_train_examples = 0
    config.zoo.max_len = 256
    config.zoo.batch_size = 16
    config.zoo.lr = 1e-4
    config.zoo.warmup_steps = 20
    config.zoo.pretrain_steps = 500
    config.zoo.save_steps = 200
    config.zoo.save_every = 4  # 50 checkpoints per task
    config.zoo.num_prompts_saved = 1024

    # --- generator (train) ---
    config.experiment.cross_domain = ("sciq",)
    config.conditions.num_prompts = 128
    config.conditions.max_len = 384
    config.conditions.noise = 1e-3
    config.layout.token_shape = (128, 8)
    config.layout.normalization = "per_element"
    # (128, 384, 384) -> ... -> (4296, 128, 8)
    config.model.hidden_shapes = ((128, 192, 128), (256, 128, 64), (512, 128, 16))
    config.model.kernel_size = 3
    config.model.dtype = "bfloat16"
    config.batch_size = 64
    config.total_steps = 5000
    config.lr = 1e-3
    config.warmup_steps = 200
    config.weight_decay = 1e-4
    config.mesh = (("data", -1), ("model", 2))
    config.min_shard_size = 2**18
    # Every kernel's output channels over 'model', and FSDP over 'data' for parameters and Adam state.
    config.sharding = ((r".*/kernel", "shard_dim(axis='model', dim=-1)|fsdp(axis='data')"),
                       (r".*", "fsdp(axis='data')"))
    config.log_steps = 50
    config.eval_steps = 500
    config.ckpt_steps = 500
    config.keep_ckpts = 3
    config.val_checkpoints_per_task = 2
    return common.apply_arg(config, arg)
