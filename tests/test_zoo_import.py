"""Importing plain peft adapters + prompts files as a zoo: exact copies, shared-layout checks, nothing skipped silently."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from configs import tiny
from dnd_jax import base_model, generator, trainer, zoo, zoo_importer
from dnd_jax.weights import peft_io

TARGETS = ["q_proj", "v_proj"]


def _save_adapter(ref, out, seed, r=4, targets=TARGETS, alpha=None, **cfg_kwargs):
    """A real peft adapter of the tiny Llama (save_pretrained), its B factors made non-zero."""
    from peft import LoraConfig, get_peft_model

    model, _ = base_model.load(ref)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=targets,
                                                  task_type="CAUSAL_LM", **cfg_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_base):
    """alpha: 3 checkpoints (checkpoint-N folders) + prompts.txt inside; beta: one adapter + beta.jsonl beside."""
    src = tmp_path_factory.mktemp("src") / "adapters"
    for i, step in enumerate((100, 20, 300)):
        _save_adapter(tiny_base, src / "alpha" / f"checkpoint-{step}", seed=i)
    (src / "alpha" / "prompts.txt").write_text("How many legs does a spider have?\n\nWhat is 2 + 2?\nName a color.\n")
    _save_adapter(tiny_base, src / "beta", seed=10)
    (src / "beta.jsonl").write_text("\n".join(json.dumps({"prompt": f"Translate word {i} to French."})
                                              for i in range(6)) + "\n")
    return src


def _copy(src, tmp_path):
    dst = tmp_path / "adapters"
    shutil.copytree(src, dst)
    return dst


def test_import_copies_every_adapter_exactly_and_train_generate_load(source, tmp_path, tiny_base):
    workdir = tmp_path / "w"
    manifest = zoo_importer.import_zoo(source, workdir, base_model_path=tiny_base.path, log=lambda *_: None)
    assert zoo.tasks(workdir) == ["alpha", "beta"] and manifest["skipped"] == []
    steps = [zoo.checkpoint_meta(c)["step"] for c in zoo.checkpoints(workdir, "alpha")]
    assert steps == [20, 100, 300]  # ordered by the number in the folder name, not by string order
    for task, srcs in (("alpha", ["checkpoint-20", "checkpoint-100", "checkpoint-300"]), ("beta", [""])):
        for ckpt, name in zip(zoo.checkpoints(workdir, task), srcs):
            original, cfg = peft_io.read_adapter(source / task / name)
            imported = zoo.load_state_dict(ckpt)
            assert imported.keys() == original.keys()
            for k in original:
                np.testing.assert_array_equal(imported[k], original[k])
            assert zoo.adapter_config(ckpt)["r"] == cfg["r"] == 4
    assert zoo.prompts(workdir, "alpha") == ["How many legs does a spider have?", "What is 2 + 2?", "Name a color."]
    assert len(zoo.prompts(workdir, "beta")) == 6
    tm = zoo.task_manifest(workdir, "alpha")
    assert tm["lora"]["target_modules"] == TARGETS and tm["base_model"]["sha"] == tiny_base.sha

    # train accepts the imported tasks (not in the task registry), generate writes a loadable adapter
    config = tiny.get_config()
    config.tasks = ("alpha", "beta")
    config.total_steps, config.ckpt_steps, config.eval_steps = 4, 4, 4
    config.val_checkpoints_per_task = 0  # beta has a single checkpoint: all of it trains
    trainer.train_and_evaluate(config, workdir / "generator")
    adapter = generator.Generator.load(workdir / "generator").generate(["What is 3 + 5?", "Name an animal."])
    out = adapter.save(tmp_path / "generated")
    from peft import PeftModel

    base, tok = base_model.load(tiny_base)
    model = PeftModel.from_pretrained(base, str(out))
    assert len([k for k, _ in model.named_parameters() if "lora_" in k]) == len(adapter.state_dict) == 8
    with torch.inference_mode():
        assert torch.isfinite(model(tok(["Hi"], return_tensors="pt").input_ids).logits).all()


def test_the_odd_adapter_out_is_named_and_nothing_is_written(source, tmp_path, tiny_base):
    src = _copy(source, tmp_path)
    shutil.rmtree(src / "alpha" / "checkpoint-100")
    _save_adapter(tiny_base, src / "alpha" / "checkpoint-100", seed=3, r=8)  # another rank
    with pytest.raises(zoo_importer.ZooImportError, match=r"checkpoint-100: layout differs from .*shape \(8, 32\)"):
        zoo_importer.import_zoo(src, tmp_path / "w", log=lambda *_: None)
    assert not (tmp_path / "w" / "zoo").exists()

    shutil.rmtree(src / "alpha" / "checkpoint-100")
    _save_adapter(tiny_base, src / "alpha" / "checkpoint-100", seed=3, targets=["q_proj", "k_proj"])
    with pytest.raises(zoo_importer.ZooImportError, match=r"checkpoint-100: layout differs .*(missing|unexpected) tensor"):
        zoo_importer.import_zoo(src, tmp_path / "w", log=lambda *_: None)


def _nan_adapter(path):
    from safetensors.torch import load_file, save_file

    w = path / "adapter_model.safetensors"
    t = load_file(str(w))
    k = sorted(t)[0]
    t[k][0, 0] = float("nan")
    save_file(t, str(w))


@pytest.mark.parametrize("damage,match", [
    (lambda s: (s / "alpha/checkpoint-20/adapter_model.safetensors").rename(s / "alpha/checkpoint-20/adapter_model.bin"),
     r"checkpoint-20: no adapter_model.safetensors \(found adapter_model.bin: pickled weights are never read"),
    (lambda s: _nan_adapter(s / "alpha/checkpoint-20"), r"checkpoint-20: tensor .* has 1 non-finite values"),
    (lambda s: (s / "beta.jsonl").unlink(), r"task 'beta': no prompts file"),
    (lambda s: (s / "alpha/prompts.txt").write_bytes(b"caf\xe9\n"), r"prompts.txt is not valid UTF-8"),
    (lambda s: (s / "alpha/checkpoint-20/adapter_config.json").write_text("{not json"), r"adapter_config.json: not valid JSON"),
    (lambda s: (s / "gamma/notes").mkdir(parents=True), r"gamma/notes: not a peft adapter folder"),
])
def test_bad_sources_fail_naming_the_folder(source, tmp_path, damage, match):
    src = _copy(source, tmp_path)
    damage(src)
    with pytest.raises(zoo_importer.ZooImportError, match=match):
        zoo_importer.import_zoo(src, tmp_path / "w", log=lambda *_: None)
    assert not (tmp_path / "w" / "zoo").exists()


def test_unsupported_lora_features_are_refused(tiny_base, tmp_path):
    src = tmp_path / "adapters"
    _save_adapter(tiny_base, src / "dora", seed=0, use_dora=True)
    (src / "dora.txt").write_text("a prompt\n")
    with pytest.raises(zoo_importer.ZooImportError, match=r"dora: use_dora=True is not supported"):
        zoo_importer.import_zoo(src, tmp_path / "w", log=lambda *_: None)


def test_skip_invalid_reports_every_skipped_checkpoint_with_its_reason(source, tmp_path):
    src = _copy(source, tmp_path)
    _nan_adapter(src / "alpha" / "checkpoint-20")
    (src / "alpha" / "checkpoint-300" / "adapter_model.safetensors").unlink()
    logged = []
    manifest = zoo_importer.import_zoo(src, tmp_path / "w", skip_invalid=True, log=logged.append)
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"checkpoint-20", "checkpoint-300"}
    assert "non-finite" in reasons["checkpoint-20"] and "no adapter_model.safetensors" in reasons["checkpoint-300"]
    assert [zoo.checkpoint_meta(c)["step"] for c in zoo.checkpoints(tmp_path / "w", "alpha")] == [100]
    assert sum("skipped" in line for line in logged) == 2


def test_existing_tasks_are_never_replaced(source, tmp_path):
    workdir = tmp_path / "w"
    zoo_importer.import_zoo(source, workdir, log=lambda *_: None)
    before = zoo.load_state_dict(zoo.checkpoints(workdir, "beta")[0])
    with pytest.raises(zoo_importer.ZooImportError, match="already in"):
        zoo_importer.import_zoo(source, workdir, log=lambda *_: None)
    after = zoo.load_state_dict(zoo.checkpoints(workdir, "beta")[0])
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_zoo_keeps_one_lora_config(source, tmp_path, tiny_base):
    """Same shapes, another alpha: refused when importing into the zoo, and by train if mixed in by hand."""
    import shutil

    other = tmp_path / "other"
    _save_adapter(tiny_base, other / "gamma", seed=5, alpha=16)  # alpha 16 instead of 8, same tensor shapes
    (other / "gamma.txt").write_text("a prompt\nanother prompt\n")
    workdir = tmp_path / "w"
    zoo_importer.import_zoo(source, workdir, log=lambda *_: None)
    with pytest.raises(zoo_importer.ZooImportError, match=r"the zoo at .* has \(4, 8.0"):
        zoo_importer.import_zoo(other, workdir, log=lambda *_: None)
    assert zoo.tasks(workdir) == ["alpha", "beta"]
    zoo_importer.import_zoo(other, tmp_path / "w2", log=lambda *_: None)
    shutil.copytree(zoo.task_dir(tmp_path / "w2", "gamma"), zoo.task_dir(workdir, "gamma"))
    config = tiny.get_config()
    config.tasks = ("alpha", "gamma")
    config.val_checkpoints_per_task = 0
    with pytest.raises(trainer.ConfigError, match="one generator needs one LoRA config"):
        trainer.validate(config, workdir)


def test_cli(source, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "dnd_jax.zoo_import", *map(str, args)], capture_output=True,
                              text=True)

    r = run("--src", source, "--workdir", tmp_path / "w")
    assert r.returncode == 0, r.stderr
    assert "alpha: 3 checkpoint(s)" in r.stdout and zoo.tasks(tmp_path / "w") == ["alpha", "beta"]
    r = run("--src", tmp_path / "nowhere", "--workdir", tmp_path / "w2")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "is not a folder" in r.stderr
