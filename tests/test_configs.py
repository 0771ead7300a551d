"""Every shipped config builds, names only registered tasks and baselines, and splits them sanely."""
import importlib
from pathlib import Path

import pytest

from dnd_jax import baselines, experiment, tasks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))


def test_every_config_is_listed():
    assert {"tiny", "quickstart", "smollm2_commonsense", "smollm2_diverse", "smollm2_long_prompts"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_consistent(name):
    config = importlib.import_module(f"configs.{name}").get_config(None)
    for t in config.tasks:
        tasks.get_task(t)  # raises on an unknown task
    assert len(set(config.tasks)) == len(config.tasks), "a task is listed twice"
    exp = config.experiment
    assert set(exp.holdouts) <= set(config.tasks), "a held-out task has no zoo entry"
    assert not set(exp.cross_domain) & set(exp.holdouts)
    assert set(exp.baselines) <= set(baselines.BASELINES)
    for target in tuple(exp.holdouts) + tuple(exp.cross_domain):
        train = experiment.training_tasks(config, target)
        assert target not in train and not set(exp.cross_domain) & set(train), "test task leaks into training"
        assert len(train) >= 2
    assert config.conditions.num_prompts > 0 and config.conditions.max_len > 0


def test_variants_share_the_main_zoo_recipe():
    """Variants reuse the main run's zoo: their LoRA recipe must be the one it was collected with."""
    main = importlib.import_module("configs.smollm2_commonsense").get_config(None)
    for name in ("smollm2_diverse", "smollm2_long_prompts"):
        v = importlib.import_module(f"configs.{name}").get_config(None)
        assert v.experiment.variant and v.zoo.to_dict() == main.zoo.to_dict()
        assert v.base_model.to_dict() == main.base_model.to_dict()


def test_variants_hold_out_against_the_main_training_split():
    """A variant changes one thing: long_prompts keeps the main run's training tasks for each target
    (SciQ stays out of them), diverse only adds tasks to them."""
    main = importlib.import_module("configs.smollm2_commonsense").get_config(None)
    long = importlib.import_module("configs.smollm2_long_prompts").get_config(None)
    diverse = importlib.import_module("configs.smollm2_diverse").get_config(None)
    for t in long.experiment.holdouts:
        assert experiment.training_tasks(long, t) == experiment.training_tasks(main, t)
    for t in tuple(diverse.experiment.holdouts) + tuple(diverse.experiment.cross_domain):
        assert set(experiment.training_tasks(main, t)) < set(experiment.training_tasks(diverse, t))



def test_make_install_pins_torch_first():
    """`make install` installs the pinned torch before the package (so no dependency picks another
    build), and the environment the tests run in has that torch."""
    import re

    import torch

    recipe = (ROOT / "Makefile").read_text().split("$(STAMP): setup.py", 1)[1].split("\n\n", 1)[0]
    lines = [ln.strip() for ln in recipe.splitlines() if "pip install" in ln]
    pins = [re.search(r"torch==([\w.]+)", ln) for ln in lines]
    first = next(i for i, m in enumerate(pins) if m)
    package = next(i for i, ln in enumerate(lines) if "-e " in ln)
    assert first < package, lines
    assert torch.__version__.split("+")[0] == pins[first].group(1)
