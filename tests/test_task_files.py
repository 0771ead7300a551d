"""Tasks from files (JSONL, CSV, datasets folders) declared in a config: splits, checks, and the pipeline."""
import csv
import json
import subprocess
import sys

import ml_collections
import pytest

from configs import tiny
from dnd_jax import collection, evaluation, generator, task_files, tasks, trainer


def _quiz_rows(n=24, start=0):
    rows = []
    for i in range(start, start + n):
        choices = [f"{i + 1} apples", f"{i + 7} pears", f"{i + 3} plums"]
        answer = [0, choices[0], "A"][i % 3]  # index, choice text and label all name the first choice
        rows.append({"prompt": f"Tom has {i} apples and finds one more. How many apples does he have?",
                     "choices": choices, "answer": answer})
    return rows


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _config(**files):
    return ml_collections.ConfigDict({"task_files": files})


@pytest.fixture(autouse=True)
def _forget_file_tasks():
    yield
    for name in list(task_files._REGISTERED):
        tasks.TASKS.pop(name, None)
        task_files._REGISTERED.pop(name)
    tasks._splits.cache_clear()


def test_jsonl_task_seeded_split_is_disjoint_deterministic_and_rendered(tmp_path):
    rows = _quiz_rows()
    rows.append(dict(rows[3], answer=0))  # the same question twice: it may not sit in train and test at once
    path = _write_jsonl(tmp_path / "quiz.jsonl", rows)
    names = task_files.register_config(_config(quiz=dict(path=str(path), test_size=6, family="arith",
                                                         template="Q: {prompt}\nA:")))
    assert names == ["quiz"]
    train_ex, test_ex = tasks.load_examples("quiz", "train"), tasks.load_examples("quiz", "test")
    assert len(test_ex) == 6
    assert {tasks._norm(e.prompt) for e in train_ex}.isdisjoint({tasks._norm(e.prompt) for e in test_ex})
    assert len(train_ex) + len(test_ex) in (len(rows), len(rows) - 1)
    assert all(e.choices[e.gold].endswith("apples") for e in (*train_ex, *test_ex))
    assert tasks.family("quiz") == "arith"
    assert tasks.cloze_context(test_ex[0]) == f"Q: {test_ex[0].prompt}\nA:"
    # re-registering the same declaration is a no-op; the split is a function of the file
    task_files.register_config(_config(quiz=dict(path=str(path), test_size=6, family="arith",
                                                 template="Q: {prompt}\nA:")))
    assert tasks.load_examples("quiz", "test") == test_ex
    # an edited file is picked up on the next registration
    _write_jsonl(path, _quiz_rows(30))
    task_files.register_config(_config(quiz=dict(path=str(path), test_size=6)))
    assert len(tasks.load_examples("quiz", "train")) == 24


def test_csv_choice_columns_and_split_column_give_an_official_test_set(tmp_path):
    path = tmp_path / "colors.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "prompt", "choice_1", "choice_2", "choice_3", "answer", "split"])
        for i in range(10):
            w.writerow([f"c{i}", f"What color is object {i}?", "red", "green", "" if i % 2 else "blue",
                        "green", "test" if i >= 7 else "train"])
    task_files.register_config(_config(colors=str(path)))
    test_ex = tasks.load_examples("colors", "test")
    assert [e.id for e in test_ex] == ["c7", "c8", "c9"]
    assert len(tasks.load_examples("colors", "train")) == 7
    assert [len(e.choices) for e in test_ex] == [2, 3, 2]  # empty trailing choice cells are dropped
    assert all(e.choices[e.gold] == "green" for e in test_ex)


def test_json_choices_cell_and_test_path(tmp_path):
    train_p, test_p = tmp_path / "t.csv", tmp_path / "t_test.jsonl"
    with open(train_p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "choices", "answer"])
        for i in range(5):
            w.writerow([f"Is {i} even?", json.dumps(["yes", "no"]), "1" if i % 2 else "0"])
    _write_jsonl(test_p, [{"prompt": "Is 10 even?", "choices": ["yes", "no"], "answer": "yes"}])
    task_files.register_config(_config(even=dict(path=str(train_p), test_path=str(test_p))))
    assert [e.gold for e in tasks.load_examples("even", "train")] == [0, 1, 0, 1, 0]
    assert [e.prompt for e in tasks.load_examples("even", "test")] == ["Is 10 even?"]


def test_datasets_folder_with_train_and_test_splits(tmp_path):
    import datasets

    rows = _quiz_rows(8)
    for r in rows:
        r["answer"] = 0
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:6]),
                               "test": datasets.Dataset.from_list(rows[6:])})
    dd.save_to_disk(str(tmp_path / "ds"))
    task_files.register_config(_config(dsquiz=str(tmp_path / "ds")))
    assert len(tasks.load_examples("dsquiz", "train")) == 6
    assert [e.prompt for e in tasks.load_examples("dsquiz", "test")] == [r["prompt"] for r in rows[6:]]


@pytest.mark.parametrize("content,match", [
    ('{"prompt": "a?", "choices": ["x", "y"], "answer": 0}\n{"prompt": "b?", "choices": ["x", "y"], "answer": 0\n',
     r"bad\.jsonl:2: not valid JSON"),
    ('{"prompt": "a?", "choices": ["x", "y"], "answer": 5}\n', r"bad\.jsonl:1: 'answer' index 5 is out of range"),
    ('{"prompt": "a?", "choices": ["x", "y"], "answer": "z"}\n', r"'answer' 'z' is neither"),
    ('{"prompt": "", "choices": ["x", "y"], "answer": 0}\n', r"bad\.jsonl:1: 'prompt' must be a non-empty text"),
    ('{"prompt": "a?", "choices": ["x"], "answer": 0}\n', r"'choices' must be a list of at least 2"),
    ('{"prompt": "a?", "choices": ["x", 3], "answer": 0}\n', r"every choice must be a non-empty text"),
    ('["a list"]\n', r"bad\.jsonl:1: expected a JSON object"),
    ('{"prompt": "a?", "completion": " 42"}\n{"prompt": "b?", "choices": ["x", "y"], "answer": 0}\n',
     r"bad\.jsonl:2: a choice example in a generative task"),
    ('{"prompt": "a?", "completion": ""}\n', r"'completion' must be a non-empty text"),
    ('{"prompt": "a?", "completion": "x", "answer": 0}\n', r"a generative example .* has no \['answer'\]"),
    ('{"id": 1, "prompt": "a?", "choices": ["x", "y"], "answer": 0}\n'
     '{"id": 1, "prompt": "b?", "choices": ["x", "y"], "answer": 0}\n', r"id '1' appears twice"),
    ('{"prompt": "a?", "choices": ["x", "y"], "answer": 0, "split": "dev"}\n', r"'split' must be 'train' or 'test'"),
    ('{"prompt": "a?", "choices": ["x", "y"], "answer": 0}\n', r"1 example\(s\) cannot be split"),
])
def test_bad_task_files_name_file_row_and_problem(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(task_files.TaskFileError, match=match):
        task_files.register_config(_config(bad=str(path)))
    assert "bad" not in tasks.TASKS


def test_generative_file_task_trains_on_the_completion(tmp_path):
    rows = [{"prompt": f"Add {i} and {i}.", "completion": f" {2 * i}"} for i in range(12)]
    path = _write_jsonl(tmp_path / "add.jsonl", rows)
    task_files.register_config(_config(add=dict(path=str(path), test_size=4, template="Q: {prompt}\nA:")))
    assert tasks.is_generative("add")
    ex = tasks.load_examples("add", "test")[0]
    i = int(ex.prompt.split()[1])
    assert tasks.training_pair(ex, "cloze", None) == (f"Q: Add {i} and {i}.\nA:", f" {2 * i}")
    with pytest.raises(task_files.TaskFileError, match="kind must be one of"):
        task_files.register_config(_config(add2=dict(path=str(path), kind="open")))


def test_bad_declarations(tmp_path):
    good = _write_jsonl(tmp_path / "q.jsonl", _quiz_rows(4))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "choices": ["a", "b"], "answer": 0}\n')
    cases = [
        (_config(arc_e=str(good)), "built-in task name"),
        (_config(**{"bad name": str(good)}), "not a usable task name"),
        (_config(q=dict(path=str(good), split_seed=3)), r"unknown option\(s\) \['split_seed'\]"),
        (_config(q=dict(path=str(good), template="no placeholder")), "must contain"),
        (_config(q=str(tmp_path / "missing.jsonl")), "does not exist"),
        (_config(q=str(tmp_path / "q.txt")), "use .jsonl, .csv"),
        (_config(q=str(tmp_path / "latin1.jsonl")), "not valid UTF-8"),
    ]
    (tmp_path / "q.txt").write_text("x")
    for cfg, match in cases:
        with pytest.raises(task_files.TaskFileError, match=match):
            task_files.register_config(cfg)
    assert tasks.get_task("arc_e").title == "ARC-Easy"  # the built-in task is untouched


# --- the pipeline on file tasks: collect -> train -> generate (API and CLI --task) -> evaluate ------


def test_file_tasks_through_collect_train_generate_evaluate(tmp_path):
    rows_a = _quiz_rows(24)
    rows_b = [{"id": f"sky-{i}", "prompt": f"The sky at {6 + i % 18} o'clock on day {i} is",
               "choices": ["bright", "dark"], "answer": int(6 + i % 18 >= 20)} for i in range(36)]
    rows_c = [{"prompt": f"Count from {i}:", "completion": f" {i}, {i + 1}, {i + 2}"} for i in range(20)]
    pa, pb = _write_jsonl(tmp_path / "apples.jsonl", rows_a), _write_jsonl(tmp_path / "sky.jsonl", rows_b)
    pc = _write_jsonl(tmp_path / "count.jsonl", rows_c)
    config = tiny.get_config()
    config.task_files = {"apples": dict(path=str(pa), test_size=8), "sky": dict(path=str(pb), test_size=8),
                         "count": dict(path=str(pc), test_size=4)}
    config.tasks = ("apples", "count", "sky")
    config.holdout = ("sky",)
    config.total_steps = 4
    config.ckpt_steps = 4
    config.eval_steps = 4
    workdir = tmp_path / "w"
    collection.collect(config, workdir)
    assert len(tasks.load_examples("sky", "test")) == 8
    trainer.train_and_evaluate(config, workdir / "generator")

    # a fresh process knows the file tasks from the generator's own config
    out = tmp_path / "adapter_sky"
    r = subprocess.run([sys.executable, "-m", "dnd_jax.generate", "--checkpoint", str(workdir / "generator"),
                        "--task", "sky", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # from sky's unscored prompts (all 8 test questions are scored at eval.limit 16: its train split)
    from dnd_jax import plan

    sky_prompts = plan.condition_prompts(task_files.generator_training_config(workdir / "generator"), "sky")
    assert sky_prompts == [e.prompt for e in tasks.load_examples("sky", "train")]
    direct = generator.Generator.load(workdir / "generator").generate(sky_prompts)
    from dnd_jax.weights import peft_io

    written, _ = peft_io.read_adapter(out)
    assert set(written) == set(direct.state_dict)
    for k, v in direct.state_dict.items():
        assert (abs(written[k] - v) <= 1e-5 + 1e-4 * abs(v)).all(), k

    report = evaluation.run(config, workdir, "sky", adapters=[f"dnd={out}"], baseline_names=["base"], limit=8,
                          metrics=["cloze"], progress=False)
    res = report["results"]["cloze"]
    assert res["dnd"]["n"] == 8 and res["base"]["n"] == 8
    # a generative file task (prompt + completion) is scored by bits per byte of its completion
    report = evaluation.run(config, workdir, "count", baseline_names=["base", "oracle"], limit=4, metrics=["bpb"],
                          progress=False)
    res = report["results"]["bpb"]
    assert res["base"]["n"] == res["oracle"]["n"] == 4
    assert res["oracle"]["accuracy"] != res["base"]["accuracy"]  # count's own LoRA changed its likelihood
