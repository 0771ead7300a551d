"""Evaluation harness: scoring by hand, batching, mc parsing, exact merged LoRA, cache, no leaks, CLI."""

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from configs import tiny
from dnd_jax import assets, base_model, baselines, evaluation, scoring, tasks, testing, zoo

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- mc parsing (pure) --------------------------------------------------------------------------------

LETTERS = ("A", "B", "C", "D")
BOOL = ("False", "True")


@pytest.mark.parametrize("text,labels,expected", [
    ("[C]", LETTERS, 2),
    ("[c]", LETTERS, 2),
    ("  [B] because ...", LETTERS, 1),
    ("C", LETTERS, 2),
    ("C.", LETTERS, 2),
    ("D) the last one", LETTERS, 3),
    ("(A)", LETTERS, 0),
    ("Answer: C", LETTERS, 2),
    ("The answer is B.", LETTERS, 1),
    ("answer: [D]", LETTERS, 3),
    ("[True]", BOOL, 1),
    ("[false]", BOOL, 0),
    ("True", BOOL, 1),
    ("yes", BOOL, 1),
    ("No.", BOOL, 0),
    ("Answer: yes", BOOL, 1),
    ("[E]", LETTERS, None),  # not a label of this question
    ("Cats are mammals", LETTERS, None),
    ("a bird", LETTERS, None),  # a lower-case leading 'a' is an article
    ("", LETTERS, None),
    ("::::", LETTERS, None),
    ("maybe", BOOL, None),
])
def test_parse_mc_answer(text, labels, expected):
    assert scoring.parse_mc_answer(text, labels) == expected


# --- bootstrap (pure) ---------------------------------------------------------------------------------


def test_bootstrap_ci_and_paired():
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.6).astype(int)
    lo, hi = scoring.bootstrap_ci(a, n_boot=500, seed=1)
    assert lo < a.mean() < hi and hi - lo < 0.2
    assert scoring.bootstrap_ci(a, 500, 1) == (lo, hi)  # seeded
    same = scoring.paired_bootstrap(a, a, n_boot=500)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["p"] == 1.0 and same["n"] == 200
    better = np.maximum(a, (rng.random(200) < 0.5).astype(int))
    pb = scoring.paired_bootstrap(better, a, n_boot=500)
    assert pb["diff"] > 0 and pb["ci"][0] > 0 and pb["p"] < 0.05
    with pytest.raises(ValueError):
        scoring.paired_bootstrap(a, a[:10])


# --- cloze and mc on the tiny model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_base):
    return base_model.load(tiny_base)


@pytest.fixture(scope="module")
def mixed_examples():
    # Different numbers of choices and lengths in one batch.
    return tasks.load_examples("piqa", "test", 3) + tasks.load_examples("arc_e", "test", 3)


def test_cloze_equals_hand_computation(tiny_model, mixed_examples):
    model, tok = tiny_model
    batched = scoring.cloze_scores(model, tok, mixed_examples, batch_size=4, progress=False)
    single = scoring.cloze_scores(model, tok, mixed_examples, batch_size=1, progress=False)
    for ex, b, s in zip(mixed_examples, batched, single, strict=True):
        ctx = tok(tasks.cloze_context(ex), add_special_tokens=False)["input_ids"]
        hand = []
        for cont in tasks.cloze_continuations(ex):
            cids = tok(cont, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cids])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            hand.append(sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cids)))
        np.testing.assert_allclose(b["loglik"], hand, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(s["loglik"], hand, rtol=1e-4, atol=1e-3)  # batched == unbatched
        assert b["chars"] == [len(c) for c in tasks.cloze_continuations(ex)]  # normalizer: characters
        raw, norm = scoring.cloze_predictions([b])
        assert raw == [int(np.argmax(hand))]
        assert norm == [int(np.argmax(np.array(hand) / np.array(b["chars"])))]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_packed_cloze_equals_one_choice_at_a_time(tiny_model, mixed_examples, batch_size):
    """Packing a question's choices into one row (shared context once, 4D mask, restarted positions)
    gives each choice's own log-likelihood; WinoGrande's choices differ inside the context."""
    model, tok = tiny_model
    examples = mixed_examples + tasks.load_examples("winogrande", "test", 3)
    plain = scoring.cloze_scores(model, tok, examples, batch_size=1, progress=False)
    packed = scoring.cloze_scores(model, tok, examples, batch_size=batch_size, progress=False, packed=True,
                                  pack_min_saving=0.0)
    for ex, a, b in zip(examples, plain, packed, strict=True):
        assert len(b["loglik"]) == len(ex.choices)
        np.testing.assert_allclose(b["loglik"], a["loglik"], rtol=1e-5, atol=1e-4, err_msg=ex.id)
        assert b["tokens"] == a["tokens"]
    assert scoring.cloze_predictions(packed) == scoring.cloze_predictions(plain)


def test_packing_saving():
    shared = [([1, 2, 3, 4, 5, 6], 1), ([1, 2, 3, 4, 5, 7], 1)]  # 5 shared context tokens of 6
    assert scoring.packing_saving([shared]) == pytest.approx(5 / 12)
    apart = [([1, 2, 3], 1), ([9, 2, 3], 1)]  # nothing shared (WinoGrande-like start)
    assert scoring.packing_saving([apart]) == 0.0
    never_scored = [([1, 2, 3], 2), ([1, 2, 3], 2)]  # identical, but only 1 context token may be shared
    assert scoring.packing_saving([never_scored]) == pytest.approx(1 / 6)


def test_mc_batched_equals_unbatched(tiny_model, mixed_examples):
    model, tok = tiny_model
    batched = scoring.mc_generate(model, tok, mixed_examples, batch_size=6, max_new_tokens=3, progress=False)
    single = [scoring.mc_generate(model, tok, [ex], batch_size=1, max_new_tokens=3, progress=False)[0]
              for ex in mixed_examples]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


# --- a tiny zoo built by hand -------------------------------------------------------------------------


def _write_ckpt(model_ref, out, seed: int, r: int = 4, alpha: float = 8.0) -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = base_model.load(model_ref)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS),
                                                  task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    peft_model.save_pretrained(str(out))
    sha = assets.file_sha256(out / zoo.ADAPTER_WEIGHTS)
    assets.write_json_atomic(out / zoo.CKPT_META, {"step": int(out.name.split("_")[1]), "loss": 1.0, "sha256": sha})


ZOO_TASKS = {"arc_e": 1, "boolq": 2, "piqa": 3}


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Workdir with the tiny config's base model and a 3-task zoo (2 checkpoints each)."""
    workdir = tmp_path_factory.mktemp("eval_zoo")
    ref = base_model.resolve(tiny.get_config().base_model, workdir)
    for task, seed in ZOO_TASKS.items():
        tdir = zoo.task_dir(workdir, task)
        tdir.mkdir(parents=True)
        for step in (1, 2):
            _write_ckpt(ref, tdir / zoo.ckpt_name(step), seed * 10 + step)
        prompts = [e.prompt for e in tasks.load_examples(task, "train", 6)]
        (tdir / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        assets.write_json_atomic(tdir / "manifest.json", {"task": task, "train_wall_time_s": 12.5 * seed,
                                                          "total_steps": 2})
    return workdir, ref


def _scaled_delta(sd: dict, cfg: dict, a_key: str) -> np.ndarray:
    """dW = (alpha / r) B A, written out here (not dnd_jax.weights.lora's): the merges are checked against it."""
    assert not cfg.get("use_rslora")
    return (cfg["lora_alpha"] / cfg["r"]) * sd[a_key.replace("lora_A", "lora_B")] @ sd[a_key]


def test_merged_adapter_is_exact_average(tiny_zoo, tmp_path):
    from peft import PeftModel

    workdir, ref = tiny_zoo
    ckpts = [zoo.final_checkpoint(workdir, t) for t in ("arc_e", "boolq")]
    merged = baselines.merge_adapters(ckpts, tmp_path / "merged")
    cfg = zoo.adapter_config(merged)
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16.0  # rank r*K, scaling alpha/r unchanged
    srcs = [(zoo.load_state_dict(c), zoo.adapter_config(c)) for c in ckpts]
    msd = zoo.load_state_dict(merged)
    a_keys = [k for k in msd if ".lora_A." in k]
    assert len(a_keys) == 2 * len(TARGETS)
    expected = {}
    for k in a_keys:
        expected[k] = np.mean([_scaled_delta(sd, c, k) for sd, c in srcs], axis=0)
        np.testing.assert_allclose(_scaled_delta(msd, cfg, k), expected[k], rtol=1e-5, atol=1e-6)

    # peft loads it and applies exactly that update.
    base, tok = base_model.load(ref)
    pm = PeftModel.from_pretrained(base_model.load(ref)[0], str(merged))
    modules = dict(pm.named_modules())
    for k in a_keys:
        mod = modules[k.split(".lora_A.")[0]]
        np.testing.assert_allclose(mod.get_delta_weight("default").detach().numpy(), expected[k], rtol=1e-5, atol=1e-6)
    manual = base_model.load(ref)[0]
    params = dict(manual.named_parameters())
    with torch.no_grad():
        for k in a_keys:
            name = k.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
            params[name] += torch.from_numpy(expected[k])
    ids = torch.tensor([tok("Question: why is the sky blue?\nAnswer:", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        got, want, plain = pm(input_ids=ids).logits, manual(input_ids=ids).logits, base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - plain).abs().max() > 1e-2  # the adapter really acts


def test_a_merge_another_process_is_writing_is_waited_for_not_written_twice(tiny_zoo, tmp_path, monkeypatch):
    """Experiment shards helping each other build the same baselines: merge_adapters writes under a file lock
    and re-checks inside it, so a process that finds another writing the merge waits, then uses its folder."""
    import subprocess
    import sys
    import threading

    workdir, _ = tiny_zoo
    ckpts = [zoo.final_checkpoint(workdir, t) for t in ("arc_e", "boolq")]
    ref = baselines.merge_adapters(ckpts, tmp_path / "ref")
    out = tmp_path / "shared" / "merged"
    out.parent.mkdir()
    code = ("import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); "
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out.parent / ".merged.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(baselines, "_write_merge", lambda *a: pytest.fail("wrote a merge another process wrote"))
        got, errors = [], []

        def merge():
            try:
                got.append(baselines.merge_adapters(ckpts, out))
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        worker = threading.Thread(target=merge)
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not errors  # waiting for the writer's lock
        shutil.copytree(ref, out)  # the other process writes the merge, then releases its lock
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
        worker.join(timeout=60)
        assert not errors, errors
        assert got == [out]
        assert (out / zoo.ADAPTER_WEIGHTS).read_bytes() == (ref / zoo.ADAPTER_WEIGHTS).read_bytes()
    finally:
        holder.kill()
        holder.wait()


def test_baselines_from_zoo(tiny_zoo, tmp_path):
    workdir, _ = tiny_zoo

    def embed(texts):  # a bag-of-characters embedder: deterministic and fast
        out = np.zeros((len(texts), 128))
        for i, t in enumerate(texts):
            for ch in t.lower():
                out[i, ord(ch) % 128] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    target = zoo.prompts(workdir, "boolq")  # identical prompt sets: cosine 1
    systems = baselines.build_baselines(workdir, "piqa", target_prompts=target, embed=embed,
                                        adapter_root=tmp_path)
    by_name = {s.name: s for s in systems}
    assert list(by_name) == ["base", "lora:arc_e", "lora:boolq", "merged", "simmerge", "nearest", "oracle"]
    w = by_name["simmerge"].info["weights"]  # boolq's prompts are the target's: it dominates the softmax
    assert w["boolq"] > w["arc_e"] and sum(w.values()) == pytest.approx(1.0)
    assert by_name["base"].adapter is None
    assert by_name["lora:arc_e"].adapter == str(zoo.final_checkpoint(workdir, "arc_e"))
    assert by_name["nearest"].info["source_task"] == "boolq"
    assert by_name["nearest"].info["cosine"]["boolq"] == pytest.approx(1.0)
    assert by_name["oracle"].adapter == str(zoo.final_checkpoint(workdir, "piqa"))
    assert by_name["oracle"].info["train_wall_time_s"] == 37.5
    assert by_name["merged"].info["source_tasks"] == ["arc_e", "boolq"]
    with pytest.raises(ValueError):
        baselines.build_baselines(workdir, "piqa", ["nearest"])  # no target prompts
    with pytest.warns(UserWarning):
        assert baselines.build_baselines(workdir, "obqa", ["oracle"]) == []


# --- evaluation: cache and isolation ------------------------------------------------------------------


def test_cached_results_are_reused(tiny_zoo, tmp_path, monkeypatch):
    workdir, ref = tiny_zoo
    adapter = zoo.final_checkpoint(workdir, "arc_e")
    kw = dict(limit=4, batch_size=4, cache_dir=tmp_path, max_new_tokens=3, n_boot=200, progress=False)
    first = evaluation.evaluate_adapter_metrics(ref, adapter, "piqa", ["cloze", "mc"], **kw)
    assert not first["cloze"]["cached"] and len(list(tmp_path.glob("*.json"))) == 2

    def boom(*a, **k):
        raise AssertionError("a cached result must not run the model")

    monkeypatch.setattr(scoring, "cloze_scores", boom)
    monkeypatch.setattr(scoring, "mc_generate", boom)
    monkeypatch.setattr(evaluation, "_load_base", boom)
    for metric in ("cloze", "mc"):
        again = evaluation.evaluate_adapter(ref, adapter, "piqa", metric, **kw)
        assert again["cached"]
        for k in ("accuracy", "n", "ci", "correct", "pred"):
            assert again[k] == first[metric][k]
    assert first["cloze"]["n"] == 4 and len(first["cloze"]["correct"]) == 4
    assert 0.0 <= first["mc"]["valid_rate"] <= 1.0
    with pytest.raises(AssertionError):  # another limit is another key
        evaluation.evaluate_adapter(ref, adapter, "piqa", "cloze", **(kw | {"limit": 3}))


def test_an_entry_another_process_holds_is_skipped_waited_for_or_taken_over(tiny_zoo, tmp_path, monkeypatch, capsys):
    """Processes sharing a cache never score one entry twice: an entry whose lock another live process holds
    is left out (``held="skip"``) or waited for, then read as that process wrote it (``"wait"``); a holder
    killed with SIGKILL leaves a stale lock that is taken over, and the entry is scored here."""
    workdir, ref = tiny_zoo
    adapter = zoo.final_checkpoint(workdir, "arc_e")
    kw = dict(limit=4, batch_size=4, max_new_tokens=3, n_boot=200, progress=False)
    want = evaluation.evaluate_adapter_metrics(ref, adapter, "piqa", ["cloze", "mc"], cache_dir=tmp_path / "a", **kw)
    (entry,) = (tmp_path / "a").glob("piqa-cloze-*.json")  # the key has no folder in it: the same name anywhere
    cache = tmp_path / "b"

    holder = testing.hold_lock(evaluation.entry_lock_dir(cache / entry.name), 600, "evaluate")
    try:
        got = evaluation.evaluate_adapter_metrics(ref, adapter, "piqa", ["cloze", "mc"], cache_dir=cache,
                                                  held="skip", **kw)
        assert list(got) == ["mc"] and not (cache / entry.name).exists()  # cloze left to its holder
        assert got["mc"]["correct"] == want["mc"]["correct"]

        waits = []

        def holder_finishes(seconds):  # while we wait: the holder writes the entry and releases its lock
            if not waits:
                shutil.copy(entry, cache / entry.name)
                holder.stdin.close()
                assert holder.wait(timeout=60) == 0
            waits.append(seconds)

        monkeypatch.setattr(evaluation, "_sleep", holder_finishes)
        monkeypatch.setattr(scoring, "cloze_scores", lambda *a, **k: pytest.fail("scored an entry another wrote"))
        got = evaluation.evaluate_adapter_metrics(ref, adapter, "piqa", ["cloze", "mc"], cache_dir=cache, **kw)
        assert waits == [evaluation.ENTRY_POLL_S]  # it waited once, then read the entry
        assert got["cloze"]["cached"] and got["cloze"]["correct"] == want["cloze"]["correct"]
        assert f"waiting for {entry.name}" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.undo()

    (cache / entry.name).unlink()
    holder = testing.hold_lock(evaluation.entry_lock_dir(cache / entry.name), 600, "evaluate")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    got = evaluation.evaluate_adapter_metrics(ref, adapter, "piqa", ["cloze"], cache_dir=cache, held="skip", **kw)
    assert not got["cloze"]["cached"] and got["cloze"]["correct"] == want["cloze"]["correct"]
    assert json.loads((cache / entry.name).read_text())["correct"] == want["cloze"]["correct"]
    with pytest.raises(ValueError, match="held must be one of"):
        evaluation.evaluate_adapter_metrics(ref, adapter, "piqa", ["cloze"], cache_dir=cache, held="later", **kw)


def test_adapters_do_not_leak(tiny_zoo):
    workdir, ref = tiny_zoo
    a = zoo.final_checkpoint(workdir, "arc_e")
    b = zoo.final_checkpoint(workdir, "boolq")
    kw = dict(limit=3, batch_size=4, cache_dir=None, progress=False)

    def loglik(adapter):
        return evaluation.evaluate_adapter(ref, adapter, "piqa", "cloze", **kw)["loglik"]

    evaluation._LOADED.clear()
    b_fresh = loglik(b)
    base_before = loglik(None)
    snapshot = {k: v.clone() for k, v in evaluation._load_base(ref)[0].state_dict().items()}
    with_a = loglik(a)
    assert not np.allclose(with_a, base_before)
    assert loglik(None) == base_before  # the base is back to itself, bit for bit
    assert loglik(b) == b_fresh  # b after a == b in a fresh process state
    for k, v in evaluation._load_base(ref)[0].state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_training_loras_scored_on_the_named_metrics_only(tiny_zoo, tmp_path):
    """eval.training_lora_metrics: the individual training LoRAs (most of a decoding metric's cost) are scored
    on those metrics only; every other system on all; a later run with every metric reuses the cache and
    adds only the missing cells, which equal a one-pass run's."""
    workdir = tmp_path / "w"  # the zoo without other tests' evaluation cache
    shutil.copytree(tiny_zoo[0], workdir, ignore=shutil.ignore_patterns("eval_cache"))
    config = tiny.get_config()
    config.eval.training_lora_metrics = ("cloze",)
    dnd = zoo.task_dir(workdir, "piqa") / zoo.ckpt_name(1)
    kw = dict(training_tasks=["arc_e", "boolq"], dnd_adapter=dnd, limit=4, progress=False)
    part = evaluation.evaluate_target(config, workdir, "piqa", out_dir=tmp_path / "a", **kw)
    loras = {"lora:arc_e", "lora:boolq", "best_training_lora", evaluation.MEAN_TRAINING}
    assert loras <= set(part["systems"])
    for name, per in part["systems"].items():
        assert set(per) == ({"cloze"} if name in loras else {"cloze", "mc"}), name
    assert "dnd - training_loras_mean" in part["paired"] and set(part["paired"]["dnd - training_loras_mean"]) == {"cloze"}
    assert set(part["paired"]["dnd - merged"]) == {"cloze", "mc"}
    md = (tmp_path / "a" / "results.md").read_text()
    assert "## mc" in md

    config.eval.training_lora_metrics = ()
    full = evaluation.evaluate_target(config, workdir, "piqa", out_dir=tmp_path / "b", **kw)
    for name, per in full["systems"].items():
        assert set(per) == {"cloze", "mc"}, name
        for m, r in per.items():
            if m in part["systems"][name]:
                assert r["correct"] == part["systems"][name][m]["correct"]
                if name not in ("best_training_lora", evaluation.MEAN_TRAINING):
                    assert r["cached"], (name, m)  # nothing evaluated twice
    near = full["system_info"]["nearest"]["source_task"]  # nearest is one of the LoRAs: its mc was cached
    other = ({"arc_e", "boolq"} - {near}).pop()
    assert full["systems"][f"lora:{near}"]["mc"]["cached"] and not full["systems"][f"lora:{other}"]["mc"]["cached"]


def test_experiment_costs_reads_each_cells_own_cache_entry(tiny_zoo, tmp_path):
    """bench/experiment_costs.py: every scored (metric, system) of a target report gets the wall time its own
    cache entry recorded; a system sharing another's entry (nearest is a training LoRA) is counted once;
    a cell a system was not scored on (a training LoRA on mc here) is no row."""
    costs = testing.load_bench("experiment_costs")
    workdir = tmp_path / "w"
    shutil.copytree(tiny_zoo[0], workdir, ignore=shutil.ignore_patterns("eval_cache"))
    config = tiny.get_config()
    config.eval.training_lora_metrics = ("cloze",)
    res = evaluation.evaluate_target(config, workdir, "piqa", training_tasks=["arc_e", "boolq"], limit=4,
                                     out_dir=workdir / "results" / "piqa", progress=False)
    walls = sorted(json.loads(p.read_text())["wall_s"] for p in (workdir / "eval_cache").glob("*.json"))
    # a second report on the same entries (as a cross-domain report reuses its target's base and DnD entries)
    shutil.copytree(workdir / "results" / "piqa", workdir / "results" / "piqa_from_other")
    rows = costs.cells(workdir)
    near = "lora:" + res["system_info"]["nearest"]["source_task"]
    by = {(r["metric"], r["system"]): r for r in rows if r["report"] == "piqa"}
    assert ("mc", "lora:arc_e") not in by and ("mc", "base") in by
    assert by[("cloze", "nearest")]["note"] == f"same entry as piqa/{near}" and by[("cloze", "nearest")]["wall_s"] is None
    again = [r for r in rows if r["report"] == "piqa_from_other"]
    assert len(again) == len(by) and all(r["wall_s"] is None and r["note"].startswith("same entry as piqa/")
                                         for r in again)
    counted = [r for r in rows if r["wall_s"] is not None]
    assert sorted(r["wall_s"] for r in counted) == walls  # each entry exactly once
    assert all(r["n"] == 4 and r["s_per_example"] == r["wall_s"] / 4 for r in counted)
    groups = {(g["report"], g["metric"]): g for g in costs.summary(rows)}
    assert groups[("piqa", "cloze")]["systems"] == sum(r["metric"] == "cloze" for r in counted)


def test_decoded_agreement_counts_identical_texts_answers_and_who_is_right():
    """bench/decoded_agreement.py: per problem, DnD's greedy text against another system's; a problem where
    neither text yields an answer is not an agreeing answer; texts of different problems are refused."""
    agree = testing.load_bench("decoded_agreement")
    records = {"dnd": {"texts": ["a 1", "b", "c 3", "dd"], "pred": ["1", None, "3", None], "correct": [1, 0, 1, 0]},
               "merged": {"texts": ["a 1", "x", "c 4", "dd"], "pred": ["1", None, "4", None], "correct": [1, 0, 0, 0]},
               "base": {"texts": ["q", "", " \n```\nIt returns", "t"], "correct": [0, 1, 0, 0]}}
    out = agree.agreement(records)
    assert out["n"] == 4 and out["systems"]["dnd"] == {"mean_chars": 2.25, "score": 0.5, "empty": 0,
                                                       "opens_with_fence": 0}
    assert out["systems"]["base"] | {"mean_chars": 0} == {"mean_chars": 0, "score": 0.25, "empty": 1,
                                                          "opens_with_fence": 1}
    md = agree.markdown([{"report": "t", "metric": "pass@1"} | out], "dnd")
    assert "| base | 4 | 1 | 1 | 25.0 | 0 | – | 0 | 2 | 1 |" in md
    assert out["versus"]["merged"] == {"identical_texts": 2, "same_answer": 1, "both_correct": 1, "only_dnd": 1,
                                       "only_other": 0}
    assert out["versus"]["base"] == {"identical_texts": 0, "both_correct": 0, "only_dnd": 2, "only_other": 1}
    assert "dnd" not in out["versus"]
    records["base"]["texts"].pop()
    with pytest.raises(ValueError, match="base has 3 texts"):
        agree.agreement(records)


def test_rescore_pass_at_1_reruns_cached_programs_and_names_changed_verdicts():
    """bench/rescore_pass_at_1.py: a cached pass@1 record's texts run again under other limits (no model);
    the counts then and now, and each problem whose verdict changed, with the limits the entry recorded."""
    from dnd_jax import sandbox, tasks

    rescore = testing.load_bench("rescore_pass_at_1")
    exs = tasks.load_examples("codex_mbpp", "test", limit=3)
    gold = [ex.choices[0].removesuffix("\n```") for ex in exs]
    slow = gold[2] + "\nimport time\n_t = time.process_time()\nwhile time.process_time() - _t < 1.5:\n    pass\n"
    record = {"task": "codex_mbpp", "ids": [e.id for e in exs], "texts": [gold[0], "def nothing(): pass", slow],
              "correct": [1, 0, 1], "status": ["passed", "failed", "passed"],
              "key": {"generative": {"sandbox": {"timeout_s": 5.0}}}}
    out = rescore.rescore(record, sandbox.Limits(cpu_s=1, wall_s=30.0), workers=2)
    assert (out["n"], out["passed_before"], out["passed_now"]) == (3, 2, 1)
    assert out["changed"] == [{"id": exs[2].id, "before": "passed", "now": "timeout"}]
    assert out["limits_before"] == {"timeout_s": 5.0}
    assert rescore.rescore(record, sandbox.Limits(cpu_s=4, wall_s=30.0), workers=1)["changed"] == []
    md = rescore.markdown([{"report": "r", "system": "dnd"} | out], {"cpu_s": 1})
    assert f"| r | dnd | 3 | 2 | 1 | {exs[2].id}: passed -> timeout |" in md
    record["texts"].pop()
    with pytest.raises(ValueError, match="3 ids, 2 texts"):
        rescore.rescore(record, sandbox.Limits(), workers=1)


# --- CLI end to end -------------------------------------------------------------------------------------


def test_cli_end_to_end(tiny_zoo, tmp_path, capsys):
    workdir, _ = tiny_zoo
    out = tmp_path / "out"
    dnd = zoo.task_dir(workdir, "piqa") / zoo.ckpt_name(1)  # stands in for a generated adapter
    summary = evaluation.evaluate_target(tiny.get_config(), workdir, "piqa", training_tasks=["arc_e", "boolq"],
                                       dnd_adapter=dnd, limit=4, out_dir=out, progress=False)
    assert "| oracle |" in capsys.readouterr().out
    assert summary["report_dir"] == str(out)
    for m in ("cloze", "mc"):
        assert summary["systems"]["dnd"][m]["n"] == 4
        best = summary["systems"]["best_training_lora"][m]
        assert best["acc"] == max(summary["systems"][f"lora:{t}"][m]["acc"] for t in ("arc_e", "boolq"))
        assert set(summary["paired"]["dnd - merged"][m]) >= {"diff", "ci", "p_le_0", "n"}
    report = json.loads((out / "results.json").read_text())
    assert (out / "results.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    for m in ("cloze", "mc"):
        res = report["results"][m]
        assert set(res) == {"base", "lora:arc_e", "lora:boolq", "merged", "nearest", "oracle", "dnd",
                            evaluation.MEAN_TRAINING}
        for r in res.values():
            assert r["n"] == 4 and len(r["ci"]) == 2 and len(r["correct"]) == 4
        mean = np.mean([res["lora:arc_e"]["accuracy"], res["lora:boolq"]["accuracy"]])
        assert res[evaluation.MEAN_TRAINING]["accuracy"] == pytest.approx(mean)
        assert f"## {m}" in md
    nearest = next(s for s in report["systems"] if s["name"] == "nearest")
    assert nearest["info"]["source_task"] in ("arc_e", "boolq")
    assert {(c["a"], c["b"]) for c in report["comparisons"] if c["metric"] == "cloze"} >= {
        ("dnd", "merged"), ("dnd", "oracle"), ("dnd", evaluation.MEAN_TRAINING), ("merged", "base")}
    assert len(list((workdir / "eval_cache").glob("piqa-*.json"))) >= 2 * 6


def test_generative_cache_keys_follow_the_prompt_template_and_the_test_programs(monkeypatch):
    """A cached bpb/decoding entry is reused only for the same templated prompts, gold continuations and
    (pass@1) test programs and sandbox limits; a changed template, harness or limit scores afresh. Cloze keys
    do not move."""
    from dnd_jax import base_model, evaluation, tasks
    from dnd_jax.task_sources import math_code

    ref = base_model.BaseModelRef(name="m", path="/nowhere", sha="abc")
    exs = tasks.load_examples("codex_mbpp", "test", limit=3)
    piqa = tasks.load_examples("piqa", "test", limit=3)

    def keys():
        return {m: evaluation._cache_key(ref, "h", "codex_mbpp", "test", m, 3, exs, 128) for m in ("bpb", "pass@1")} | {
            "cloze": evaluation._cache_key(ref, "h", "piqa", "test", "cloze", 3, piqa, 128)}

    before = keys()
    assert before == keys()  # deterministic
    real = tasks.cloze_context
    monkeypatch.setattr(tasks, "cloze_context", lambda e: "A changed template:\n" + real(e))
    changed = keys()
    assert changed["bpb"] != before["bpb"] and changed["pass@1"] != before["pass@1"]
    assert changed["cloze"] == before["cloze"]
    monkeypatch.setattr(tasks, "cloze_context", real)
    program = math_code.python_program
    monkeypatch.setattr(math_code, "python_program", lambda t, i, c: program(t, i, c) + "\nassert True\n")
    harness = keys()
    assert harness["pass@1"] != before["pass@1"] and harness["bpb"] == before["bpb"]
    monkeypatch.setattr(math_code, "python_program", program)
    from dnd_jax import generative, sandbox

    # the sandbox's limits decide pass@1 only: other limits score it afresh, bpb's entries stay valid
    assert before["pass@1"]["sandbox"] == {"cpu_s": 5, "wall_s": 60.0, "memory_mb": 512, "max_file_mb": 16,
                                           "max_open_files": 64}
    monkeypatch.setattr(generative, "SANDBOX_LIMITS", sandbox.Limits(cpu_s=10))
    limits = keys()
    assert limits["pass@1"] != before["pass@1"] and limits["bpb"] == before["bpb"] and "sandbox" not in limits["bpb"]
