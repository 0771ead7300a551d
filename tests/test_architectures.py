"""Any causal LM, no per-model code: tiny random Qwen2, Gemma and Phi-3 models built in-process go
through collect -> train -> generate -> peft load, with LoRA targets derived from the model (its linear
layers, ``lora.target_modules = ("all-linear",)``) and the weight layout derived from tensor shapes."""
import json

import pytest
import torch

from configs import tiny
from dnd_jax import assets, base_model, collection, generator, trainer, zoo

# Each config: hidden 32, 2 layers, 4 heads of 8, 2 KV heads, MLP 64; fused projections where the
# architecture has them (Phi-3: qkv_proj, gate_up_proj). Mistral ran too (same module names as Qwen2 and
# Llama); it is left out to keep the suite short.
ARCHS = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                  "v_proj"]),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                  "v_proj"]),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]),
}


def build_tiny(arch: str, out_dir):
    """A tiny random model of ``arch`` with the byte tokenizer, saved as an HF folder (safetensors)."""
    import transformers

    config_cls, model_cls, _ = ARCHS[arch]
    tok = base_model.byte_tokenizer()
    cfg = getattr(transformers, config_cls)(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    return out_dir


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_collect_train_generate_load_on_any_architecture(arch, tmp_path):
    from peft import PeftModel

    path = build_tiny(arch, tmp_path / f"base_{arch}")
    assert base_model.linear_module_names(path) == ARCHS[arch][2]

    config = tiny.get_config()
    config.base_model = dict(kind="hf_dir", path=str(path), name=f"tiny-{arch}")
    config.lora.target_modules = ("all-linear",)
    config.tasks = ("arc_e", "piqa")
    config.zoo.pretrain_steps, config.zoo.save_steps = 2, 3
    config.total_steps, config.ckpt_steps, config.eval_steps = 3, 3, 3
    workdir = tmp_path / "w"
    collection.collect(config, workdir)
    manifest = zoo.task_manifest(workdir, "arc_e")
    assert manifest["lora"]["target_modules"] == ARCHS[arch][2]
    ckpt = zoo.final_checkpoint(workdir, "arc_e")
    shapes = {k: v.shape for k, v in zoo.load_state_dict(ckpt).items()}
    assert {k.split(".")[-3] for k in shapes} == set(ARCHS[arch][2])  # every linear layer carries a LoRA

    trainer.train_and_evaluate(config, workdir / "generator")
    gen = generator.Generator.load(workdir / "generator")
    assert {e.key: tuple(e.shape) for e in gen.layout.entries} == shapes  # layout from the shapes alone
    adapter = gen.generate(["Which gas do plants take in?", "How do magnets work?", "Why is ice slippery?",
                            "What makes a rainbow?"])
    out = adapter.save(tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["target_modules"] == ARCHS[arch][2]

    ref = base_model.BaseModelRef(name=arch, path=str(path), sha=assets.model_content_hash(path))
    base, tok = base_model.load(ref)
    ids = tok(["Question: what is heavy?\nAnswer:"], return_tensors="pt").input_ids
    with torch.inference_mode():
        before = base(ids).logits.clone()
    model = PeftModel.from_pretrained(base, str(out)).eval()
    assert len([k for k, _ in model.named_parameters() if "lora_" in k]) == len(adapter.state_dict) == len(shapes)
    with torch.inference_mode():
        after = model(ids).logits
    assert torch.isfinite(after).all() and not torch.allclose(after, before)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_greedy_decode_matches_generate_on_any_architecture(arch, tmp_path):
    """The generation metrics' decoder (rows leave the batch and its KV cache as they stop) gives
    transformers' generate's texts on every architecture, not only Llama's."""
    from dnd_jax import generative, tasks

    model, tok = base_model.load(base_model.resolve({"kind": "hf_dir", "path": str(build_tiny(arch, tmp_path))}))
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights: the text varies with the context, rows stop at different steps
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    exs = tasks.load_examples("gsm8k", "test", limit=5)
    stops = ("-", "=", "e")
    ours = generative.greedy_solutions(model, tok, exs, stops, 16, batch_size=5, progress=False)
    assert ours == generative.reference_greedy_solutions(model, tok, exs, stops, 16, batch_size=5)
    prompts = [tok(tasks.cloze_context(ex), add_special_tokens=False)["input_ids"] for ex in exs]
    assert len({len(r) for r in generative.greedy_decode(model, tok, prompts, 16, stops)}) > 1  # rows left early
