"""The hyper-convolutional decoder: shapes, residual path, purity, cost helpers."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dnd_jax import models
from dnd_jax.models import hyperconv


@pytest.fixture(autouse=True, scope="module")
def _fast_threefry():
    """Unsharded tests: the non-partitionable threefry compiles the initializers ~5x faster on CPU."""
    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    yield
    jax.config.update("jax_threefry_partitionable", old)


def _init(module, x, seed=0):
    """Jitted init: one compile instead of op-by-op dispatch."""
    return jax.jit(module.init)(jax.random.key(seed), x)


def _cfg(hidden=((8, 6, 10),), kernel=3):
    return ml_collections.ConfigDict({"hidden_shapes": hidden, "kernel_size": kernel, "dtype": "float32"})


def test_output_shape_and_dtype():
    model = models.build("hyperconv", _cfg(), (4, 5, 12), (20, 3, 7))
    x = jnp.ones((2, 4, 5, 12))
    params = _init(model, x)
    y = model.apply(params, x)
    assert y.shape == (2, 20, 3, 7) and y.dtype == jnp.float32
    stages = params["params"]
    assert set(stages) == {"stage_0", "stage_1"}
    # Channels-first axis conv: kernel (k, k, n_in, n_out) over (h, w).
    assert stages["stage_1"]["prompt"]["kernel"].shape == (3, 3, 8, 20)
    assert stages["stage_0"]["p1_width"]["kernel"].shape == (3, 3, 12, 10)
    assert stages["stage_0"]["norm"]["scale"].shape == (5, 12)


def test_per_stage_kernels_and_bad_config():
    model = models.build("hyperconv", _cfg(kernel=(3, 1)), (4, 5, 12), (20, 3, 7))
    params = _init(model, jnp.ones((1, 4, 5, 12)))
    assert params["params"]["stage_1"]["prompt"]["kernel"].shape == (1, 1, 8, 20)
    with pytest.raises(ValueError, match="kernel_size"):
        models.build("hyperconv", _cfg(kernel=(3, 3, 3)), (4, 5, 12), (20, 3, 7))
    with pytest.raises(ValueError, match="unknown model_name"):
        models.build("nope", _cfg(), (4, 5, 12), (20, 3, 7))


def test_residual_when_shape_is_kept():
    """A shape-preserving stage with zeroed convs is the identity (the residual carries x)."""
    stage = hyperconv.Stage((4, 5, 6), kernel_size=3)
    x = jax.random.normal(jax.random.key(1), (2, 4, 5, 6))
    params = _init(stage, x)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "kernel" in jax.tree_util.keystr(p) else v, params)
    np.testing.assert_allclose(stage.apply(zeroed, x), x, atol=1e-6)
    # A shape-changing stage has no residual: zeroed convs give exactly zero (biases start at zero).
    grow = hyperconv.Stage((8, 5, 6), kernel_size=3)
    gp = _init(grow, x)
    gz = jax.tree_util.tree_map_with_path(lambda p, v: jnp.zeros_like(v) if "kernel" in jax.tree_util.keystr(p) else v, gp)
    np.testing.assert_allclose(grow.apply(gz, x), 0.0, atol=1e-6)


def test_apply_is_pure_and_jittable():
    model = models.build("hyperconv", _cfg(), (4, 5, 12), (20, 3, 7))
    x = jax.random.normal(jax.random.key(2), (3, 4, 5, 12))
    params = _init(model, x)
    before = jax.tree.map(np.asarray, params)
    y1 = model.apply(params, x)
    y2 = jax.jit(model.apply)(params, x)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, params))
    # Examples are independent: row i of a batch equals the forward of row i alone.
    np.testing.assert_allclose(model.apply(params, x[1:2])[0], y1[1], rtol=1e-5, atol=1e-5)


def test_param_count_and_flops():
    model = models.build("hyperconv", _cfg(), (4, 5, 12), (20, 3, 7))
    params = _init(model, jnp.ones((1, 4, 5, 12)))
    assert hyperconv.param_count(params) == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    flops = hyperconv.flops_per_example(model, (4, 5, 12))
    assert flops > 0
    # Within 2x of XLA's own count (norms, GELU and padding differ).
    xla = jax.jit(model.apply).lower(params, jnp.ones((1, 4, 5, 12))).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert 0.5 < flops / xla["flops"] < 2.0


def test_bfloat16_compute_keeps_float32_params_and_output():
    cfg = _cfg()
    cfg.dtype = "bfloat16"
    model = models.build("hyperconv", cfg, (4, 5, 12), (20, 3, 7))
    ref = models.build("hyperconv", _cfg(), (4, 5, 12), (20, 3, 7))
    x = jax.random.normal(jax.random.key(3), (2, 4, 5, 12))
    params = _init(ref, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(model, x)))
    y = model.apply(params, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref.apply(params, x), atol=0.1, rtol=0.1)
