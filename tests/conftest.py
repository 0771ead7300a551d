"""Test setup: 8 simulated CPU devices for sharding tests, offline Hugging Face, shared fixtures."""
import os

from dnd_jax import testing  # jax-free: XLA_FLAGS is set before anything imports jax

os.environ.setdefault("XLA_FLAGS", testing.xla_flags(8))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dnd_jax.cache (compiled programs, memoized peft configs): per test session, never the user's ~/.cache
if "DND_JAX_RUNTIME_CACHE" not in os.environ:
    import tempfile

    os.environ["DND_JAX_RUNTIME_CACHE"] = tempfile.mkdtemp(prefix="dnd_jax_test_cache_")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny random Llama (byte tokenizer) saved as an HF folder: a BaseModelRef."""
    from dnd_jax import base_model

    return base_model.resolve({"kind": "tiny_llama"}, tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A module's runs repeat the same programs: a persistent compilation cache compiles each once."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path_factory.mktemp("jax_cache")), 0, 0), strict=True):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture
def condition_spy(monkeypatch):
    """Every prompt set a generator is conditioned on, in call order (the real method still runs)."""
    from dnd_jax import generator

    seen, real = [], generator.Generator.generate_many

    def spy(self, prompt_sets, *args, **kwargs):
        seen.extend(list(ps) for ps in prompt_sets)
        return real(self, prompt_sets, *args, **kwargs)

    monkeypatch.setattr(generator.Generator, "generate_many", spy)
    return seen
