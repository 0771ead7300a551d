"""Paper scale: a generator of rank-16 all-linear LoRAs for Qwen2.5-7B-Instruct. For accelerators.

The DnD paper's 7B targets (reference adapter_config: r=16, lora_alpha=32, all seven linear
modules) give 40.4M LoRA parameters over 28 layers; with (16, 512) weight tokens that is exactly the
paper's 4928 tokens, and the hidden feature maps follow the paper's decoder ((16, L, 384) ->
(64, 500, 384) -> ... -> (4928, 16, 512)) with 3x3 kernels (the paper uses 11). Conditions: 16
prompts x 512 encoder tokens. Memory, FLOPs and placement on 1-256 devices: docs/scaleout/dry_run.md;

    python -m dnd_jax.train --config configs/qwen25_7b_lora16.py --workdir /tmp/x --dry_run
"""
import ml_collections

from configs import common, qwen25_1p5b_lora16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = qwen25_1p5b_lora16.get_config()
    config.base_model = dict(kind="hf_dir", path="", name="Qwen/Qwen2.5-7B-Instruct", arch="qwen25_7b")
    config.layout.token_shape = (16, 512)
    config.model.hidden_shapes = ((64, 500, 384), (256, 125, 400), (512, 64, 400), (1024, 64, 400), (2048, 32, 400))
    return common.apply_arg(config, arg)
