"""The prompt convolution's GEMM backward (issue 18): same forward bit for bit, same gradients up to the
order of the sums, and the backward really is GEMMs (no convolution gradients left in the program)."""
import jax
import jax.numpy as jnp
import numpy as np

from dnd_jax.models import hyperconv


def _stage_and_inputs(dtype="float32"):
    stage = hyperconv.Stage((40, 6, 5), 3, dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 5)).astype(np.float32))
    params = stage.init(jax.random.key(0), x)
    g = jnp.asarray(rng.normal(size=(2, 40, 6, 5)).astype(np.float32)).astype(dtype)
    return stage, params, x, g


def _fwd_and_grads(monkeypatch, fast: bool, dtype="float32"):
    monkeypatch.setattr(hyperconv, "FAST_PROMPT_GRAD", fast)
    stage, params, x, g = _stage_and_inputs(dtype)
    y = stage.apply(params, x)
    gp, gx = jax.jit(lambda p, x, g: jax.vjp(stage.apply, p, x)[1](g))(params, x, g)
    text = jax.jit(lambda p, x, g: jax.vjp(stage.apply, p, x)[1](g)).lower(params, x, g).as_text()
    return np.asarray(y), gp, np.asarray(gx), text.count("convolution")


def test_forward_identical_gradients_equal_up_to_summation_order(monkeypatch):
    y0, gp0, gx0, convs0 = _fwd_and_grads(monkeypatch, False)
    y1, gp1, gx1, convs1 = _fwd_and_grads(monkeypatch, True)
    assert np.array_equal(y0, y1)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-5, atol=1e-5 * np.abs(gx0).max())
    for (path, a), (_, b) in zip(jax.tree.leaves_with_path(gp0), jax.tree.leaves_with_path(gp1)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max(), err_msg=jax.tree_util.keystr(path))
    # the prompt convolution's two gradients became dot_generals: two fewer convolutions in the program
    assert convs1 == convs0 - 2


def test_other_dtypes_keep_xla_convolution_gradients(monkeypatch):
    *_, convs0 = _fwd_and_grads(monkeypatch, False, "bfloat16")
    *_, convs1 = _fwd_and_grads(monkeypatch, True, "bfloat16")
    assert convs1 == convs0
