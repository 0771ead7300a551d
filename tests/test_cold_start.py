"""A new generate process is fast because of caches (issue 18); caches change speed, never results.

- A verified generator step's weights are kept in the runtime cache after the first (Orbax) load; a
  later process loads them without importing Orbax, gets identical arrays, and every integrity check
  still runs first (a corrupt checkpoint is refused whatever the cache holds).
- JAX's persistent compilation cache is hit by a second process (no compilation), and the adapter
  bytes are the same with the cache off, empty or filled.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dnd_jax
from configs import tiny
from dnd_jax import cache, checkpoint, errors, testing

REPO = Path(__file__).resolve().parents[1]

_PROBE = r"""
import hashlib, json, sys
import jax
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from dnd_jax import generator
gen = generator.Generator.load(sys.argv[1])
out = gen.generate(["What is the boiling point of water?", "Which gas do plants take in?"]).save(sys.argv[2])
digest = hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
print(json.dumps({"digest": digest, "orbax": "orbax.checkpoint" in sys.modules,
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory) -> Path:
    zoo_dir = testing.make_synthetic_zoo(tmp_path_factory.mktemp("zoo"), tasks=("arc_e", "piqa", "boolq"))
    c = tiny.get_config()
    c.zoo_workdir = str(zoo_dir)
    c.total_steps, c.ckpt_steps, c.log_steps, c.eval_steps = 2, 2, 2, 2
    w = tmp_path_factory.mktemp("gen") / "g"
    dnd_jax.train_and_evaluate(c, w)
    return w


def _probe(gen_dir: Path, out: Path, runtime_cache: str) -> dict:
    env = testing.subprocess_env(DND_JAX_RUNTIME_CACHE=runtime_cache)
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(gen_dir), str(out)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_hits_both_caches_and_writes_the_same_bytes(gen_dir, tmp_path):
    root = str(tmp_path / "cache")
    first = _probe(gen_dir, tmp_path / "a1", root)
    second = _probe(gen_dir, tmp_path / "a2", root)
    off = _probe(gen_dir, tmp_path / "a3", "off")
    assert first["orbax"] and first["misses"] >= 2  # encoder + decoder compiled, weights restored by Orbax
    assert not second["orbax"]  # weights from the runtime cache: Orbax never imported
    assert second["misses"] == 0 and second["hits"] >= 2  # every program came from the compilation cache
    assert off["orbax"] and off["hits"] == 0
    assert first["digest"] == second["digest"] == off["digest"]


@pytest.fixture
def cache_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DND_JAX_RUNTIME_CACHE", str(root))
    return root


def _entries(root: Path) -> list[Path]:
    return sorted((root / checkpoint.SNAPSHOTS).glob("*.safetensors"))


def _same(a, b) -> None:
    import jax

    fa, fb = jax.tree.leaves_with_path(a.params), jax.tree.leaves_with_path(b.params)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (_, x), (_, y) in zip(fa, fb):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    assert np.array_equal(a.normalizer.mean, b.normalizer.mean) and np.array_equal(a.normalizer.std, b.normalizer.std)
    assert a.metadata == b.metadata and a.step == b.step


def test_cached_weights_equal_orbax_and_damaged_entries_are_not_trusted(gen_dir, cache_root, monkeypatch):
    calls = []
    real = checkpoint.load_from
    monkeypatch.setattr(checkpoint, "load_from", lambda *a, **k: calls.append(1) or real(*a, **k))
    a = checkpoint.load_generator(gen_dir)  # Orbax, then stored
    assert len(calls) == 1 and len(_entries(cache_root)) == 1
    b = checkpoint.load_generator(gen_dir)  # from the cache
    assert len(calls) == 1
    _same(a, b)
    entry = _entries(cache_root)[0]
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside a weight
    entry.write_bytes(bytes(data))
    c = checkpoint.load_generator(gen_dir)
    assert len(calls) == 2  # the damaged copy was ignored (and replaced)
    _same(a, c)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    _same(a, checkpoint.load_generator(gen_dir))
    assert len(calls) == 3


def test_corrupt_checkpoint_is_refused_even_with_a_cached_copy(gen_dir, cache_root, tmp_path):
    w = tmp_path / "copy"
    shutil.copytree(gen_dir, w)
    checkpoint.load_generator(w)
    assert _entries(cache_root)  # a cached copy of exactly these bytes exists
    step = max(int(p.name) for p in (w / checkpoint.CKPT_DIR).iterdir() if p.name.isdigit())
    victim = max((p for p in (w / checkpoint.CKPT_DIR / str(step) / "params").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(errors.IntegrityError, match="does not match its checksum"):
        checkpoint.load_generator(w)
    victim.unlink()
    with pytest.raises(errors.IntegrityError, match="missing"):
        checkpoint.load_generator(w)


def test_array_entries_round_trip_every_dtype_and_check_their_key(cache_root):
    import ml_dtypes

    arrays = {"a/b": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2], "c": np.ones(3, ml_dtypes.bfloat16),
              "d": np.asarray(7, np.int32)}
    cache.save_arrays("ns", {"k": 1}, arrays)
    back = cache.load_arrays("ns", {"k": 1})
    assert set(back) == set(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)
    assert cache.load_arrays("ns", {"k": 2}) is None
    (path,) = (cache_root / "ns").glob("*.safetensors")
    cache.save_arrays("ns2", {"k": 3}, arrays)
    shutil.copy(next((cache_root / "ns2").glob("*.safetensors")), path)  # an entry stored under another key
    assert cache.load_arrays("ns", {"k": 1}) is None
    assert not [p for p in (cache_root / "ns").iterdir() if p.name.startswith(".")]  # no temp files left
