"""Task registry on the real embedded datasets: well-formed examples, deterministic disjoint splits."""
import re
from pathlib import Path

import pytest

from dnd_jax import tasks

MIN_SPLIT = {"rte": 138}  # RTE's whole validation set is 277 examples (README: 139 train / 138 test)


@pytest.mark.parametrize("name", tasks.BUILTIN)  # not what other test modules registered (MMLU, files, ...)
def test_examples_are_well_formed(name):
    for split in ("train", "test"):
        examples = tasks.load_examples(name, split)
        assert len(examples) >= MIN_SPLIT.get(name, 250), (name, split, len(examples))
        for ex in examples:
            assert ex.task == name and ex.prompt.strip()
            assert len(ex.choices) >= 2 and all(c.strip() for c in ex.choices)
            assert 0 <= ex.gold < len(ex.choices)
            assert len(ex.mc_labels()) == len(ex.choices)


@pytest.mark.parametrize("name", tasks.BUILTIN)  # not what other test modules registered (MMLU, files, ...)
def test_splits_are_disjoint(name):
    train, test = tasks.load_examples(name, "train"), tasks.load_examples(name, "test")
    assert not {e.id for e in train} & {e.id for e in test}
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    assert not {norm(e.prompt) for e in train} & {norm(e.prompt) for e in test}


def test_split_sizes_are_the_readmes():
    """Every row of the README's split table (task | train | test | source) is what the loaders give."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\d+) \| (\d+) \| (official test|seeded split[^|]*) \|$", readme, re.M)
    assert {r[0] for r in rows} == set(tasks.BUILTIN), rows
    for name, train, test, source in rows:
        sizes = (len(tasks.load_examples(name, "train")), len(tasks.load_examples(name, "test")))
        assert sizes == (int(train), int(test)), (name, sizes)
        assert (tasks.get_task(name).load_pool()[1] is not None) == (source == "official test"), name


def test_splits_are_deterministic():
    tasks._splits.cache_clear()
    first = [e.id for e in tasks.load_examples("piqa", "test")]
    tasks._splits.cache_clear()
    assert first == [e.id for e in tasks.load_examples("piqa", "test")]


def test_rendering_formats():
    ex = tasks.load_examples("arc_e", "train")[0]
    ctx, ans = tasks.training_pair(ex, "cloze", tokenizer=None)
    assert ctx.startswith("Question: ") and ctx.endswith("Answer:") and ans == " " + ex.choices[ex.gold]

    class NoTemplate:
        chat_template = None

    ctx, ans = tasks.training_pair(ex, "mc", NoTemplate())
    assert "[A] " in ctx and ex.prompt in ctx and ans == f"[{'ABCD'[ex.gold]}]"
    boolq = tasks.load_examples("boolq", "train")[0]
    assert tasks.mc_answer(boolq) in ("[True]", "[False]")
    with pytest.raises(ValueError, match="answer_format"):
        tasks.training_pair(ex, "letters", None)
    with pytest.raises(KeyError, match="unknown task"):
        tasks.load_examples("squad", "train")
