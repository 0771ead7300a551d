"""A run saved on 8 (simulated) devices resumes on 2 and on 1 with an uninterrupted run's losses.

The checkpoint holds global arrays; restoring onto another mesh reshards them (Orbax, from the
new placement). Batch ``i`` is a function of ``(seed, i)``, not of the device count, so the
continuation sees the same data. Tolerance: losses and val losses within rtol 1e-4, parameters
within atol 1e-5 (other device counts sum shards in another order; float32).
"""
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from dnd_jax import testing, trainer

pytestmark = pytest.mark.usefixtures("compile_cache")


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    return testing.make_synthetic_zoo(tmp_path_factory.mktemp("zoo"), tasks=("arc_e", "piqa", "boolq"))


def _config(zoo_dir: Path, mesh):
    c = tiny.get_config()
    c.zoo_workdir = str(zoo_dir)
    c.total_steps, c.ckpt_steps, c.eval_steps, c.log_steps = 20, 10, 10, 5
    c.min_shard_size = 1024  # every tiny kernel is split over 'model'
    c.mesh = mesh
    return c


def _losses(history, after: int = 0):
    return [(r["step"], r["loss"]) for r in history if r["step"] > after]


def test_resume_on_fewer_devices_continues_the_same_run(zoo_dir, tmp_path):
    assert jax.device_count() == 8
    mesh8 = (("data", 4), ("model", 2))
    full = trainer.train_and_evaluate(_config(zoo_dir, mesh8), tmp_path / "full")
    killed = trainer.train_and_evaluate(_config(zoo_dir, mesh8), tmp_path / "killed", max_steps=13)
    assert killed["step"] == 13
    specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(killed["params"])}
    assert any("model" in s for s in specs)
    for n, mesh in ((2, (("data", 1), ("model", 2))), (1, (("data", -1), ("model", 1)))):
        work = tmp_path / f"on{n}"
        shutil.copytree(tmp_path / "killed", work)
        resumed = trainer.train_and_evaluate(_config(zoo_dir, mesh), work, devices=jax.devices()[:n])
        assert resumed["step"] == 20
        assert {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(resumed["params"])} == {n}
        got, want = _losses(resumed["history"]), _losses(full["history"])
        assert [s for s, _ in got] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-4)
        np.testing.assert_allclose(resumed["val_loss"], full["val_loss"], rtol=1e-4)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                     resumed["params"], full["params"])
