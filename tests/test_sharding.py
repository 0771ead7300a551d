"""Mesh resolution and sharding rules (8 simulated CPU devices, see conftest).

Gradients under these placements: tests/test_scaleout_grads.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from dnd_jax import sharding


def test_mesh_shape_fills_and_rejects():
    assert sharding.mesh_shape((("data", -1), ("model", 2)), 8) == {"data": 4, "model": 2}
    assert sharding.mesh_shape((("data", -1), ("model", 1)), 1) == {"data": 1, "model": 1}
    with pytest.raises(sharding.MeshError):
        sharding.mesh_shape((("data", -1), ("model", 3)), 8)
    with pytest.raises(sharding.MeshError):
        sharding.mesh_shape((("data", -1), ("model", -1)), 8)
    with pytest.raises(sharding.MeshError):
        sharding.mesh_shape((("data", 2), ("model", 2)), 8)


def _sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


PARAMS = {
    "params": {
        "stage_0": {"prompt": {"kernel": _sds(3, 3, 64, 256), "bias": _sds(256)},
                    "norm": {"scale": _sds(64, 256)}},
        "stage_1": {"prompt": {"kernel": _sds(3, 3, 4, 8)},
                    "odd": {"kernel": _sds(3, 3, 1024, 63)},
                    "p1_width": {"kernel": _sds(3, 3, 1024, 64)}},
    }
}


def test_default_rules_split_every_big_kernel_and_report_the_rest():
    mesh = sharding.make_mesh((("data", 4), ("model", 2)))
    pl = sharding.place(mesh, PARAMS, sharding.DEFAULT_RULES, min_shard_size=2**16)
    desc = sharding.describe(pl.shardings)
    assert desc["params/stage_0/prompt/kernel"] == str(P(None, None, None, "model"))
    assert desc["params/stage_1/p1_width/kernel"] == str(P(None, None, None, "model"))
    assert desc["params/stage_0/prompt/bias"] == str(P())
    assert desc["params/stage_0/norm/scale"] == str(P())  # big, but not a kernel
    assert desc["params/stage_1/prompt/kernel"] == str(P())  # small: whole, quietly
    # Big, but 63 does not split over 2: whole, and reported (not silently replicated).
    assert desc["params/stage_1/odd/kernel"] == str(P())
    assert pl.unsplit == ["params/stage_1/odd/kernel: shard_dim: dim 3 (63) does not divide over 'model' (2)"]
    assert "UNSPLIT" in pl.table() and "odd/kernel" in pl.table()
    # A model axis of 1: nothing to split, nothing to report.
    one = sharding.place(sharding.make_mesh((("data", 8), ("model", 1))), PARAMS, sharding.DEFAULT_RULES, 2**16)
    assert one.unsplit == [] and set(sharding.describe(one.shardings).values()) == {str(P())}


def test_fsdp_takes_the_largest_free_dim_and_composes():
    mesh = sharding.make_mesh((("data", 4), ("model", 2)))
    pl = sharding.place(mesh, PARAMS, sharding.FSDP_RULES, min_shard_size=2**16)
    desc = sharding.describe(pl.shardings)
    assert desc["params/stage_0/prompt/kernel"] == str(P(None, None, "data", "model"))  # 256 taken: 64 next
    assert desc["params/stage_1/p1_width/kernel"] == str(P(None, None, "data", "model"))
    assert desc["params/stage_1/odd/kernel"] == str(P(None, None, "data"))  # fsdp still applies
    assert desc["params/stage_0/norm/scale"] == str(P())  # 16384 elements < min_shard_size
    fsdp_only = sharding.describe(sharding.place(mesh, PARAMS, ((".*", "fsdp(axis='data', min_size=0)"),)).shardings)
    assert fsdp_only["params/stage_0/prompt/kernel"] == str(P(None, None, None, "data"))
    assert fsdp_only["params/stage_1/prompt/kernel"] == str(P(None, None, None, "data"))  # 4 and 8 divide: 8 wins
    # Early rules win; an explicit dim.
    custom = ((r".*/norm/scale", "shard_dim(axis='model', dim=0, min_size=0)"), (r".*", "replicate"))
    assert sharding.describe(sharding.place(mesh, PARAMS, custom).shardings)["params/stage_0/norm/scale"] == \
        str(P("model"))


def test_optimizer_state_follows_its_parameter():
    mesh = sharding.make_mesh((("data", 4), ("model", 2)))
    params = {"params": {"a": {"kernel": jnp.zeros((3, 3, 16, 64))}, "b": {"bias": jnp.zeros((64,))}}}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    state = jax.eval_shape(lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": tx.init(p)}, params)
    pl = sharding.place(mesh, state, sharding.FSDP_RULES, min_shard_size=0)
    desc = sharding.describe(pl.shardings)
    kspec = desc["params/params/a/kernel"]
    assert kspec == str(P(None, None, "data", "model"))
    mu = [k for k in desc if k.startswith("opt_state") and k.endswith("mu/params/a/kernel")]
    nu = [k for k in desc if k.startswith("opt_state") and k.endswith("nu/params/a/kernel")]
    assert mu and nu and desc[mu[0]] == kspec and desc[nu[0]] == kspec
    assert all(desc[k] == str(P()) for k in desc if k.endswith("count")) and desc["step"] == str(P())
    # Bytes per device: the kernel and its two Adam moments divided by 8, the rest whole.
    kernel_bytes = 3 * 3 * 16 * 64 * 4
    rows = {r["path"]: r for r in pl.rows}
    assert rows["params/params/a/kernel"]["bytes_per_device"] == kernel_bytes // 8
    assert rows[mu[0]]["bytes_per_device"] == kernel_bytes // 8
    assert pl.bytes_per_device("opt_state") < pl.total_bytes("opt_state") / 4


@pytest.mark.parametrize("rules, match", [
    (((".*", "shard_dim(axis='model')|replicate"),), "contradictory"),
    (((".*", "bogus"),), "unknown sharding tactic 'bogus'"),
    (((".*", "fsdp(axis=data)"),), "literals"),
    (((".*", "fsdp(dim=1)"),), "takes no"),
    (((".*", "fsdp(axis='pipeline')"),), "mesh axis 'pipeline'"),
    ((("[", "replicate"),), "regex"),
    ((("x",),), "regex, tactic"),
])
def test_bad_rules_are_named(rules, match):
    mesh = sharding.make_mesh((("data", 4), ("model", 2)))
    with pytest.raises(sharding.ShardingRuleError, match=match):
        sharding.place(mesh, PARAMS, rules, min_shard_size=0)


def test_placed_arrays_live_where_the_rules_say():
    mesh = sharding.make_mesh((("data", -1), ("model", 2)))
    tree = {"big": {"prompt": {"kernel": jnp.ones((2, 2, 16, 8))}}, "small": {"prompt": {"kernel": jnp.ones((2, 2))}}}
    sh = sharding.param_shardings(mesh, tree, min_shard_size=64)
    placed = jax.device_put(tree, sh)
    assert placed["big"]["prompt"]["kernel"].addressable_shards[0].data.shape == (2, 2, 16, 4)
    assert placed["small"]["prompt"]["kernel"].addressable_shards[0].data.shape == (2, 2)
    batch = jax.device_put(np.zeros((8, 3)), sharding.batch_sharding(mesh, 2))
    assert batch.addressable_shards[0].data.shape == (2, 3)


def test_abstract_mesh_plans_pods_we_do_not_have():
    mesh = sharding.abstract_mesh((("data", -1), ("model", 4)), 256)
    pl = sharding.place(mesh, PARAMS, sharding.FSDP_RULES, min_shard_size=2**16)
    rows = {r["path"]: r for r in pl.rows}
    assert rows["params/stage_0/prompt/kernel"]["bytes_per_device"] == 3 * 3 * 64 * 256 * 4 // 256


def test_train_reports_or_refuses_unsplit_kernels(caplog):
    from configs import tiny
    from dnd_jax import trainer

    mesh = sharding.make_mesh((("data", 4), ("model", 2)))
    config = tiny.get_config()
    pl = trainer.place_state(config, mesh, PARAMS)  # default rules: odd/kernel (63 channels) is reported
    assert pl.unsplit and "odd/kernel" in pl.unsplit[0]
    config.sharding_unsplit = "error"
    with pytest.raises(trainer.ConfigError, match="odd/kernel.*does not divide"):
        trainer.place_state(config, mesh, PARAMS)
    config.sharding = ((".*", "nonsense"),)
    with pytest.raises(trainer.ConfigError, match="config.sharding: unknown sharding tactic"):
        trainer.place_state(config, mesh, PARAMS)
