"""Paper scale: a generator of rank-16 all-linear LoRAs for Qwen2.5-1.5B-Instruct. For accelerators.

The DnD paper's 1.5B targets (its coding and math runs; reference adapter_config: r=16,
lora_alpha=32, q/k/v/o/gate/up/down) give 18.5M LoRA parameters over 28 layers; with (16, 256)
weight tokens that is exactly the paper's 4508 tokens, and the hidden feature maps follow the
paper's decoder ((16, L, 384) -> (64, 500, 300) -> ... -> (4508, 16, 256)) with 3x3 kernels
(the paper uses 11). Conditions: 16 prompts x 512 encoder tokens (MiniLM's limit; the paper cuts
to 1000). Memory, FLOPs and placement on 1-256 devices: docs/scaleout/dry_run.md;

    python -m dnd_jax.train --config configs/qwen25_1p5b_lora16.py --workdir /tmp/x --dry_run

The commonsense task list is kept so the pipeline runs end to end here; the generator's shape
depends only on the LoRA target. Training needs a zoo collected on Qwen2.5-1.5B (a local HF folder).
"""
import ml_collections

from configs import common, qwen25_0p5b_commonsense


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = qwen25_0p5b_commonsense.get_config()
    config.base_model = dict(kind="hf_dir", path="", name="Qwen/Qwen2.5-1.5B-Instruct", arch="qwen25_1p5b")
    config.lora = dict(r=16, alpha=32, dropout=0.0, target_modules=common.LLAMA_ALL_LINEAR)
    config.conditions.num_prompts = 16
    config.conditions.max_len = 512
    config.layout.token_shape = (16, 256)
    config.model.hidden_shapes = ((64, 500, 300), (256, 125, 300), (512, 64, 300), (1024, 64, 256), (2048, 32, 256))
    config.model.kernel_size = 3
    config.model.dtype = "bfloat16"
    config.batch_size = 64
    config.mesh = (("data", -1), ("model", 2))
    config.min_shard_size = 2**18
    config.sharding = ((r".*/kernel", "shard_dim(axis='model', dim=-1)|fsdp(axis='data')"),
                       (r".*", "fsdp(axis='data')"))
    return common.apply_arg(config, arg)
