"""Generation: tiny generator -> peft adapter that loads and acts; batch == one by one; bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from configs import tiny
from dnd_jax import base_model, collection, generator, tasks, trainer, zoo


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny zoo (real LoRAs on the tiny Llama) and a generator trained on it for a few steps."""
    workdir = tmp_path_factory.mktemp("gen")
    config = tiny.get_config()
    collection.collect(config, workdir)
    config.total_steps = 10
    config.ckpt_steps = 10
    trainer.train_and_evaluate(config, workdir / "generator")
    return workdir, workdir / "generator"


def _prompts(task="arc_c", n=8):
    return [e.prompt for e in tasks.load_examples(task, "test", limit=n)]


def test_generated_adapter_loads_in_peft_and_changes_logits(trained, tmp_path):
    from peft import PeftModel

    workdir, gen_dir = trained
    gen = generator.Generator.load(gen_dir)
    adapter = gen.generate(_prompts())
    out = adapter.save(tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    card = (out / "README.md").read_text()
    assert "generator checkpoint" in card and "PeftModel.from_pretrained" in card

    ref = base_model.BaseModelRef(**zoo.manifest(workdir)["base_model"])
    base, tok = base_model.load(ref)
    ids = tok(["Question: Why is the sky blue?\nAnswer:"], return_tensors="pt").input_ids
    with torch.inference_mode():
        base_logits = base(ids).logits.clone()
    model = PeftModel.from_pretrained(base, str(out))
    # peft warns about missing/unexpected keys; here every generated key must land on a LoRA weight.
    loaded = {k for k, _ in model.named_parameters() if "lora_" in k}
    assert len(loaded) == len(adapter.state_dict)
    with torch.inference_mode():
        logits = model(ids).logits
    assert not torch.allclose(logits, base_logits)

    fresh, _ = base_model.load(ref)
    with torch.inference_mode():
        direct = adapter.apply_to(fresh)(ids).logits
    torch.testing.assert_close(direct, logits)


def test_generated_weights_match_the_decoder_output(trained):
    """The adapter is exactly: encode the chosen prompts -> decoder forward -> denormalize -> detokenize."""
    from dnd_jax import conditions
    from dnd_jax.weights import layout as layout_lib

    _, gen_dir = trained
    gen = generator.Generator.load(gen_dir)
    prompts = _prompts()
    adapter = gen.generate(prompts, seed=3)
    assert set(adapter.state_dict) == set(gen.layout.keys)

    chosen = generator.choose_prompts(prompts, gen.num_prompts, seed=3)
    cond = conditions.encode_prompts([p[: gen.config.conditions.max_len * generator.MAX_PROMPT_CHARS_PER_TOKEN]
                                      for p in chosen], gen.config)[None]
    raw = np.asarray(gen.model.apply(gen.params, cond), np.float32)[0]
    tokens = np.asarray(gen.normalizer.denormalize(raw), np.float32) * gen.layout.mask()
    expected = layout_lib.detokenize(gen.layout, tokens)
    for entry in gen.layout.entries:
        got = adapter.state_dict[entry.key]
        assert got.shape == tuple(entry.shape)
        np.testing.assert_allclose(got, expected[entry.key], rtol=1e-5, atol=1e-6)  # jit vs eager rounding only
    # and the tokens of the adapter are the decoder's (padding zero)
    back, _ = layout_lib.tokenize(gen.layout, adapter.state_dict)
    np.testing.assert_allclose(back, tokens, rtol=1e-5, atol=1e-6)
    assert np.abs(tokens).max() > 0


def test_batch_generation_equals_one_by_one(trained):
    _, gen_dir = trained
    gen = generator.Generator.load(gen_dir)
    sets = [_prompts("arc_c"), _prompts("piqa"), _prompts("boolq")]
    batched = gen.generate_many(sets)
    for ps, b in zip(sets, batched):
        single = gen.generate(ps)
        for k in b.state_dict:
            np.testing.assert_allclose(b.state_dict[k], single.state_dict[k], rtol=1e-5, atol=1e-6)
    a, c = batched[0].state_dict, batched[2].state_dict
    assert any(not np.allclose(a[k], c[k]) for k in a)  # different prompts, different adapters


def test_too_few_prompts_repeat_with_warning(trained):
    with pytest.warns(UserWarning, match="repeating"):
        chosen = generator.choose_prompts(["one", "two"], 5, seed=0)
    assert chosen == ["one", "two", "one", "two", "one"]
    assert len(generator.choose_prompts([str(i) for i in range(50)], 5, seed=0)) == 5


def test_long_prompts_warn_about_truncation(trained):
    _, gen_dir = trained
    gen = generator.Generator.load(gen_dir)
    with pytest.warns(UserWarning, match="truncated"):
        gen.generate(["word " * 2000] * 4)


@pytest.mark.parametrize("content,match", [
    (b"", "no prompts"),
    (b"\n   \n\n", "no prompts"),
    (b"caf\xe9 au lait\n", "not valid UTF-8"),
])
def test_bad_prompt_files(tmp_path, content, match):
    path = tmp_path / "prompts.txt"
    path.write_bytes(content)
    with pytest.raises(generator.GenerateError, match=match):
        generator.read_prompts(path)
    with pytest.raises(generator.GenerateError, match="does not exist"):
        generator.read_prompts(tmp_path / "missing.txt")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "no prompt field"}\n')
    with pytest.raises(generator.GenerateError, match="'prompt' field"):
        generator.read_prompts(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dnd_jax.generate", *map(str, args)], capture_output=True, text=True)


def test_cli_writes_adapters_and_refuses_bad_input(trained, tmp_path):
    _, gen_dir = trained
    p1, p2 = tmp_path / "a.txt", tmp_path / "b.jsonl"
    p1.write_text("\n".join(_prompts("arc_c")) + "\n")
    p2.write_text("\n".join(json.dumps({"prompt": p}) for p in _prompts("piqa")) + "\n")
    r = _cli("--checkpoint", gen_dir, "--prompts", p1, "--out", tmp_path / "o1", "--prompts", p2, "--out",
             tmp_path / "o2", "--json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o1" / "adapter_model.safetensors").is_file() and (tmp_path / "o2" / "README.md").is_file()
    assert '"decode_s"' in r.stdout and '"wall_s"' in r.stdout

    r = _cli("--checkpoint", gen_dir, "--prompts", p1, "--out", tmp_path / "o1")  # exists, no --overwrite
    assert r.returncode == 2 and "--overwrite" in r.stderr

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = _cli("--checkpoint", gen_dir, "--prompts", empty, "--out", tmp_path / "o3")
    assert r.returncode == 2 and "no prompts" in r.stderr and not (tmp_path / "o3").exists()

    r = _cli("--checkpoint", tmp_path, "--prompts", p1, "--out", tmp_path / "o4")  # no generator there
    assert r.returncode == 2 and "no generator" in r.stderr and not (tmp_path / "o4").exists()
    assert not list(tmp_path.glob(".o*"))  # no temp folders left behind


def test_task_prompts_are_never_the_questions_evaluate_scores(trained, tmp_path):
    """``generate --task T`` (default ``--split unscored``) conditions on T's test prompts past the
    generator config's ``eval.limit`` (the ones `evaluate` does not score), as the experiment does;
    ``--split test`` is the whole split, by request."""
    from types import SimpleNamespace

    from dnd_jax import generate, plan, task_files

    _, gen_dir = trained
    config = task_files.generator_training_config(gen_dir)
    limit = config.eval.limit
    assert limit > 0

    def flags(**kw):
        base = dict(checkpoint=str(gen_dir), step=None, prompts=[], task=["arc_c"], split="unscored",
                    out=[str(tmp_path / "o")], overwrite=False)
        return {k: SimpleNamespace(value=v) for k, v in (base | kw).items()}

    test = [e.prompt for e in tasks.load_examples("arc_c", "test")]
    (prompts, _), = generate._jobs(flags(), config)
    assert prompts == plan.condition_prompts(config, "arc_c") == test[limit:]
    assert not set(prompts) & set(test[:limit])
    (prompts, _), = generate._jobs(flags(split="test"), config)
    assert prompts == test
    r = _cli("--checkpoint", gen_dir, "--task", "arc_c", "--out", tmp_path / "cli")  # the verb's default
    assert r.returncode == 0, r.stderr
