"""Generative math/code tasks: registry and splits, answer parsing, gold programs pass, bpb by hand,
truncation, LoRA loss on solution tokens only, and the evaluation of bpb / exact match / pass@1."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dnd_jax import base_model, evaluation, generative, lora_train, sandbox, tasks
from dnd_jax.task_sources import math_code

# --- registry and splits (real data files; reading them takes ~1 s) -----------------------------------


def test_generative_tasks_are_registered_with_documented_splits():
    sizes = tasks.split_sizes(["gsm8k", "minerva_math_algebra", "minerva_math_counting_and_probability",
                               "basic_skills_arithmetic_gen", "mt_mbpp_rust", "codex_mbpp", "codex_humaneval"])
    assert sizes["gsm8k"] == {"train": 819, "test": 500}
    assert sizes["minerva_math_algebra"] == {"train": 987, "test": 200}
    assert sizes["minerva_math_counting_and_probability"] == {"train": 274, "test": 200}
    assert sizes["codex_humaneval"] == {"train": 0, "test": 164}
    assert sizes["mt_mbpp_rust"]["test"] == sizes["codex_mbpp"]["test"] == 200
    for name in math_code.MATH_TASKS + math_code.CODE_TASKS:
        assert tasks.get_task(name).kind == "generative"
    assert tasks.get_task("arc_e").kind == "choice"  # existing tasks unchanged
    assert {tasks.family(t) for t in ("mt_mbpp_python", "codex_mbpp", "codex_humaneval")} == {"python"}
    assert tasks.family("mt_mbpp_rust") == "mt_mbpp_rust"


def test_mbpp_problems_split_by_id_across_languages():
    test_ids = math_code.mbpp_test_ids()
    assert len(test_ids) == math_code.MBPP_TEST_SIZE
    for name in ("codex_mbpp", "mt_mbpp_python", "mt_mbpp_rust", "mt_mbpp_haskell"):
        train = {int(e.id) for e in tasks.load_examples(name, "train")}
        test = {int(e.id) for e in tasks.load_examples(name, "test")}
        assert test == set(test_ids) and not train & set(test_ids)


def test_coding_zoo_prompts_differ_only_in_the_language_name():
    """What the README's coding results say the generator can see: for every MBPP problem, the 8 zoo
    languages' prompts are one text with the language's name in the fence (and, on 157 of 499 problems,
    in the text: "Write a python function ...", "... operator in python."); nothing else tells a held-out
    language apart."""
    from configs import smollm2_coding

    config = smollm2_coding.get_config()
    spelled = {"cpp": "c++"}
    by_id: dict[str, dict[str, str]] = {}
    for name in config.tasks:
        lang = name.removeprefix("mt_mbpp_")
        for split in ("train", "test"):
            for e in tasks.load_examples(name, split):
                text, tag = e.prompt.rsplit("\n```", 1)
                assert tag == lang
                name_re = rf"(?<![\w+]){re.escape(spelled.get(lang, lang))}(?![\w+])"
                by_id.setdefault(e.id, {})[lang] = re.sub(name_re, "<LANG>", text)
    assert len(by_id) == 499 and all(len(v) == len(config.tasks) == 8 for v in by_id.values())
    assert all(len(set(v.values())) == 1 for v in by_id.values())
    assert sum("<LANG>" in v["python"] for v in by_id.values()) == 157


def test_training_pair_is_the_gold_solution_verbatim():
    ex = tasks.load_examples("mt_mbpp_rust", "train")[0]
    ctx, ans = tasks.training_pair(ex, "cloze", None)
    assert ctx == ex.prompt + "\n" and ctx.endswith("```rust\n")
    assert ans == ex.choices[0] and ans.endswith("\n```") and "\r" not in ans
    he = tasks.load_examples("codex_humaneval", "test")[0]
    assert tasks.training_pair(he, "mc", None) == (he.prompt, he.choices[0])  # answer_format is ignored
    assert he.choices[0].startswith("    ")  # indentation kept
    g = tasks.load_examples("gsm8k", "test")[0]
    ctx, ans = tasks.training_pair(g, "cloze", None)
    assert ctx.startswith("Question: ") and ctx.endswith("\nAnswer:") and ans.startswith(" ") and "answer is" in ans


# --- answers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("She has 3 + 4 = 7 apples. So the answer is 7.", "7"),
    ("So the answer is $1,250.", "1250"),
    ("The answer is -3.50 dollars", "-3.5"),
    ("#### 42", "42"),
    ("first 12 then 15", "15"),
    ("no numbers here", None),
    ("So the answer is - 10.", "-10"),  # a GSM8K gold solution writes its minus apart
])
def test_gsm8k_prediction(text, expected):
    assert math_code.gsm8k_prediction(text) == expected


def test_math_answers():
    assert math_code.boxed_answer("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert math_code.boxed_answer("no box") is None
    assert math_code.math_prediction("thus \\boxed{ \\dfrac{1}{2} }") == "\\frac{1}{2}"
    assert math_code.math_prediction("Final Answer: The final answer is $24$. I hope") == "24"
    g = tasks.load_examples("gsm8k", "test")[0]
    gold_num = math_code.problem_info("gsm8k")[g.id]["answer"]
    assert math_code.exact_match("gsm8k", g.id, g.choices[0]) == (1, math_code.normalize_number(gold_num))
    assert math_code.exact_match("gsm8k", g.id, "So the answer is 123456789.")[0] == 0
    m = tasks.load_examples("minerva_math_algebra", "test")[0]
    assert math_code.exact_match("minerva_math_algebra", m.id, m.choices[0])[0] == 1


@pytest.mark.parametrize("written,canonical", [
    ("\\frac14", "\\frac{1}{4}"), ("\\dfrac{1}{4}", "\\frac{1}{4}"), ("\\frac9{5}", "\\frac{9}{5}"),
    ("\\sqrt2", "\\sqrt{2}"), ("x = \\frac{3}{2}", "\\frac{3}{2}"), ("5\\text{ digits}", "5"),
    ("\\text{C, F, H}", "C,F,H"), ("0.25\\,\\text{ cm}", "0.25"), ("\\text{1:03 PM}", "1:03PM"),
    ("1,000", "1000"), ("90^\\circ", "90"), ("\\$5.00", "5"), ("\\left(1,2\\right)", "(1,2)"),
])
def test_math_answers_equal_up_to_spelling(written, canonical):
    """The gold solutions' own spellings of one answer (shorthand fractions, units, \\text, "x =") compare equal."""
    assert math_code.normalize_math(written) == math_code.normalize_math(canonical) == canonical


def test_every_gold_solution_scores_as_correct():
    """Exact match of each gold solution against its own answer: 200 of 200 on GSM8K and every MATH subject
    (the dataset's pre-normalized answer field gave 153-199 of 200: '\\frac{9}{{}5}', '\\le(...';
    docs/bench/gold_checks_before.json), and another problem's gold solution does not."""
    subjects = ("prealgebra", "algebra", "geometry", "counting_and_probability", "number_theory",
                "intermediate_algebra", "precalculus")
    agree = 0
    for task in ("gsm8k", *(f"minerva_math_{s}" for s in subjects)):
        exs = tasks.load_examples(task, "test", 200)
        assert [math_code.exact_match(task, e.id, e.choices[0])[0] for e in exs] == [1] * len(exs), task
        # and it discriminates: the next problem's gold solution is right for <= 2 of 200 (coinciding answers)
        assert sum(math_code.exact_match(task, exs[i].id, exs[i - 1].choices[0])[0] for i in range(len(exs))) <= 5, task
        if task != "gsm8k":
            info = math_code.problem_info(task)
            agree += sum(math_code.gold_answer(task, e.id) == math_code.normalize_math(info[e.id]["answer"]) for e in exs)
    assert agree >= 1390  # of 1400: the boxed gold agrees with the answer field but for its 9 quirks


def test_gold_python_solutions_pass_and_wrong_ones_fail():
    limits = sandbox.Limits(cpu_s=10)
    for task in ("codex_humaneval", "codex_mbpp"):
        exs = tasks.load_examples(task, "test", limit=8)
        gold = [math_code.python_program(task, e.id, generative.truncate_at_stop(e.choices[0], ("\n```",)))
                for e in exs]
        assert all(r.passed for r in sandbox.run_many(gold, limits)), task
        wrong = [math_code.python_program(task, e.id, "    return None\n" if task == "codex_humaneval" else
                                          "def nothing():\n    pass\n") for e in exs]
        assert not any(r.passed for r in sandbox.run_many(wrong, limits)), task


def test_mbpp_stops_are_the_benchmarks_own_and_cut_what_would_run_after_the_solution():
    """pass@1 on MBPP cuts a completion where the benchmark's own request file says (not only at the closing
    fence): a correct function followed by a call that raises, or by a stray assert, still passes."""
    reqs = math_code._requests("codex_mbpp", "gold_bpb_0shot")
    assert {tuple(r["request"]["stop_sequences"]) for r in reqs} == {math_code.stop_sequences("codex_mbpp")}
    ex = tasks.load_examples("codex_mbpp", "test", limit=1)[0]
    gold = generative.truncate_at_stop(ex.choices[0], math_code.stop_sequences("codex_mbpp"))
    limits = sandbox.Limits(cpu_s=10)
    for tail in ("\nprint(undefined_name)\n", "\nassert False\n", "\nif True:\n    raise SystemExit(1)\n",
                 "\n# a comment, then\nraise ValueError\n"):
        cut = generative.truncate_at_stop(gold + tail, math_code.stop_sequences("codex_mbpp"))
        assert sandbox.run_many([math_code.python_program("codex_mbpp", ex.id, cut)], limits)[0].passed, tail
        # cut only at the fence, the same text fails: what the benchmark's stops protect a correct solution from
        fence = generative.truncate_at_stop(gold + tail, ("\n```",))
        assert not sandbox.run_many([math_code.python_program("codex_mbpp", ex.id, fence)], limits)[0].passed, tail


# --- bpb and truncation on a tiny random model --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_base):
    return base_model.load(tiny_base)


def _hand_bpb(model, tok, ex):
    ctx = tok(tasks.cloze_context(ex), add_special_tokens=False)["input_ids"]
    gold = tok(tasks.gold_continuation(ex), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + gold])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    ll = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(gold))
    return -ll / (math.log(2) * len(tasks.gold_continuation(ex).encode()))


def test_bpb_equals_hand_computation_batched(tiny):
    model, tok = tiny
    exs = tasks.load_examples("mt_mbpp_rust", "test", limit=3) + tasks.load_examples("gsm8k", "test", limit=2)
    r = generative.bits_per_byte(model, tok, exs, max_len=4096, token_budget=700, progress=False)
    assert r["truncated"] == [0] * 5
    np.testing.assert_allclose(r["bpb"], [_hand_bpb(model, tok, e) for e in exs], rtol=1e-4)
    assert all(b > 0 for b in r["bpb"])


def test_greedy_texts_do_not_depend_on_the_batch_size(tiny):
    """The generation batch is a throughput knob (not in the evaluation cache key): left padding moves
    only the padding, so every problem's greedy text is the same alone or in a batch of any size."""
    model, tok = tiny
    exs = tasks.load_examples("gsm8k", "test", limit=5)
    runs = [generative.greedy_solutions(model, tok, exs, ("\n\n",), 12, batch_size=b, progress=False) for b in (1, 2, 5)]
    assert runs[0] == runs[1] == runs[2] and any(runs[0])


@pytest.fixture
def chaotic(tiny):
    """The tiny model with larger random weights: its greedy text varies with the context (the plain
    tiny model repeats one byte), so rows stop at different steps."""
    import copy

    model = copy.deepcopy(tiny[0])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model, tiny[1]


def test_greedy_decode_drops_stopped_rows_and_matches_generate(chaotic):
    """Rows leave the batch when they stop; every text is still what transformers' generate gives."""
    model, tok = chaotic
    exs = tasks.load_examples("gsm8k", "test", limit=6)
    stops = ("-", "=")  # rows stop at different steps
    prompts = [tok(tasks.cloze_context(ex), add_special_tokens=False)["input_ids"] for ex in exs]
    rows = generative.greedy_decode(model, tok, prompts, 24, stops)
    lengths = sorted(map(len, rows))
    assert lengths[0] < 24 and lengths[0] < lengths[-1]  # some rows stopped early, others went on
    ours = [generative.truncate_at_stop(tok.decode(r, skip_special_tokens=True), stops) for r in rows]
    assert ours == generative.reference_greedy_solutions(model, tok, exs, stops, 24, batch_size=6)
    assert generative.greedy_solutions(model, tok, exs, stops, 24, batch_size=4, progress=False) == ours


_KILLED_DECODER = """
import os, signal, sys
from pathlib import Path
from dnd_jax import base_model, generative, tasks
ref = base_model.resolve({"kind": "tiny_llama"}, sys.argv[1])
model, tok = base_model.load(ref)
real, calls = generative.greedy_decode, []
def decode(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # two batches decoded and journaled: killed in the third, as a session end would
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
generative.greedy_decode = decode
exs = tasks.load_examples("gsm8k", "test", limit=7)
generative.greedy_solutions(model, tok, exs, ("\\n\\n",), 10, batch_size=2, progress=False,
                            journal=Path(sys.argv[2]), journal_key={"k": 1})
"""


def test_greedy_journal_resumes_a_killed_run_exactly(tiny_base, tiny, tmp_path, monkeypatch):
    """A decoding run SIGKILLed after two batches leaves a journal of their 4 texts; the resumed run decodes
    only the 3 problems left (2 batches) and returns exactly what an uninterrupted run returns."""
    import subprocess
    import sys

    from dnd_jax import testing

    model, tok = tiny
    exs = tasks.load_examples("gsm8k", "test", limit=7)
    journal = tmp_path / "j.partial.json"
    proc = subprocess.run([sys.executable, "-c", _KILLED_DECODER, str(Path(tiny_base.path).parent), str(journal)],
                          env=testing.subprocess_env(1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = json.loads(journal.read_text())
    assert saved["key"] == {"k": 1} and len(saved["texts"]) == 4 and saved["wall_s"] > 0
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic writes left no temp file behind

    calls = []
    real = generative.greedy_decode
    monkeypatch.setattr(generative, "greedy_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = generative.greedy_solutions(model, tok, exs, ("\n\n",), 10, batch_size=2, progress=False,
                                          journal=journal, journal_key={"k": 1})
    assert len(calls) == 2  # 3 problems left, 2 per batch
    monkeypatch.setattr(generative, "greedy_decode", real)
    assert resumed == generative.greedy_solutions(model, tok, exs, ("\n\n",), 10, batch_size=2, progress=False)
    # the journal's texts are used as they are (a planted text comes back), and only under its own key
    planted = dict(saved, texts={**saved["texts"], "0": "PLANTED"})
    journal.write_text(json.dumps(planted))
    kw = dict(batch_size=3, progress=False, journal=journal)
    assert generative.greedy_solutions(model, tok, exs, ("\n\n",), 10, journal_key={"k": 1}, **kw)[0] == "PLANTED"
    assert generative.greedy_solutions(model, tok, exs, ("\n\n",), 10, journal_key={"k": 2}, **kw) == resumed
    journal.write_text(json.dumps(planted)[:-7])  # truncated: corruption, named, never silently decoded over
    from dnd_jax.errors import IntegrityError

    with pytest.raises(IntegrityError, match="j.partial.json: not a readable generation journal"):
        generative.greedy_solutions(model, tok, exs, ("\n\n",), 10, journal_key={"k": 1}, **kw)


def test_a_resumed_decoding_records_the_seconds_of_every_run(tiny_base, tmp_path, monkeypatch):
    """The journal keeps the decoding seconds behind its texts (summed over runs); the cache entry of a resumed
    evaluation adds them to its own wall time and says how many texts it took over, so measured costs are
    not those of the last run only. A journal from before the seconds were kept says so (None)."""
    kw = dict(limit=3, batch_size=1, max_new_tokens=4, progress=False)
    cache = tmp_path / "cache"
    full = evaluation.evaluate_adapter(tiny_base, None, "gsm8k", "exact_match", cache_dir=cache, **kw)
    (entry,) = cache.glob("gsm8k-exact_match-*.json")
    record = json.loads(entry.read_text())
    assert "resumed" not in record and record["wall_s"] > 0
    journal = entry.with_name(f"{entry.stem}.partial.json")
    for prior_wall in (100.0, None):
        entry.unlink()
        journal.write_text(json.dumps({"key": record["key"], "texts": {"0": record["texts"][0]}, "wall_s": prior_wall}))
        got = evaluation.evaluate_adapter(tiny_base, None, "gsm8k", "exact_match", cache_dir=cache, **kw)
        assert got["texts"] == full["texts"] and not journal.exists()
        stored = json.loads(entry.read_text())
        assert stored["resumed"] == {"texts": 1, "wall_s": prior_wall}
        assert stored["wall_s"] > (prior_wall or 0.0)
    # an interrupted run adds its own seconds to the journal's
    entry.unlink()
    journal.write_text(json.dumps({"key": record["key"], "texts": {"0": record["texts"][0]}, "wall_s": 100.0}))
    real, calls = generative.greedy_decode, []

    def decode(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after one more batch was journaled
        return real(*a, **k)

    monkeypatch.setattr(generative, "greedy_decode", decode)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate_adapter(tiny_base, None, "gsm8k", "exact_match", cache_dir=cache, **kw)
    kept = generative.read_journal(journal, record["key"], 3)
    assert len(kept.texts) == 2 and kept.wall_s > 100.0
    journal.write_text(json.dumps({"key": record["key"], "texts": {}, "wall_s": -1}))
    from dnd_jax.errors import IntegrityError

    with pytest.raises(IntegrityError, match="wall_s -1"):
        generative.read_journal(journal, record["key"], 3)


def test_bpb_truncation_keeps_context_and_scores_the_solution_head(tiny):
    model, tok = tiny
    ex = tasks.load_examples("minerva_math_algebra", "test")[0]
    ids, n_gold, n_bytes, truncated = generative.encode_gold(tok, ex, max_len=64)
    assert truncated and len(ids) == 64 and n_gold == 32  # context keeps max_len // 2 tokens
    gold_ids = tok(tasks.gold_continuation(ex), add_special_tokens=False)["input_ids"]
    assert ids[-n_gold:] == gold_ids[:n_gold]
    assert n_bytes == len(tok.decode(gold_ids[:n_gold]).encode())
    r = generative.bits_per_byte(model, tok, [ex], max_len=64, progress=False)
    assert r["truncated"] == [1] and r["bytes"] == [n_bytes] and np.isfinite(r["bpb"][0])


def test_encode_pairs_truncation_rules():
    from dnd_jax.base_model import byte_tokenizer

    tok = byte_tokenizer()
    ctx, ans = "c" * 50, "a" * 100
    [(ids, n)] = lora_train.encode_pairs(tok, [(ctx, ans)], max_len=64)  # choice rule: answer first
    assert n == 64 and len(ids) == 64
    [(ids, n)] = lora_train.encode_pairs(tok, [(ctx, ans)], max_len=64, min_context=32)  # generative rule
    assert n == 32 and len(ids) == 64 and ids[:32] == tok(ctx, add_special_tokens=False)["input_ids"][-32:]
    [(ids, n)] = lora_train.encode_pairs(tok, [("c" * 10, ans)], max_len=64, min_context=32)
    assert n == 54 and len(ids) == 64  # a short context leaves the rest to the solution
    [(ids2, n2)] = lora_train.encode_pairs(tok, [("c" * 10, "a" * 20)], max_len=64, min_context=32)
    [(ids3, n3)] = lora_train.encode_pairs(tok, [("c" * 10, "a" * 20)], max_len=64)
    assert (ids2, n2) == (ids3, n3)  # both rules agree when everything fits


def test_lora_on_generative_task_trains_on_solution_tokens_only(tiny_base):
    model, tok = base_model.load(tiny_base)
    exs = tasks.load_examples("mt_mbpp_rust", "train", limit=4)
    pairs = [tasks.training_pair(e, "cloze", tok) for e in exs]
    enc = lora_train.encode_pairs(tok, pairs, max_len=128, min_context=64)
    batch = lora_train.collate(enc, tok.pad_token_id)
    for row, (ids, n) in zip(batch.labels, enc, strict=True):
        assert int((row != -100).sum()) == n
        assert row[len(ids) - n : len(ids)].tolist() == ids[len(ids) - n :]
    lora = lora_train.make_lora_model(model, 4, 8, 0.0, ("q_proj", "v_proj", "up_proj", "down_proj"), seed=0)
    before = generative.bits_per_byte(lora, tok, exs, max_len=128, progress=False)["bpb"]
    out = lora_train.train_lora(lora, tok, exs, answer_format="cloze", max_len=128, batch_size=4, lr=1e-2,
                                weight_decay=0.0, warmup_steps=1, total_steps=15, seed=0,
                                keep_step=lambda s: False, on_keep=lambda *a: None)
    after = generative.bits_per_byte(lora, tok, exs, max_len=128, progress=False)["bpb"]
    assert out["losses"][-1] < out["losses"][0]
    assert np.mean(after) < np.mean(before)


# --- evaluation -------------------------------------------------------------------------------------------


def test_applicable_metrics():
    ms = ["cloze", "mc", "bpb", "exact_match", "pass@1"]
    assert evaluation.applicable_metrics("arc_e", ms) == ["cloze", "mc"]
    assert evaluation.applicable_metrics("gsm8k", ms) == ["bpb", "exact_match"]
    assert evaluation.applicable_metrics("codex_humaneval", ms) == ["bpb", "pass@1"]
    assert evaluation.applicable_metrics("mt_mbpp_rust", ms) == ["bpb"]


def test_evaluate_generative_metrics_cached_and_reported(tiny_base, tmp_path):
    cache = tmp_path / "cache"
    res = evaluation.evaluate_adapter_metrics(tiny_base, None, "codex_humaneval", ["bpb", "pass@1"], limit=3,
                                            batch_size=4, cache_dir=cache, max_new_tokens=6, progress=False)
    bpb, p1 = res["bpb"], res["pass@1"]
    assert bpb["n"] == p1["n"] == 3 and not bpb["cached"]
    assert all(c < 0 for c in bpb["correct"]) and np.allclose(bpb["correct"], [-b for b in bpb["bpb"]])
    assert p1["correct"] == [0, 0, 0] and len(p1["texts"]) == 3  # a random model writes no working code
    assert not list(cache.glob("*partial*"))  # the decoding journal is gone once the result is stored
    again = evaluation.evaluate_adapter_metrics(tiny_base, None, "codex_humaneval", ["bpb", "pass@1"], limit=3,
                                              batch_size=4, cache_dir=cache, max_new_tokens=6, progress=False)
    assert again["bpb"]["cached"] and again["bpb"]["correct"] == bpb["correct"]
    em = evaluation.evaluate_adapter(tiny_base, None, "gsm8k", "exact_match", limit=2, batch_size=2, cache_dir=None,
                                   max_new_tokens=4, progress=False)
    assert em["n"] == 2 and set(em["correct"]) <= {0, 1}
    from dnd_jax import baselines

    report = evaluation.evaluate_systems(tiny_base, [baselines.System("base", "base")], "codex_humaneval",
                                       metrics=["bpb"], limit=3, cache_dir=cache, out_dir=tmp_path / "out",
                                       progress=False)
    md = (tmp_path / "out" / "results.md").read_text()
    mean_bpb = float(np.mean(bpb["bpb"]))
    assert f"| base | {mean_bpb:.3f} |" in md and "bits per byte" in md
    assert report["results"]["bpb"]["base"]["accuracy"] == pytest.approx(-mean_bpb)


# --- the experiment on generative tasks, tiny model -------------------------------------------------


def test_coding_experiment_end_to_end_tiny(tmp_path):
    """Leave-one-language-out on a tiny model: zoo, generator, DnD adapter, baselines, bpb + pass@1,
    HumanEval evaluated with Python's generator and Python's LoRA as oracle; a rerun is free."""
    from configs import tiny
    from dnd_jax import experiment

    config = tiny.get_config()
    config.tasks = ("mt_mbpp_python", "mt_mbpp_rust", "mt_mbpp_go")
    config.total_steps = 10
    config.ckpt_steps = 10
    config.experiment.holdouts = ("mt_mbpp_python",)
    config.experiment.also_evaluate = {"mt_mbpp_python": ("codex_humaneval",)}
    # cross-domain both ways: a "foreign" generator (here: this run's own, so its adapter must score the
    # same as DnD's) on the coding target, and the Python generator on a commonsense task
    config.experiment.foreign_generators = {"same": str(tmp_path / "w" / "generators" / "mt_mbpp_python")}
    config.experiment.foreign_targets = {"piqa": "mt_mbpp_python"}
    config.eval.metrics = ("bpb", "pass@1", "cloze")  # cloze applies to piqa only, bpb to the code tasks
    config.experiment.baselines = ("base", "merged", "oracle")  # every baseline: tests/test_experiment.py
    config.eval.limit = 4
    config.eval.max_new_tokens = 4
    config.eval.bootstrap = 100
    docs = tmp_path / "docs"
    results = experiment.run(config, tmp_path / "w", docs=str(docs))
    py, he = results["targets"]["mt_mbpp_python"], results["targets"]["codex_humaneval"]
    for name in ("base", "merged", "oracle", "dnd"):
        assert py["systems"][name]["bpb"]["n"] == 4 and py["systems"][name]["bpb"]["acc"] < 0, name
        assert "pass@1" not in py["systems"][name] and "cloze" not in py["systems"][name]
        assert he["systems"][name]["pass@1"]["acc"] == 0.0 and he["systems"][name]["bpb"]["n"] == 4, name
    assert he["system_info"]["oracle"]["source_task"] == "mt_mbpp_python" and he["held_out"] == "mt_mbpp_python"
    assert he["conditions_from"] == "codex_humaneval"  # its unscored problems (limit 4); see the next test
    same = py["foreign"]["same"]["systems"]
    assert same["dnd_from_same"]["bpb"]["correct"] == same["dnd"]["bpb"]["correct"] == py["systems"]["dnd"]["bpb"]["correct"]
    piqa = results["targets"]["piqa<-mt_mbpp_python"]["systems"]
    assert set(piqa) == {"base", "dnd"} and piqa["dnd"]["cloze"]["n"] == 4 and "bpb" not in piqa["dnd"]
    assert set(he["system_info"]["merged"]["source_tasks"]) == {"mt_mbpp_rust", "mt_mbpp_go"}
    md = (docs / "results.md").read_text()
    assert "bits per byte" in md and "| codex_humaneval |" in md
    cloze = md.split("### cloze")[1].split("###")[0]  # a metric's table holds only the targets it scores
    assert "| piqa<-mt_mbpp_python |" in cloze and "| mt_mbpp_python |" not in cloze and "| merged |" not in cloze
    # the foreign generator's rows: its adapter is this run's own, so it equals DnD question by question
    assert "### Cross-domain: another domain's generator" in md
    assert "| mt_mbpp_python | same | bpb |" in md and "| +0.000 [+0.000, +0.000] |" in md
    assert "| codex_humaneval | mt_mbpp_python | codex_humaneval | mt_mbpp_python |" in md  # whose adapter it is
    again = experiment.run(config, tmp_path / "w")
    for t in ("mt_mbpp_python", "codex_humaneval"):
        entry = again["targets"][t]["systems"]["dnd"]["bpb"]
        assert entry["cached"] and entry["correct"] == results["targets"][t]["systems"]["dnd"]["bpb"]["correct"]
    print(json.loads((tmp_path / "w" / "experiment_stages.json").read_text()))


def test_a_coding_shard_done_first_scores_the_evaluation_only_targets_baselines_for_their_owner(tmp_path, capsys):
    """The queue's coding run: one shard holds Python with HumanEval (an evaluation-only target whose oracle
    is Python's LoRA), the other finishes its language first and scores those baselines; the owner must
    find every one of them cached (the same cache entries), leaving it only its generated adapters."""
    from configs import tiny
    from dnd_jax import collection, experiment

    config = tiny.get_config()
    config.tasks = ("mt_mbpp_python", "mt_mbpp_rust", "mt_mbpp_go")
    config.total_steps = config.ckpt_steps = config.eval_steps = 6
    config.experiment.holdouts = ("mt_mbpp_rust", "mt_mbpp_python")  # shard 0: Rust; shard 1: Python
    config.experiment.cross_domain = ()
    config.experiment.also_evaluate = {"mt_mbpp_python": ("codex_humaneval",)}
    config.eval.metrics = ("bpb", "pass@1")
    config.experiment.baselines = ("base", "merged", "nearest", "oracle")
    config.eval.limit = 3
    config.eval.max_new_tokens = 4
    config.eval.bootstrap = 50
    workdir = tmp_path / "w"
    collection.collect(config, workdir)
    experiment.run(config, workdir, shard="0/2")
    helped = capsys.readouterr().out
    assert "helped with codex_humaneval (target mt_mbpp_python)" in helped
    assert "helped with mt_mbpp_python (target mt_mbpp_python)" in helped
    owner = experiment.run(config, workdir, shard="1/2")["targets"]
    for target in ("mt_mbpp_python", "codex_humaneval"):
        systems = owner[target]["systems"]
        assert {"base", "merged", "nearest", "oracle", "dnd"} <= set(systems), target
        for name, metrics in systems.items():
            if name == "best_training_lora":
                continue
            for metric, entry in metrics.items():
                assert entry["cached"] is (name != "dnd"), (target, name, metric)
    assert owner["codex_humaneval"]["system_info"]["oracle"]["source_task"] == "mt_mbpp_python"


def test_condition_prompts_never_scored_for_code_targets():
    """With the coding config's limit (200), HumanEval scores all 164 problems: it has no unscored prompts,
    so its adapter is conditioned on the held-out language's (Python's) unscored prompts instead."""
    from configs import smollm2_coding
    from dnd_jax import plan
    from dnd_jax.errors import ConfigError

    config = smollm2_coding.get_config()
    with pytest.raises(ConfigError):
        plan.condition_prompts(config, "codex_humaneval")
    py = plan.condition_prompts(config, "mt_mbpp_python")
    assert py == [e.prompt for e in tasks.load_examples("mt_mbpp_python", "train")]  # no test problem
    mbpp = plan.condition_prompts(config, "codex_mbpp")
    assert not set(mbpp) & {e.prompt for e in tasks.load_examples("codex_mbpp", "test")}


def test_bad_extra_targets_fail_before_compute(tmp_path):
    from configs import tiny
    from dnd_jax import experiment
    from dnd_jax.errors import InputError

    config = tiny.get_config()
    config.experiment.holdouts = ("piqa",)
    config.experiment.also_evaluate = {"arc_e": ("codex_humaneval",)}  # arc_e is not held out
    with pytest.raises(InputError, match="also_evaluate"):
        experiment.run(config, tmp_path / "w")
    config.experiment.also_evaluate = {}
    config.experiment.foreign_targets = {"gsm8k": "boolq"}  # boolq's generator is never trained
    with pytest.raises(InputError, match="foreign_targets"):
        experiment.run(config, tmp_path / "w")
    config.experiment.foreign_targets = {}
    config.eval.training_lora_metrics = ("bpb", "pass@l")  # a typo: found before the zoo, not hours later
    with pytest.raises(InputError, match=r"training_lora_metrics: unknown metric\(s\) \['pass@l'\]"):
        experiment.run(config, tmp_path / "w")
    config.eval.training_lora_metrics = ()
    config.eval.metrics = ("cloze", "exact-match")
    with pytest.raises(InputError, match=r"eval.metrics: unknown metric\(s\) \['exact-match'\]"):
        experiment.run(config, tmp_path / "w")
    assert not (tmp_path / "w" / "zoo").exists()
    skipped = experiment.run_foreign_generator(config, tmp_path / "w", "piqa", "cs", str(tmp_path / "absent"))
    assert "skipped" in skipped
