"""The checkpoint zoo: tiny end to end, crash + rerun == uninterrupted, adapters load and act."""

import numpy as np
import pytest
import torch

from configs import tiny
from dnd_jax import base_model, collection, testing, zoo
from dnd_jax.errors import InputError, LockedError


def _tiny_config(**zoo_overrides):
    config = tiny.get_config()
    config.tasks = ("arc_e", "piqa")
    for k, v in zoo_overrides.items():
        config.zoo[k] = v
    return config


def _snapshot(workdir):
    """All tensors and JSON meta of every checkpoint (wall times excluded: they differ by run)."""
    out = {}
    for task in zoo.tasks(workdir):
        for ckpt in zoo.checkpoints(workdir, task):
            out[(task, ckpt.name)] = (zoo.load_state_dict(ckpt), zoo.checkpoint_meta(ckpt))
    return out


@pytest.fixture(scope="module")
def clean_zoo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("zoo_clean")
    collection.collect(_tiny_config(), workdir)
    return workdir


def test_tiny_zoo_layout(clean_zoo):
    config = _tiny_config()
    manifest = zoo.manifest(clean_zoo)
    assert set(manifest["tasks"]) == {"arc_e", "piqa"}
    for task in ("arc_e", "piqa"):
        ckpts = zoo.checkpoints(clean_zoo, task)
        assert [zoo.checkpoint_meta(c)["step"] for c in ckpts] == collection.kept_steps(config.zoo)
        tm = zoo.task_manifest(clean_zoo, task)
        assert tm["train_wall_time_s"] > 0 and tm["train_cpu_time_s"] > 0 and tm["torch_threads"] >= 1
        assert tm["split_sizes"]["test"] > 0
        assert tm["base_model"]["sha"] == manifest["base_model"]["sha"]
        prompts = zoo.prompts(clean_zoo, task)
        assert len(prompts) == config.zoo.num_prompts_saved and all(prompts)
        sd = zoo.load_state_dict(ckpts[-1])
        assert any("lora_B" in k and np.abs(v).max() > 0 for k, v in sd.items())  # training moved B


def test_rerun_skips_finished_tasks(clean_zoo, capsys):
    before = _snapshot(clean_zoo)
    collection.collect(_tiny_config(), clean_zoo)
    assert "complete, skipping" in capsys.readouterr().out
    after = _snapshot(clean_zoo)
    assert before.keys() == after.keys()


def test_crash_then_rerun_equals_uninterrupted(clean_zoo, tmp_path, monkeypatch):
    real_write = collection.write_checkpoint
    calls = {"n": 0}

    def crashing_write(model, out, meta):
        calls["n"] += 1
        if calls["n"] == 3:  # die mid-write of the 3rd checkpoint, leaving a temp folder behind
            (out.parent / f".{out.name}.tmp-crash").mkdir()
            raise KeyboardInterrupt("simulated kill")
        real_write(model, out, meta)

    monkeypatch.setattr(collection, "write_checkpoint", crashing_write)
    with pytest.raises(KeyboardInterrupt):
        collection.collect(_tiny_config(), tmp_path)
    assert (tmp_path / "zoo" / "arc_e" / collection.RESUME_FILE).is_file()
    # Corrupt one finished checkpoint as well: it must be detected and redone, never used.
    first = sorted((tmp_path / "zoo" / "arc_e").glob("ckpt_*"))[0]
    (first / zoo.ADAPTER_WEIGHTS).write_bytes(b"garbage")
    monkeypatch.setattr(collection, "write_checkpoint", real_write)
    collection.collect(_tiny_config(), tmp_path)

    a, b = _snapshot(clean_zoo), _snapshot(tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        sd_a, meta_a = a[key]
        sd_b, meta_b = b[key]
        assert meta_a == meta_b, key
        for name in sd_a:
            np.testing.assert_array_equal(sd_a[name], sd_b[name], err_msg=f"{key} {name}")
    assert not list((tmp_path / "zoo" / "arc_e").glob(".ckpt_*"))
    assert not (tmp_path / "zoo" / "arc_e" / collection.RESUME_FILE).exists()


def test_every_adapter_loads_and_changes_logits(clean_zoo):
    from peft import PeftModel

    ref = base_model.BaseModelRef(**zoo.manifest(clean_zoo)["base_model"])
    base, tok = base_model.load(ref)
    ids = tok(["Question: What is the sun?\nAnswer: a star"], return_tensors="pt").input_ids
    with torch.inference_mode():
        base_logits = base(ids).logits
    for task in zoo.tasks(clean_zoo):
        for ckpt in zoo.checkpoints(clean_zoo, task):
            fresh, _ = base_model.load(ref)
            model = PeftModel.from_pretrained(fresh, str(ckpt))
            with torch.inference_mode():
                logits = model(ids).logits
            assert not torch.allclose(logits, base_logits), ckpt


def test_recipe_change_is_refused(clean_zoo):
    config = _tiny_config(lr=1e-2)
    from dnd_jax import errors

    with pytest.raises(errors.ResumeMismatchError, match="another recipe"):
        collection.collect(config, clean_zoo)


def test_unknown_task_fails_before_compute(tmp_path):
    config = _tiny_config()
    with pytest.raises(KeyError, match="unknown task"):
        collection.collect(config, tmp_path, only=["nope"])
    assert not (tmp_path / "base_model").exists()


def test_cli_bad_task_exits_nonzero(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dnd_jax.collect", "--config", "configs/tiny.py", "--workdir",
                        str(tmp_path), "--tasks", "nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown task" in r.stderr


def test_data_seed_reorders_batches_keeps_init_and_old_hashes(clean_zoo, tmp_path):
    config = _tiny_config()
    ref = base_model.resolve(config.base_model, clean_zoo)
    default_hash = collection._recipe_hash(collection._recipe(config, ref))
    assert default_hash == zoo.task_manifest(clean_zoo, "arc_e")["recipe_hash"]
    config.zoo.data_seed = 0  # explicitly the init seed: the same batches, but recorded as another recipe
    assert collection.data_seed(config.zoo) == 0
    assert collection._recipe_hash(collection._recipe(config, ref)) != default_hash
    config.zoo.data_seed = 7
    collection.collect(config, tmp_path, only=["arc_e"])
    first = zoo.checkpoints(clean_zoo, "arc_e")[0]
    other = zoo.checkpoints(tmp_path, "arc_e")[0]
    a, b = zoo.load_state_dict(first), zoo.load_state_dict(other)
    assert any(not np.array_equal(a[k], b[k]) for k in a if ".lora_B." in k)  # other batches, other updates
    # Same LoRA init: A moved only by the few training steps, so it stays close to the shared start.
    for k in (k for k in a if ".lora_A." in k):
        assert np.linalg.norm(a[k] - b[k]) < 0.2 * np.linalg.norm(a[k]), k


def test_shards_together_equal_one_collect(clean_zoo, tmp_path):
    """Shards 0/2 and 1/2 give the same checkpoints and zoo summary as one collect; a shard done with its
    own tasks (names[I::N]) goes on with the others' from the end of the list."""
    config = _tiny_config()
    order = []
    real = collection.collect_task

    def spy(config, workdir, ref, task):
        order.append(task)
        return real(config, workdir, ref, task)

    import unittest.mock

    with unittest.mock.patch.object(collection, "collect_task", spy):
        collection.collect(config, tmp_path, shard="1/2")
        assert order == ["piqa", "arc_e"]  # its own (names[1::2]), then the other shard's
        collection.collect(config, tmp_path, shard="0/2")  # finds both complete
    a, b = _snapshot(clean_zoo), _snapshot(tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        for name, t in a[key][0].items():
            np.testing.assert_array_equal(t, b[key][0][name], err_msg=str((key, name)))
    assert set(zoo.manifest(tmp_path)["tasks"]) == {"arc_e", "piqa"}  # merged, not overwritten
    assert not list(tmp_path.rglob(".dnd_lock"))  # every lock released


@pytest.mark.parametrize("spec", ["2/2", "1", "a/b", "-1/3"])
def test_bad_shard_is_refused(tmp_path, spec):
    with pytest.raises(InputError, match="--shard"):
        collection.collect(_tiny_config(), tmp_path, shard=spec)


def test_shard_leaves_a_task_another_process_holds_then_waits_for_it(tmp_path, capsys, monkeypatch):
    """A task folder locked by another live process is left to it, its holder named, while the shard does
    the rest (here the other shard's task); the shard returns only when that task is complete too: the
    holder here gives up after a few seconds without collecting it, so the shard collects it then.
    Unsharded, the same lock is an error."""
    import time

    tdir = zoo.task_dir(tmp_path, "piqa")

    def hold(seconds):
        return testing.hold_lock(tdir, seconds, "collect")

    monkeypatch.setattr(collection, "LOCK_POLL_S", 0.2)
    holder = hold(6)
    t0 = time.monotonic()
    collection.collect(_tiny_config(), tmp_path, shard="1/2")
    assert holder.wait(timeout=30) == 0
    assert time.monotonic() - t0 >= 3  # it waited for the holder
    out = capsys.readouterr().out
    assert f"piqa: left to the process collecting it ({tdir} is in use by pid {holder.pid}" in out
    assert "waiting for other processes to finish ['piqa']" in out
    assert zoo.tasks(tmp_path) == ["arc_e", "piqa"]  # both complete when the shard returns
    assert set(zoo.manifest(tmp_path)["tasks"]) == {"arc_e", "piqa"}
    holder = hold(60)
    try:
        (tdir / "manifest.json").unlink()
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):  # unsharded, a collect may not leave a task
            collection.collect(_tiny_config(), tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_activation_checkpointing_collects_the_same_zoo(clean_zoo, tmp_path):
    """Recomputing activations in the backward is a process setting: the same recipe hash, the same
    checkpoints (float32 to rounding), recorded in the manifest; a negative value is refused first."""
    config = _tiny_config(activation_checkpointing=1)
    ref = base_model.resolve(config.base_model, clean_zoo)
    assert collection._recipe_hash(collection._recipe(config, ref)) == zoo.task_manifest(clean_zoo, "arc_e")["recipe_hash"]
    calls, forwards = [], []
    real = collection.lora_train.checkpoint_activations

    def spy(model, k):
        real(model, k)
        inner = model.get_base_model()
        calls.append((k, inner.is_activation_checkpointing))
        # a module inside the checkpointed layer starts again when the backward recomputes the layer (a
        # pre-hook: the recompute stops once it has what the backward needs, before forward hooks run)
        inner.model.layers[0].mlp.register_forward_pre_hook(lambda *a: forwards.append(1))

    import unittest.mock

    with unittest.mock.patch.object(collection.lora_train, "checkpoint_activations", spy):
        collection.collect(config, tmp_path, only=["arc_e"])
    assert calls == [(1, True)]
    steps = config.zoo.pretrain_steps + config.zoo.save_steps
    assert len(forwards) == 2 * steps  # really recomputed: each step runs the layer again in its backward
    assert zoo.task_manifest(tmp_path, "arc_e")["activation_checkpointing"] == 1
    a, b = _snapshot(clean_zoo), _snapshot(tmp_path)
    for key in b:
        for name, t in b[key][0].items():
            np.testing.assert_allclose(t, a[key][0][name], rtol=1e-5, atol=1e-7, err_msg=str((key, name)))
    with pytest.raises(InputError, match="activation_checkpointing must be >= 0"):
        collection.collect(_tiny_config(activation_checkpointing=-1), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
