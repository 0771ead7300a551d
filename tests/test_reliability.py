"""Nothing corrupt, nothing silent, nothing lost (issue 16): integrity, fingerprints, locks, errors.

Each test reproduces a fault a hostile user found and asserts the clear refusal (or the safe
behaviour) that replaced it. Generators train a few steps on a synthetic zoo (seconds).
"""
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import tiny
from dnd_jax import assets, checkpoint, cli, errors, generator, locking, testing, trainer, zoo
from dnd_jax.weights import peft_io

REPO = Path(__file__).resolve().parents[1]
ENV = testing.subprocess_env()


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return testing.make_synthetic_zoo(tmp_path_factory.mktemp("zoo"), tasks=("arc_e", "piqa", "boolq"))


def _config(zoo_dir: Path, **overrides):
    c = tiny.get_config()
    c.zoo_workdir = str(zoo_dir)
    c.total_steps, c.ckpt_steps, c.log_steps, c.eval_steps = 6, 3, 3, 3
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def gen_dir(zoo_dir, tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("gen") / "g"
    trainer.train_and_evaluate(_config(zoo_dir), w)
    return w


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    (dst / locking.LOCK_FILE).unlink(missing_ok=True)
    return dst


def _largest(root: Path) -> Path:
    return max((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _cli(module: str, *args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=300)


def _one_line_error(proc) -> str:
    assert proc.returncode == errors.EXIT_USER_ERROR, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


# --- 1. corrupt generators, non-finite weights, NaN predictions ---------------------------------------


def test_flipped_bytes_in_a_generator_checkpoint_are_refused(gen_dir, tmp_path):
    w = _copy(gen_dir, tmp_path)
    target = _largest(w / "generator" / "6" / "params")
    data = bytearray(target.read_bytes())
    data[len(data) // 3: len(data) // 3 + 400] = bytes(b ^ 0x5A for b in data[len(data) // 3: len(data) // 3 + 400])
    target.write_bytes(bytes(data))
    with pytest.raises(errors.IntegrityError, match="does not match its checksum"):
        generator.Generator.load(w)
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is the boiling point of water?\n")
    line = _one_line_error(_cli("dnd_jax.generate", "--checkpoint", w, "--prompts", prompts, "--out", tmp_path / "a"))
    assert "corrupt" in line and not (tmp_path / "a").exists()


def test_deleted_truncated_and_edited_checkpoint_files_are_named(gen_dir, tmp_path):
    w = _copy(gen_dir, tmp_path)
    sdir = w / "generator" / "6"
    victim = _largest(sdir / "params")
    victim.unlink()
    with pytest.raises(errors.IntegrityError, match="incomplete.*missing"):
        checkpoint.load_generator(w)
    shutil.rmtree(w)
    w = _copy(gen_dir, tmp_path)
    victim = _largest(w / "generator" / "6" / "params")
    victim.write_bytes(victim.read_bytes()[:10])
    with pytest.raises(errors.IntegrityError, match="does not match its checksum"):
        checkpoint.load_generator(w)
    shutil.rmtree(w)
    w = _copy(gen_dir, tmp_path)
    meta = next(p for p in (w / "generator" / "6" / "meta").rglob("*") if p.is_file() and b"format" in p.read_bytes())
    doc = json.loads(meta.read_text())
    doc["lora"]["r"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(errors.IntegrityError, match="meta.*checksum"):
        checkpoint.load_generator(w)


def test_edited_metadata_without_checksums_is_caught_by_consistency(gen_dir, tmp_path):
    w = _copy(gen_dir, tmp_path)
    sdir = w / "generator" / "6"
    (sdir / checkpoint.CHECKSUMS).unlink()  # a checkpoint from before checksums
    checkpoint.load_generator(w)  # loads (with a warning)
    meta = next(p for p in (sdir / "meta").rglob("*") if p.is_file() and b"format" in p.read_bytes())
    doc = json.loads(meta.read_text())
    doc["out_shape"][0] += 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(errors.IntegrityError, match="inconsistent"):
        checkpoint.load_generator(w)


def test_non_finite_weights_are_refused_on_load_and_on_generate(gen_dir, tmp_path, monkeypatch):
    import jax

    w = _copy(gen_dir, tmp_path)
    loaded = checkpoint.load_generator(w)
    nan_params = jax.tree.map(lambda x: np.full(x.shape, np.nan, np.float32), loaded.params)
    with checkpoint.manager(w) as mngr:
        import orbax.checkpoint as ocp

        train_item = mngr.restore(6, args=ocp.args.Composite(train=ocp.args.StandardRestore()))["train"]
        norm = {"mean": np.asarray(loaded.normalizer.mean), "std": np.asarray(loaded.normalizer.std)}
        checkpoint.save(mngr, 7, {"params": nan_params, **train_item}, norm, loaded.metadata)
    with pytest.raises(errors.IntegrityError, match="non-finite"):
        checkpoint.load_generator(w)  # latest = 7, checksums fine, weights NaN

    gen = generator.Generator.load(gen_dir)
    gen.params = nan_params  # a generator that diverged
    out = tmp_path / "adapter"
    with pytest.raises(errors.IntegrityError, match="non-finite"):
        gen.generate(["a prompt"] * 4).save(out)
    assert not out.exists()


def test_nan_loglik_is_never_a_prediction(monkeypatch):
    from dnd_jax import evaluation, scoring, tasks

    ex = [tasks.Example(task="t", id="1", prompt="q", choices=("a", "b"), gold=0),
          tasks.Example(task="t", id="2", prompt="q", choices=("a", "b"), gold=1)]
    fake = [{"loglik": [float("nan"), -1.0], "chars": [1, 1]}, {"loglik": [-2.0, -1.0], "chars": [1, 1]}]
    monkeypatch.setattr(scoring, "cloze_scores", lambda *a, **k: fake)
    rec = evaluation._score(None, None, ex, "cloze", 2, 4, False)
    assert rec["pred"][0] == -1 and rec["correct"] == [0, 1] and rec["correct_unnorm"] == [0, 1]


def test_weights_and_zoo_readers_refuse_nan(zoo_dir, tmp_path):
    ckpt = zoo.checkpoints(zoo_dir, "arc_e")[0]
    sd, cfg = peft_io.read_adapter(ckpt)
    key = next(iter(sd))
    sd[key] = sd[key].copy()
    sd[key][0, 0] = np.nan
    with pytest.raises(errors.IntegrityError, match="NaN"):
        peft_io.write_adapter(tmp_path / "nan", sd, **peft_io.write_kwargs_from_config(cfg))
    assert not (tmp_path / "nan").exists()
    from safetensors.numpy import save_file

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    save_file(sd, str(bad / zoo.ADAPTER_WEIGHTS))
    with pytest.raises(errors.IntegrityError, match="NaN"):
        peft_io.read_adapter(bad)
    with pytest.raises(errors.IntegrityError, match="non-finite"):
        zoo.load_state_dict(bad)
    # the CLI: a NaN adapter is refused before anything is written
    line = _one_line_error(_cli("dnd_jax.weights", "roundtrip", bad, "--out", tmp_path / "rt", "--token-shape",
                                "4,16"))
    assert "NaN" in line and not (tmp_path / "rt").exists()


def test_zoo_reader_refuses_an_invalid_checkpoint_of_a_finished_task(zoo_dir, tmp_path):
    z = tmp_path / "z"
    shutil.copytree(zoo_dir, z)
    ckpt = zoo.checkpoints(z, "piqa")[1]
    (ckpt / zoo.ADAPTER_WEIGHTS).write_bytes((ckpt / zoo.ADAPTER_WEIGHTS).read_bytes()[:-8])
    with pytest.raises(errors.IntegrityError, match=f"piqa.*{ckpt.name}"):
        zoo.checkpoints(z, "piqa")
    with pytest.raises(errors.IntegrityError, match=ckpt.name):
        trainer.validate(_config(z), tmp_path / "w")


# --- 2. resume fingerprint ---------------------------------------------------------------------------------


def test_finished_run_with_other_training_tasks_is_refused_then_started_over(zoo_dir, tmp_path):
    w = tmp_path / "w"
    first = trainer.train_and_evaluate(_config(zoo_dir), w)
    other = _config(zoo_dir)
    other.experiment.cross_domain = ("boolq",)  # another training split: arc_e, piqa only
    with pytest.raises(errors.ResumeMismatchError, match="train_tasks"):
        trainer.train_and_evaluate(other, w)
    again = trainer.train_and_evaluate(other, w, start_over=True)
    assert again["metadata"]["train_tasks"] == ["arc_e", "piqa"]
    old = list(w.glob("replaced-*"))
    assert len(old) == 1 and (old[0] / "generator").is_dir() and (old[0] / "metrics.jsonl").is_file()
    assert first["metadata"]["train_tasks"] == ["arc_e", "piqa", "boolq"]
    # the condition settings are part of the data too: other prompts per set is refused, never mixed
    other_conditions = _config(zoo_dir)
    other_conditions.experiment.cross_domain = ("boolq",)
    other_conditions.conditions.max_len = int(other_conditions.conditions.max_len) // 2
    with pytest.raises(errors.ResumeMismatchError, match="data.conditions"):
        trainer.train_and_evaluate(other_conditions, w)
    # so is the encoder: the same settings with another sentence encoder (CLS instead of mean pooling)
    enc = tmp_path / "encoder"
    shutil.copytree(assets.minilm_dir(), enc)
    pooling = json.loads((enc / "1_Pooling/config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]
    pooling |= {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    (enc / "1_Pooling/config.json").write_text(json.dumps(pooling))
    other_encoder = _config(zoo_dir)
    other_encoder.experiment.cross_domain = ("boolq",)
    other_encoder.encoder = dict(kind="path", path=str(enc))
    with pytest.raises(errors.ResumeMismatchError, match="encoder"):
        trainer.train_and_evaluate(other_encoder, w)


def test_killed_run_resumed_on_another_zoo_is_refused(zoo_dir, tmp_path):
    w = tmp_path / "w"
    trainer.train_and_evaluate(_config(zoo_dir), w, max_steps=4)  # a checkpoint at step 3, then "killed"
    z2 = tmp_path / "z2"
    shutil.copytree(zoo_dir, z2)
    prompts = zoo.task_dir(z2, "piqa") / "prompts.jsonl"
    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "one more prompt"}) + "\n")
    with pytest.raises(errors.ResumeMismatchError, match=r"zoo content of \['piqa'\]"):
        trainer.train_and_evaluate(_config(z2), w)
    # the same zoo content at another path resumes fine
    z3 = tmp_path / "z3"
    shutil.copytree(zoo_dir, z3)
    assert trainer.train_and_evaluate(_config(z3), w)["step"] == 6


# --- 3. overwrite only replaces adapter folders --------------------------------------------------------------


def test_overwrite_never_replaces_a_folder_with_user_files(gen_dir, tmp_path):
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("precious")
    with pytest.raises(errors.OutputError, match="not an adapter folder.*notes.txt"):
        peft_io.check_output_dir(out, overwrite=True)
    prompts = tmp_path / "p.txt"
    prompts.write_text("Why is the sky blue?\n")
    line = _one_line_error(_cli("dnd_jax.generate", "--checkpoint", gen_dir, "--prompts", prompts, "--out", out,
                                "--overwrite"))
    assert "not an adapter folder" in line
    assert (out / "notes.txt").read_text() == "precious" and (out / "sub").is_dir()
    # an adapter folder is replaced, only once the new one is complete
    gen = generator.Generator.load(gen_dir)
    a = gen.generate(["Why is the sky blue?"] * 4)
    first = a.save(tmp_path / "ad")
    before = (first / peft_io.ADAPTER_WEIGHTS).read_bytes()
    b = gen.generate(["How do magnets work?"] * 4)
    b.save(tmp_path / "ad", overwrite=True)
    assert (first / peft_io.ADAPTER_WEIGHTS).read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_written_files_follow_the_umask(gen_dir, tmp_path):
    old = os.umask(0o022)
    try:
        gen = generator.Generator.load(gen_dir)
        out = gen.generate(["Why is the sky blue?"] * 4).save(tmp_path / "ad")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_read_only_out_is_refused_before_compute(gen_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(errors.OutputError, match="not a writable folder"):
            peft_io.check_output_dir(ro / "adapter")
    finally:
        ro.chmod(0o755)


# --- 4. one writer per workdir -------------------------------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(zoo_dir, tmp_path):
    w = tmp_path / "w"
    with locking.workdir_lock(w, "train"):
        with locking.workdir_lock(w, "experiment"):  # re-entrant within a process
            pass
        proc = _cli("dnd_jax.train", "--config", REPO / "configs/tiny.py", "--workdir", w,
                    f"--config.zoo_workdir={zoo_dir}")
        line = _one_line_error(proc)
        assert f"pid {os.getpid()}" in line and "in use" in line
        assert (w / locking.LOCK_FILE).is_file()
    assert not (w / locking.LOCK_FILE).exists()


@contextlib.contextmanager
def _lock_held_by_another_process(workdir: Path, verb: str):
    """A live subprocess holding ``workdir``'s lock as ``verb``; yields its Popen, killed on exit."""
    holder = subprocess.Popen([sys.executable, "-c", "import time\nfrom dnd_jax import locking\n"
                               f"with locking.workdir_lock({str(workdir)!r}, {verb!r}):\n"
                               "    print('held', flush=True); time.sleep(120)"],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_every_writer_refuses_a_workdir_locked_by_another_process(zoo_dir, tmp_path):
    """collect, the experiment, zoo_import and train: a second writer is refused before any work, naming the
    holder (before issue 16 two writers interleaved: an Orbax traceback in one, duplicate metrics in the other)."""
    from dnd_jax import collection, pipeline, zoo_importer

    w = tmp_path / "w"
    with _lock_held_by_another_process(w, "train") as holder:
        config = _config(zoo_dir)
        calls = {"collect": lambda: collection.collect(config, w),
                 "experiment": lambda: pipeline.run(config, w),
                 "zoo_import": lambda: zoo_importer.import_zoo(zoo_dir / "zoo", w),
                 "train": lambda: trainer.train_and_evaluate(config, w)}
        for name, call in calls.items():
            with pytest.raises(errors.LockedError, match=f"pid {holder.pid}") as e:
                call()
            assert cli.is_user_error(e.value), name
        assert sorted(p.name for p in w.iterdir()) == [locking.LOCK_FILE]  # nothing else written


def test_scaling_refuses_a_curve_locked_by_another_process(tmp_path):
    """``scaling`` holds ``W/scaling/.dnd_lock`` (README): a second curve run on the same zoo is refused, naming
    the holder, before it resolves the base model or writes anything."""
    from dnd_jax import scaling_curve

    w = testing.make_synthetic_zoo(tmp_path / "w", tasks=("piqa", "arc_e", "boolq"))
    before = sorted(p.relative_to(w) for p in w.rglob("*"))
    with _lock_held_by_another_process(w / "scaling", "scaling") as holder:
        config = tiny.get_config()
        config.experiment.holdouts = ("piqa",)
        config.experiment.pool_order = ("arc_e", "boolq")
        config.experiment.pool_sizes = (2,)
        with pytest.raises(errors.LockedError, match=f"pid {holder.pid}.*scaling") as e:
            scaling_curve.run(config, w, str(tmp_path / "docs"))
        assert cli.is_user_error(e.value)
        after = sorted(p.relative_to(w) for p in w.rglob("*"))
        assert after == sorted(before + [Path("scaling"), Path("scaling") / locking.LOCK_FILE])
        assert not (tmp_path / "docs").exists()


def test_stale_lock_is_taken_over_and_foreign_host_is_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    w = tmp_path / "w"
    w.mkdir()
    import socket

    (w / locking.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "verb": "train"}))
    with locking.workdir_lock(w, "collect"):
        assert locking.holder(w)["pid"] == os.getpid()
    (w / locking.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "verb": "train"}))
    with pytest.raises(errors.LockedError, match="elsewhere.*delete"):
        with locking.workdir_lock(w, "collect"):
            pass


def test_a_late_taker_of_a_stale_lock_leaves_the_fresh_one(tmp_path):
    """Two processes see the same stale lock; the first removes it and links its own. The second, taking
    over the record it saw, must not rename the first one's fresh lock away (two writers on one folder)."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    w = tmp_path / "w"
    w.mkdir()
    path = w / locking.LOCK_FILE
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "verb": "collect"}))
    seen = locking.holder(w)
    fresh = {"pid": os.getpid(), "host": socket.gethostname(), "start": locking._start_time(os.getpid()),
             "verb": "collect"}
    path.write_text(json.dumps(fresh))  # the first taker won meanwhile
    locking._remove_stale(w, path, seen)  # the late taker acts on what it saw
    assert locking.holder(w) == fresh
    path.write_text(json.dumps(seen))
    locking._remove_stale(w, path, seen)  # still the stale record: removed
    assert locking.holder(w) is None


# --- 5-6. clear errors, no silent acceptance -----------------------------------------------------------------


@pytest.mark.parametrize("line,match", [
    ('{"prompt": null}', "must be a string"),
    ('{"prompt": 3}', "must be a string"),
    ('{"prompt": ["a", "b"]}', "must be a string"),
    ('["a"]', "'prompt' field"),
    ("not json", "not valid JSON"),
])
def test_jsonl_prompts_must_be_strings(tmp_path, line, match):
    p = tmp_path / "p.JSONL"  # the suffix is case-insensitive
    p.write_text(line + "\n")
    with pytest.raises(generator.GenerateError, match=match):
        generator.read_prompts(p)


def test_huge_prompt_is_cut_before_tokenizing(gen_dir, monkeypatch):
    from dnd_jax import conditions

    seen = []
    real = conditions.encode_prompts
    monkeypatch.setattr(conditions, "encode_prompts", lambda ps, c, *a, **k: seen.append(max(map(len, ps))) or
                        real(ps, c, *a, **k))
    gen = generator.Generator.load(gen_dir)
    with pytest.warns(UserWarning, match="truncated"):
        gen.generate(["word " * 1_000_000] * 4)
    assert seen and seen[0] <= gen.config.conditions.max_len * generator.MAX_PROMPT_CHARS_PER_TOKEN


def test_adapter_checks_non_lora_rank_and_pairs(zoo_dir, tmp_path):
    from safetensors.numpy import save_file

    ckpt = zoo.checkpoints(zoo_dir, "arc_e")[0]
    sd, cfg = peft_io.read_adapter(ckpt)
    for name, tensors, conf, match in [
        ("full", {"model.layers.0.mlp.up_proj.weight": np.zeros((4, 4), np.float32)}, cfg, "not a LoRA adapter"),
        ("rank", sd, dict(cfg, r=8), "disagree.*r=8"),
        ("pair", {k: v for i, (k, v) in enumerate(sd.items()) if i}, cfg, "partner"),
    ]:
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, str(d / peft_io.ADAPTER_WEIGHTS))
        (d / peft_io.ADAPTER_CONFIG).write_text(json.dumps(conf))
        with pytest.raises(peft_io.AdapterFormatError, match=match):
            peft_io.read_adapter(d)
    line = _one_line_error(_cli("dnd_jax.weights", "inspect", tmp_path / "rank", "--token-shape", "4,16"))
    assert "r=8" in line


def test_evaluate_refuses_negative_limit_and_foreign_adapters(zoo_dir, tiny_base, tmp_path):
    from dnd_jax import baselines, evaluation

    cfg = _config(zoo_dir)
    with pytest.raises(errors.InputError, match="--limit"):
        evaluation.run(cfg, zoo_dir, "arc_e", baseline_names=["base"], limit=-1, progress=False)
    ckpt = zoo.checkpoints(zoo_dir, "arc_e")[0]
    sd, conf = peft_io.read_adapter(ckpt)
    wide = {k: (np.zeros((v.shape[0], v.shape[1] * 2), np.float32) if ".lora_A." in k else v) for k, v in sd.items()}
    peft_io.write_adapter(tmp_path / "other_base", wide, **peft_io.write_kwargs_from_config(conf))
    systems = [baselines.System("other", "adapter", str(tmp_path / "other_base"))]
    with pytest.raises(errors.InputError, match="does not fit base model"):
        evaluation.check_adapters_fit(tiny_base, systems)
    evaluation.check_adapters_fit(tiny_base, [baselines.System("ok", "adapter", str(ckpt))])


def test_evaluate_baselines_follow_the_one_training_split(zoo_dir, tmp_path):
    from dnd_jax import baselines, evaluation, plan

    cfg = _config(zoo_dir)
    cfg.experiment.cross_domain = ("boolq",)
    assert evaluation._default_training_tasks(cfg, zoo_dir, "arc_e", []) == plan.target_training_tasks(cfg, "arc_e")
    assert "boolq" not in evaluation._default_training_tasks(cfg, zoo_dir, "arc_e", [])
    card_dir = tmp_path / "gen_adapter"
    card_dir.mkdir()
    (card_dir / "dnd_generation.json").write_text(json.dumps({"train_tasks": ["piqa"]}))
    sys_ = [baselines.System("dnd", "adapter", str(card_dir))]
    assert evaluation._default_training_tasks(cfg, zoo_dir, "arc_e", sys_) == ["piqa"]


def test_user_errors_exit_2_in_one_line_and_bugs_keep_their_traceback(tmp_path):
    script = tmp_path / "verb.py"
    script.write_text(
        "from absl import flags\n"
        "from dnd_jax import cli, errors\n"
        "def define():\n"
        "    return {'mode': flags.DEFINE_string('mode', 'bug', '')}\n"
        "def body(fl):\n"
        "    if fl['mode'].value == 'user':\n"
        "        raise errors.InputError('bad\\ninput')\n"
        "    if fl['mode'].value == 'missing':\n"
        "        open('/nonexistent/file')\n"
        "    return {}['bug']\n"
        "cli.run(define, body, required=())\n")
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True, env=ENV,  # noqa: E731
                                    cwd=REPO, timeout=120)
    assert _one_line_error(run("--mode=user")) == "error: bad input"
    assert "No such file" in _one_line_error(run("--mode=missing"))
    assert "nope" in _one_line_error(run("--nope"))
    for bad_config in ("configs/nope.py", "configs/tiny.py:bad=1"):  # a config that does not load: one line
        line = _one_line_error(_cli("dnd_jax.train", "--config", bad_config, "--workdir", tmp_path / "w"))
        assert "nope.py" in line or "unknown config arg 'bad=1'" in line, line
    assert "--token-shape" in _one_line_error(_cli("dnd_jax.weights", "inspect", tmp_path, "--token-shape", "8"))
    bug = run("--mode=bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'bug'" in bug.stderr
    assert cli.is_user_error(errors.UnknownTaskError("x")) and not cli.is_user_error(KeyError("x"))


# --- 9. smaller correctness items ------------------------------------------------------------------------------


def test_weight_decay_is_masked_by_name(zoo_dir):
    import jax
    import optax

    params = {"params": {"stage_0": {"bias": np.ones((4, 8), np.float32), "norm": {"scale": np.ones((4, 8), np.float32)},
                                     "p1_width": {"kernel": np.ones((3, 3, 4, 8), np.float32)}}}}
    cfg = _config(zoo_dir, weight_decay=0.5, grad_clip_norm=0.0, warmup_steps=0, lr=1.0)
    tx, _ = trainer.make_optimizer(cfg)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    p = new["params"]["stage_0"]
    assert np.all(p["bias"] == 1.0) and np.all(p["norm"]["scale"] == 1.0)  # 2-D, but not kernels: no decay
    assert np.all(p["p1_width"]["kernel"] < 1.0)
    mults = trainer.decay_multipliers(params, (("params/stage_0/bias", 2.0), (".*/kernel", 1.0)))
    assert mults["params"]["stage_0"]["bias"] == 2.0 and mults["params"]["stage_0"]["norm"]["scale"] == 0.0
    cfg.wd_mults = (("params/stage_0/bias", 2.0), (".*/kernel", 1.0))  # general multipliers
    tx, _ = trainer.make_optimizer(cfg)
    updates, _ = tx.update(zeros, tx.init(params), params)
    p = optax.apply_updates(params, updates)["params"]["stage_0"]
    assert np.all(p["bias"] < p["p1_width"]["kernel"][0, 0, :, :]) and np.all(p["norm"]["scale"] == 1.0)


def test_gram_is_float64_from_the_factors():
    from dnd_jax.weights import lora

    rng = np.random.default_rng(0)
    a1 = rng.normal(size=(4, 64)).astype(np.float32) * 1e3
    b1 = rng.normal(size=(32, 4)).astype(np.float32)
    a2 = (a1 + rng.normal(size=a1.shape).astype(np.float32) * 1e-2).astype(np.float32)
    gram = lora.update_gram([{"m": (a1, b1)}, {"m": (a2, b1)}])
    d1 = b1.astype(np.float64) @ a1.astype(np.float64)
    d2 = b1.astype(np.float64) @ a2.astype(np.float64)
    exact = np.array([[np.sum(d1 * d1), np.sum(d1 * d2)], [np.sum(d2 * d1), np.sum(d2 * d2)]])
    np.testing.assert_allclose(gram, exact, rtol=1e-12)


def test_lora_dropout_resume_is_exact(tiny_base, tmp_path):
    """The torch RNG (LoRA dropout masks) travels in the resume state: resumed == uninterrupted."""
    import torch

    from dnd_jax import base_model, lora_train, tasks

    examples = tasks.load_examples("arc_e", "train", limit=16)

    def fresh():
        model, tok = base_model.load(tiny_base)
        return lora_train.make_lora_model(model, 4, 8, 0.3, ["q_proj", "v_proj"], 0), tok

    kw = dict(answer_format="cloze", max_len=64, batch_size=4, lr=3e-3, weight_decay=0.0, warmup_steps=2,
              total_steps=8, seed=0, keep_step=lambda s: False, on_keep=lambda *a: None)
    m1, tok = fresh()
    r1 = lora_train.train_lora(m1, tok, examples, **kw)

    class Killed(Exception):
        pass

    path = tmp_path / "resume.pt"

    def save(state):
        lora_train.save_resume_state(path, state)
        if state["step"] >= 4:
            raise Killed

    m2, tok = fresh()
    with pytest.raises(Killed):
        lora_train.train_lora(m2, tok, examples, **kw, save_resume=save, resume_every=4)
    # The wall-clock interval alone saves too (slow steps): with a step interval that never fires and a
    # zero-second one, every step leaves a state, the kill lands at step 4 all the same.
    saved_steps = []

    def save_each(state):
        saved_steps.append(state["step"])
        save(state)

    m2b, tok = fresh()
    with pytest.raises(Killed):
        lora_train.train_lora(m2b, tok, examples, **kw, save_resume=save_each, resume_every=1000, resume_every_s=0.0)
    assert saved_steps == [1, 2, 3, 4]
    saved_steps.clear()
    m2c, tok = fresh()
    with pytest.raises(Killed):  # and a long interval leaves it to the step interval
        lora_train.train_lora(m2c, tok, examples, **kw, save_resume=save_each, resume_every=4, resume_every_s=1e9)
    assert saved_steps == [4]
    m3, tok = fresh()
    torch.manual_seed(12345)  # a new process: its RNG is anywhere
    r3 = lora_train.train_lora(m3, tok, examples, **kw, resume=lora_train.load_resume_state(path))
    assert r3["losses"] == r1["losses"]
    a, b = lora_train.trainable_state(m1), lora_train.trainable_state(m3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # CPU time travels too (the speed table's contention-proof figure): the resumed run adds its own
    # steps to the killed run's; a state from before it was recorded gives None, never a partial sum.
    saved = lora_train.load_resume_state(path)
    assert 0 < saved["cpu_time_s"] < r3["cpu_time_s"] and r1["cpu_time_s"] > 0
    old = {k: v for k, v in saved.items() if k != "cpu_time_s"}
    m4, tok = fresh()
    assert lora_train.train_lora(m4, tok, examples, **kw, resume=old)["cpu_time_s"] is None


def test_corrupt_resume_state_is_an_error_not_a_silent_restart(tmp_path):
    from dnd_jax import lora_train

    path = tmp_path / "resume.pt"
    path.write_bytes(b"\x80\x04not a torch file")
    with pytest.raises(errors.IntegrityError, match="resume.pt"):
        lora_train.load_resume_state(path)


def test_import_is_cheap_and_exports_the_public_api():
    code = ("import sys, dnd_jax; heavy = [m for m in ('jax', 'torch', 'peft', 'flax', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert dnd_jax.UserError.__module__ == 'dnd_jax.errors'; print(len(dnd_jax.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import pkgutil

    import dnd_jax

    submodules = {m.name for m in pkgutil.iter_modules(dnd_jax.__path__)}
    assert not set(dnd_jax.__all__) & submodules  # an export must never shadow a module
    for name in dnd_jax.__all__:
        assert getattr(dnd_jax, name) is not None
    assert (REPO / "dnd_jax" / "py.typed").is_file()
    setup = (REPO / "setup.py").read_text()
    for verb in ("collect", "train", "generate", "evaluate", "experiment", "geometry"):
        assert f"dnd-{verb}=dnd_jax.{verb}:cli_main" in setup
        assert callable(__import__(f"dnd_jax.{verb}", fromlist=["cli_main"]).cli_main)


def test_resume_from_a_corrupt_step_is_refused_with_the_way_out(gen_dir, zoo_dir, tmp_path):
    w = _copy(gen_dir, tmp_path)
    victim = _largest(w / "generator" / "6" / "train")
    victim.write_bytes(victim.read_bytes()[:-4])
    with pytest.raises(errors.IntegrityError, match="train/.*resume from step 3"):
        trainer.train_and_evaluate(_config(zoo_dir, total_steps=9), w)
