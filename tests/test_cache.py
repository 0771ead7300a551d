"""dnd_jax.cache: memoized JSON and the compilation cache change speed, never results."""
import json

import numpy as np
import pytest

from dnd_jax import cache
from dnd_jax.weights import peft_io


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DND_JAX_RUNTIME_CACHE", str(root))
    return root


def test_json_memo_computes_once_and_checks_its_key(cache_root):
    calls = []

    def compute():
        calls.append(1)
        return {"a": [1, 2]}

    assert cache.json_memo("ns", {"k": 1}, compute) == {"a": [1, 2]}
    assert cache.json_memo("ns", {"k": 1}, compute) == {"a": [1, 2]}
    assert len(calls) == 1
    entry = next((cache_root / "ns").glob("*.json"))
    # an entry whose stored key differs (a hash collision or an edit) is not trusted
    entry.write_text(json.dumps({"key": '{"k": 2}', "value": "tampered"}))
    assert cache.json_memo("ns", {"k": 1}, compute) == {"a": [1, 2]} and len(calls) == 2
    entry.write_text("{truncated")
    assert cache.json_memo("ns", {"k": 1}, compute) == {"a": [1, 2]} and len(calls) == 3
    assert not [p for p in (cache_root / "ns").iterdir() if p.name.startswith(".")]  # no temp files left


def test_cache_off(monkeypatch):
    monkeypatch.setenv("DND_JAX_RUNTIME_CACHE", "off")
    assert cache.cache_dir() is None
    calls = []
    cache.json_memo("ns", 1, lambda: calls.append(1))
    cache.json_memo("ns", 1, lambda: calls.append(1))
    assert len(calls) == 2


def test_lora_config_dict_cached_equals_peft(cache_root):
    args = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], base_model_name_or_path="x",
                lora_dropout=0.0)
    fresh = peft_io._lora_config_dict(**args)
    assert peft_io.lora_config_dict(**args) == fresh  # computed by peft, stored
    assert peft_io.lora_config_dict(**args) == fresh  # read back
    assert len(list((cache_root / "peft_lora_config").glob("*.json"))) == 1
    other = peft_io.lora_config_dict(**{**args, "r": 4})
    assert other["r"] == 4 and other != fresh


def test_float32_adapter_bytes_equal_the_torch_writer(cache_root, tmp_path):
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    sd = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": rng.normal(size=(4, 8)).astype(np.float32),
          "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": rng.normal(size=(8, 4)).astype(np.float64),
          "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight": rng.normal(size=(4, 8)).astype(np.float32),
          "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight": rng.normal(size=(8, 4)).astype(np.float32)}
    out = peft_io.write_adapter(tmp_path / "a", sd, r=4, lora_alpha=8, target_modules=["q_proj"],
                                base_model_name_or_path="x")
    ref = tmp_path / "ref.safetensors"
    save_file({k: torch.from_numpy(np.asarray(v, np.float32)).contiguous() for k, v in sd.items()}, str(ref),
              metadata={"format": "pt"})
    assert (out / peft_io.ADAPTER_WEIGHTS).read_bytes() == ref.read_bytes()
    bf = peft_io.write_adapter(tmp_path / "b", sd, r=4, lora_alpha=8, target_modules=["q_proj"],
                               base_model_name_or_path="x", dtype="bfloat16")  # other dtypes: the torch writer
    back, _ = peft_io.read_adapter(bf)
    np.testing.assert_allclose(back[next(iter(sd))], sd[next(iter(sd))], rtol=1e-2)


def test_compilation_cache_dir(cache_root):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        path = cache.enable_compilation_cache()
        assert path is not None and path.is_dir()
        if before is None:
            assert path == cache_root / "xla"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
