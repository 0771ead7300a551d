"""Device mesh and partition rules: where every parameter and batch lives.

The model never mentions devices. A parameter's placement comes from the first rule whose regex
matches its '/'-joined path (``stage_1/prompt/kernel``); the batch is split over ``data``. Rules:

* ``"replicate"``: a full copy on every device;
* ``"out_channels"``: the last (output-channel) dim is split over ``model`` when the parameter has
  at least ``min_shard_size`` elements and that dim divides evenly; otherwise replicated;
* a ``PartitionSpec``: used as given.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

Rule = str | PartitionSpec
# Only the prompt-axis convs are split: they hold most parameters (the last one maps n_in to every
# weight token). Splitting the factorized path convs as well hits an XLA SPMD bug on CPU (jaxlib
# 0.10.2): with p1_height and p2_width both split over 'model' on a data x model mesh, p2_height's
# gradient comes out wrong (see tests/test_sharding.py::test_xla_two_path_conv_grad_bug).
DEFAULT_RULES: tuple[tuple[str, Rule], ...] = (
    (r".*/prompt/kernel$", "out_channels"),
    (r".*", "replicate"),
)
ALL_KERNELS_RULES: tuple[tuple[str, Rule], ...] = (
    (r".*/kernel$", "out_channels"),
    (r".*", "replicate"),
)


class MeshError(ValueError):
    """The mesh spec does not fit the devices."""


def mesh_shape(spec: Sequence[tuple[str, int]], num_devices: int) -> dict[str, int]:
    """Resolve ``(("data", -1), ("model", 2))`` against ``num_devices`` (one -1 fills the rest)."""
    names = [str(n) for n, _ in spec]
    sizes = [int(s) for _, s in spec]
    if len(set(names)) != len(names):
        raise MeshError(f"mesh axis names repeat: {names}")
    if sizes.count(-1) > 1:
        raise MeshError(f"at most one mesh axis may be -1, got {tuple(spec)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh axis sizes must be positive or -1, got {tuple(spec)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if num_devices % known:
        raise MeshError(f"mesh {tuple(spec)} does not divide {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != num_devices:
        raise MeshError(f"mesh {dict(zip(names, sizes, strict=True))} needs {int(np.prod(sizes))} devices, have {num_devices}")
    return dict(zip(names, sizes, strict=True))


def make_mesh(spec: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: all, every process) with the named axes of ``spec``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(spec, len(devices))
    # Auto axes: jit places intermediates; only inputs/outputs carry explicit shardings.
    return jax.make_mesh(tuple(shape.values()), tuple(shape), axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def path_str(path) -> str:
    """'/'-joined key path of a pytree leaf (``params/stage_0/norm/scale``)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh, rules: Sequence[tuple[str, Rule]],
             min_shard_size: int, axis: str = "model") -> PartitionSpec:
    """The PartitionSpec of one parameter under ``rules`` (first match wins; no match: replicate)."""
    for pattern, rule in rules:
        if not re.fullmatch(pattern, name):
            continue
        if isinstance(rule, PartitionSpec):
            return rule
        if rule == "replicate":
            return PartitionSpec()
        if rule == "out_channels":
            size = mesh.shape.get(axis, 1)
            if size > 1 and shape and int(np.prod(shape)) >= min_shard_size and shape[-1] % size == 0:
                return PartitionSpec(*([None] * (len(shape) - 1)), axis)
            return PartitionSpec()
        raise ValueError(f"unknown partition rule {rule!r} for pattern {pattern!r}")
    return PartitionSpec()


def param_shardings(mesh: Mesh, abstract_params, rules: Sequence[tuple[str, Rule]] = DEFAULT_RULES,
                    min_shard_size: int = 2**16):
    """A NamedSharding per leaf of ``abstract_params`` (arrays or ShapeDtypeStructs)."""
    def one(path, leaf):
        return NamedSharding(mesh, spec_for(path_str(path), tuple(leaf.shape), mesh, rules, min_shard_size))

    return jax.tree_util.tree_map_with_path(one, abstract_params)


def batch_sharding(mesh: Mesh, ndim: int, axis: str = "data") -> NamedSharding:
    """Leading (batch) dim over ``axis``, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(axis, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def describe(shardings) -> dict[str, str]:
    """{path: spec} for logging and tests."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {path_str(p): str(s.spec) for p, s in flat}
