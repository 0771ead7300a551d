"""The DnD hyper-convolutional decoder: prompt embeddings -> LoRA weight tokens.

A condition is a 3-D feature map per example: ``(n, h, w) = (N prompts, L tokens, C channels)``.
A cascade of stages reshapes it, axis by axis, into the layout's ``(num_tokens, token_h, token_w)``.
Every stage treats one axis at a time as channels so that each of the three axes can change size
with small kernels and no flattening (the parameter count stays far below a dense map):

    x  -- LayerNorm over (h, w)
       -- path 1: width conv  (w as channels, kernel over (n, h): w_in -> w_out)
                  then height (h as channels, kernel over (n, w): h_in -> h_out)
       -- path 2: height first, then width
       -- mean of both paths + bias (h_out, w_out)
       -- prompt conv (n as channels, kernel over (h, w): n_in -> n_out)
       -- + x when the stage keeps its shape

GELU between stages, nothing after the last. Everything is ``nn.Conv`` on NHWC views, so XLA sees
plain convolutions; sharding lives outside the model (``dnd_jax.sharding``). The one exception is
:func:`pin_activations`: when path kernels are split over a mesh axis, each path's output is pinned
to the sharding its last kernel gives it, which works around an XLA SPMD bug (jax/jaxlib <= 0.10.2:
without the pin, p2_height's gradient is multiplied by the data-axis size; see
docs/scaleout/model_sharding_grad.md).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Shape3 = tuple[int, int, int]


def _conv_last(x: jax.Array, features: int, kernel: int, dtype, name: str) -> jax.Array:
    """A k×k conv over axes (1, 2) with axis 3 as channels: (B, a, b, c) -> (B, a, b, features)."""
    return nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=False, dtype=dtype, name=name)(x)


# The prompt convolution's backward pass as GEMMs over shifted copies (im2col) instead of XLA's convolution
# gradients, which run its kernel gradient at ~20% and its input gradient at ~40% of this machine's matmul rate
# on CPU (docs/benchmarks.md). The forward stays XLA's convolution (bit for bit); the gradients are the same
# sums in another order. CPU only (measured there; accelerators keep their own convolution gradients); off for
# other dtypes, other convolution settings and above this many bytes of copies.
FAST_PROMPT_GRAD = True
MAX_IM2COL_BYTES = 512 << 20


def _im2col_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A stride-1 SAME NHWC x HWIO convolution as one ``dot_general`` over shifted copies of ``x``."""
    kh, kw, c, f = kernel.shape
    xp = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    a, b = x.shape[1], x.shape[2]
    cols = jnp.concatenate([xp[:, i:i + a, j:j + b, :] for i in range(kh) for j in range(kw)], axis=-1)
    return jax.lax.dot_general(cols, kernel.reshape(kh * kw * c, f), (((3,), (0,)), ((), ())))


def _conv_gemm_grad(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                    dimension_numbers=None, feature_group_count=1, precision=None, **kw):
    """``lax.conv_general_dilated`` (flax's call) whose VJP, for the plain case, is :func:`_im2col_same`'s."""

    def xla_conv(x, k):
        return jax.lax.conv_general_dilated(x, k, window_strides, padding, lhs_dilation=lhs_dilation,
                                            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                            feature_group_count=feature_group_count, precision=precision, **kw)

    plain = (FAST_PROMPT_GRAD and jax.default_backend() == "cpu" and lhs.ndim == 4 and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
             and padding == "SAME" and all(s == 1 for s in window_strides)
             and all(d == 1 for d in (lhs_dilation or ())) and all(d == 1 for d in (rhs_dilation or ()))
             and feature_group_count == 1 and not kw and precision is None
             and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
             and lhs.size * rhs.shape[0] * rhs.shape[1] * lhs.dtype.itemsize <= MAX_IM2COL_BYTES)
    if not plain:
        return xla_conv(lhs, rhs)

    @jax.custom_vjp
    def conv(x, k):
        return xla_conv(x, k)

    def fwd(x, k):
        return xla_conv(x, k), (x, k)

    def bwd(res, g):
        return jax.vjp(_im2col_same, *res)[1](g)

    conv.defvjp(fwd, bwd)
    return conv(lhs, rhs)


def _swap(x: jax.Array) -> jax.Array:
    """(B, n, h, w) <-> (B, n, w, h): makes the other feature-map axis the channel axis."""
    return jnp.swapaxes(x, 2, 3)


class Stage(nn.Module):
    """One cascade stage ``(n_in, h_in, w_in) -> out_shape`` (see the module docstring)."""

    out_shape: Shape3
    kernel_size: int = 3
    dtype: str = "float32"
    pins: tuple | None = None  # (sharding of path 1's output or None, of path 2's) from pin_activations

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_out, h_out, w_out = self.out_shape
        pin1, pin2 = self.pins or (None, None)
        k, dt = self.kernel_size, jnp.dtype(self.dtype)
        y = nn.LayerNorm(reduction_axes=(-2, -1), feature_axes=(-2, -1), dtype=dt, name="norm")(x)
        # Path 1: width then height.
        p1 = _conv_last(y, w_out, k, dt, "p1_width")  # (B, n, h_in, w_out)
        p1 = _swap(_conv_last(_swap(p1), h_out, k, dt, "p1_height"))  # (B, n, h_out, w_out)
        # Path 2: height then width.
        p2 = _swap(_conv_last(_swap(y), h_out, k, dt, "p2_height"))  # (B, n, h_out, w_in)
        p2 = _conv_last(p2, w_out, k, dt, "p2_width")  # (B, n, h_out, w_out)
        if pin1 is not None:
            p1 = jax.lax.with_sharding_constraint(p1, pin1)
        if pin2 is not None:
            p2 = jax.lax.with_sharding_constraint(p2, pin2)
        bias = self.param("bias", nn.initializers.zeros_init(), (h_out, w_out), jnp.float32)
        y = (p1 + p2) * 0.5 + bias.astype(dt)
        # Prompt axis: (B, n, h, w) -> (B, h, w, n) -> conv -> back.
        y = jnp.moveaxis(y, 1, 3)
        y = nn.Conv(n_out, (k, k), padding="SAME", dtype=dt, name="prompt", conv_general_dilated=_conv_gemm_grad)(y)
        y = jnp.moveaxis(y, 3, 1)
        if x.shape[1:] == y.shape[1:]:
            y = y + x.astype(y.dtype)
        return y


class HyperConv(nn.Module):
    """Cascade of :class:`Stage`: ``(B, N, L, C)`` conditions -> ``(B, T, h, w)`` float32 tokens."""

    out_shape: Shape3
    hidden_shapes: Sequence[Shape3] = ()
    kernel_size: int | Sequence[int] = 3
    dtype: str = "float32"
    pins: tuple | None = None  # per stage, see pin_activations

    @nn.compact
    def __call__(self, cond: jax.Array) -> jax.Array:
        if cond.ndim != 4:
            raise ValueError(f"conditions must be (batch, prompts, tokens, channels), got shape {cond.shape}")
        shapes = [tuple(s) for s in self.hidden_shapes] + [tuple(self.out_shape)]
        kernels = stage_kernels(self.kernel_size, len(shapes))
        x = cond.astype(jnp.dtype(self.dtype))
        for i, (shape, k) in enumerate(zip(shapes, kernels, strict=True)):
            pins = self.pins[i] if self.pins else None
            x = Stage(shape, k, self.dtype, pins, name=f"stage_{i}")(x)
            if i < len(shapes) - 1:
                x = nn.gelu(x)
        return x.astype(jnp.float32)


def stage_kernels(kernel_size: int | Sequence[int], num_stages: int) -> list[int]:
    """Per-stage kernel sizes: one int for all, or one per stage."""
    if isinstance(kernel_size, int):
        return [kernel_size] * num_stages
    ks = [int(k) for k in kernel_size]
    if len(ks) != num_stages:
        raise ValueError(f"model.kernel_size has {len(ks)} entries for {num_stages} stages")
    return ks


def build(model_config, in_shape: Shape3, out_shape: Shape3) -> HyperConv:
    """The decoder for ``config.model`` (hidden_shapes, kernel_size, dtype)."""
    del in_shape  # the first stage reads it from the input
    hidden = tuple(tuple(int(d) for d in s) for s in model_config.hidden_shapes)
    for s in hidden:
        if len(s) != 3 or min(s) < 1:
            raise ValueError(f"model.hidden_shapes entries must be 3 positive ints (n, h, w), got {s}")
    ks = model_config.kernel_size
    ks = int(ks) if isinstance(ks, (int, np.integer)) else tuple(int(k) for k in ks)
    stage_kernels(ks, len(hidden) + 1)
    return HyperConv(out_shape=tuple(int(d) for d in out_shape), hidden_shapes=hidden, kernel_size=ks,
                     dtype=str(model_config.get("dtype", "float32")))


def pin_activations(model: HyperConv, param_shardings, batch_axis: str = "data") -> HyperConv:
    """``model`` with each path's output pinned to the sharding its last kernel gives it.

    ``param_shardings``: NamedShardings like ``model.init``'s output. Path 1 ends with p1_height
    (output channels = axis 2 of the path's output), path 2 with p2_width (axis 3). A path whose
    last kernel keeps its output channels whole is left alone. Numerically a no-op; it keeps
    XLA's SPMD partitioner off the buggy resharding of the paths' sum (see the module docstring).
    """
    tree = param_shardings.get("params", param_shardings)
    pins = []
    for i in range(len(model.hidden_shapes) + 1):
        stage = tree.get(f"stage_{i}", {})
        one = []
        for conv, out_dim in (("p1_height", 2), ("p2_width", 3)):
            sh = stage.get(conv, {}).get("kernel")
            axis = sh.spec[-1] if sh is not None and len(sh.spec) == 4 else None
            if axis is None or batch_axis in (axis if isinstance(axis, tuple) else (axis,)):
                one.append(None)
                continue
            spec = [batch_axis if batch_axis in sh.mesh.axis_names else None, None, None, None]
            spec[out_dim] = axis
            one.append(jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(*spec)))
        pins.append(tuple(one))
    return model.clone(pins=tuple(pins)) if any(p is not None for s in pins for p in s) else model


def stage_shapes(model: HyperConv, in_shape: Shape3) -> list[tuple[Shape3, Shape3, int]]:
    """(in, out, kernel) per stage."""
    shapes = [tuple(in_shape)] + [tuple(s) for s in model.hidden_shapes] + [tuple(model.out_shape)]
    kernels = stage_kernels(model.kernel_size, len(shapes) - 1)
    return [(shapes[i], shapes[i + 1], kernels[i]) for i in range(len(shapes) - 1)]


def param_count(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def flops_per_example(model: HyperConv, in_shape: Shape3) -> int:
    """Forward multiply-adds × 2 of the convolutions (norms, bias and GELU are negligible)."""
    macs = 0
    for (n, h, w), (n2, h2, w2), k in stage_shapes(model, in_shape):
        kk = k * k
        macs += n * h * kk * w * w2 + n * w2 * kk * h * h2  # path 1
        macs += n * w * kk * h * h2 + n * h2 * kk * w * w2  # path 2
        macs += h2 * w2 * kk * n * n2  # prompt conv
    return 2 * macs
