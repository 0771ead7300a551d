"""Device mesh and sharding rules: where every parameter, optimizer-state leaf and batch lives.

The model never mentions devices. ``config.sharding`` is a list of ``(regex, tactic)`` rules over
'/'-joined parameter paths (``params/stage_1/prompt/kernel``); the first rule whose regex matches
(``re.fullmatch``) a parameter decides its placement. A tactic is a ``|``-separated chain applied
left to right, each step refining the ``PartitionSpec`` of the previous one:

* ``replicate``: a full copy everywhere (an error if an earlier step already split the parameter:
  inconsistent instructions are refused, not resolved silently);
* ``shard_dim(axis='model', dim=-1)``: split dimension ``dim`` over mesh axis ``axis`` (tensor
  parallel: ``dim=-1`` is a conv kernel's output channels);
* ``fsdp(axis='data')``: split the largest dimension that divides the axis size and is not split
  yet (ZeRO-3 / FSDP: parameters and their optimizer state are divided by the axis size, gathered
  for the forward and reduce-scattered in the backward by XLA).

``shard_dim`` and ``fsdp`` take ``min_size`` (elements; default ``config.min_shard_size``): smaller
parameters stay whole, quietly. A step on a mesh axis of size 1 is a no-op. Everything else that
prevents a requested split (a dimension that does not divide, no free dimension, an axis already
used) is **reported** in the placement (:attr:`Placement.unsplit`) and logged at start-up; with
``config.sharding_unsplit = 'error'`` it is a config error instead.

Optimizer state follows its parameter: a leaf whose path ends with a parameter's path and has its
shape (Adam's ``mu``/``nu``) gets the parameter's spec; the rest (counts) is replicated.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Every kernel split over 'model' (output channels); everything else whole. FSDP is opt-in per
# config (the paper-scale configs add ``|fsdp(axis='data')``).
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r".*/kernel", "shard_dim(axis='model', dim=-1)"),
    (r".*", "replicate"),
)
FSDP_RULES: tuple[tuple[str, str], ...] = (
    (r".*/kernel", "shard_dim(axis='model', dim=-1)|fsdp(axis='data')"),
    (r".*", "fsdp(axis='data')"),
)
TACTICS = ("replicate", "shard_dim", "fsdp")


class MeshError(ValueError):
    """The mesh spec does not fit the devices."""


class ShardingRuleError(ValueError):
    """A sharding rule cannot be parsed or contradicts itself."""


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


def abstract_mesh(spec: Sequence[tuple[str, int]], num_devices: int) -> jax.sharding.AbstractMesh:
    """A device-free mesh of ``num_devices`` (for shapes and placement plans of pods we do not have)."""
    shape = mesh_shape(spec, num_devices)
    return jax.sharding.AbstractMesh(tuple(shape.values()), tuple(shape), axis_types=(AxisType.Auto,) * len(shape))


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


# ----------------------------------------------------------------------------------------------
# Rules.


@dataclasses.dataclass(frozen=True)
class Step:
    """One parsed tactic of a chain: ``name`` and its keyword arguments."""

    name: str
    kwargs: tuple[tuple[str, object], ...] = ()

    def get(self, key: str, default=None):
        return dict(self.kwargs).get(key, default)


_ALLOWED_ARGS = {"replicate": set(), "shard_dim": {"axis", "dim", "min_size"}, "fsdp": {"axis", "min_size"}}


def parse_tactic(text: str) -> tuple[Step, ...]:
    """``"shard_dim(axis='model', dim=-1)|fsdp(axis='data')"`` -> steps (literal keyword args only)."""
    steps = []
    for part in str(text).split("|"):
        part = part.strip()
        try:
            node = ast.parse(part, mode="eval").body
        except SyntaxError:
            raise ShardingRuleError(f"cannot parse sharding tactic '{part}' (in '{text}')") from None
        if isinstance(node, ast.Name):
            name, kwargs = node.id, {}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
            name = node.func.id
            try:
                kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
            except ValueError:
                raise ShardingRuleError(f"sharding tactic '{part}': arguments must be literals") from None
        else:
            raise ShardingRuleError(f"sharding tactic '{part}' must be name or name(key=value, ...)")
        if name not in _ALLOWED_ARGS:
            raise ShardingRuleError(f"unknown sharding tactic '{name}' (known: {', '.join(TACTICS)})")
        extra = set(kwargs) - _ALLOWED_ARGS[name]
        if extra:
            raise ShardingRuleError(f"sharding tactic '{name}' takes no {sorted(extra)} "
                                    f"(takes {sorted(_ALLOWED_ARGS[name])})")
        steps.append(Step(name, tuple(sorted(kwargs.items()))))
    return tuple(steps)


def parse_rules(rules: Sequence) -> tuple[tuple[re.Pattern, str, tuple[Step, ...]], ...]:
    """Validate ``[(regex, tactic), ...]`` (from a config) before any compute."""
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ShardingRuleError(f"a sharding rule is (regex, tactic), got {rule!r}")
        pattern, tactic = rule
        try:
            rx = re.compile(str(pattern))
        except re.error as e:
            raise ShardingRuleError(f"sharding rule regex '{pattern}': {e}") from None
        out.append((rx, str(tactic), parse_tactic(tactic)))
    return tuple(out)


def _spec_for(name: str, shape: tuple[int, ...], axes: dict[str, int], steps: Sequence[Step],
              min_size: int) -> tuple[list, list[str]]:
    """Apply ``steps`` to a fully replicated spec; returns (per-dim axis or None, problems)."""
    spec: list = [None] * len(shape)
    problems: list[str] = []
    numel = int(np.prod(shape)) if shape else 1
    for st in steps:
        if st.name == "replicate":
            if any(a is not None for a in spec):
                raise ShardingRuleError(f"{name}: 'replicate' after a split ({tuple(spec)}): contradictory rule")
            continue
        axis = str(st.get("axis", "model" if st.name == "shard_dim" else "data"))
        if axis not in axes:
            raise ShardingRuleError(f"{name}: tactic {st.name} names mesh axis '{axis}', mesh has {sorted(axes)}")
        size = axes[axis]
        if size == 1 or numel < int(st.get("min_size", min_size)):
            continue  # nothing to split over / too small to be worth it
        if axis in spec:
            problems.append(f"{st.name}: axis '{axis}' already splits dim {spec.index(axis)}")
            continue
        if st.name == "shard_dim":
            dim = int(st.get("dim", -1))
            if not shape or not -len(shape) <= dim < len(shape):
                problems.append(f"shard_dim: no dim {dim} in shape {shape}")
                continue
            dim %= len(shape)
            if spec[dim] is not None:
                problems.append(f"shard_dim: dim {dim} already split over '{spec[dim]}'")
            elif shape[dim] % size:
                problems.append(f"shard_dim: dim {dim} ({shape[dim]}) does not divide over '{axis}' ({size})")
            else:
                spec[dim] = axis
        else:  # fsdp: the largest free dimension that divides
            free = [d for d in np.argsort(shape, kind="stable")[::-1] if spec[d] is None and shape[d] % size == 0]
            if free:
                spec[int(free[0])] = axis
            else:
                problems.append(f"fsdp: no free dim of {shape} divides over '{axis}' ({size})")
    return spec, problems


@dataclasses.dataclass
class Placement:
    """Where every leaf of a state goes: shardings (a pytree like the state) and a readable table."""

    shardings: object
    rows: list[dict]  # path, shape, dtype, spec, bytes, bytes_per_device, rule, problem
    unsplit: list[str]  # "path: why" for every requested split that could not be made

    def table(self) -> str:
        lines = [f"{'path':60s} {'shape':>22s} {'spec':34s} {'MiB/device':>10s}"]
        for r in self.rows:
            lines.append(f"{r['path']:60s} {str(tuple(r['shape'])):>22s} {r['spec']:34s} "
                         f"{r['bytes_per_device'] / 2**20:10.3f}" + (f"  UNSPLIT: {r['problem']}" if r["problem"] else ""))
        return "\n".join(lines)

    def bytes_per_device(self, prefix: str = "") -> int:
        return int(sum(r["bytes_per_device"] for r in self.rows if r["path"].startswith(prefix)))

    def total_bytes(self, prefix: str = "") -> int:
        return int(sum(r["bytes"] for r in self.rows if r["path"].startswith(prefix)))


def _axes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes if hasattr(mesh, "axis_sizes") else mesh.devices.shape,
                    strict=True))


def place(mesh, abstract_state, rules: Sequence = DEFAULT_RULES, min_shard_size: int = 2**16,
          params_key: str = "params") -> Placement:
    """Placement of a train state ``{"params": ..., "opt_state": ..., ...}`` (or of bare params).

    Parameters are the leaves under ``params_key`` (the whole tree when there is no such key);
    every other leaf follows the parameter whose path it ends with and whose shape it has, or is
    replicated.
    """
    parsed = parse_rules(rules)
    axes = _axes(mesh)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    names = [path_str(p) for p, _ in flat]
    has_params = isinstance(abstract_state, dict) and params_key in abstract_state
    is_param = [(not has_params) or n == params_key or n.startswith(params_key + "/") for n in names]
    specs: dict[str, tuple] = {}  # param path (without params_key) -> spec, shape
    per_leaf: list = [None] * len(flat)
    unsplit = []
    for i in sorted(range(len(flat)), key=lambda i: not is_param[i]):  # parameters first
        name, leaf = names[i], flat[i][1]
        shape = tuple(leaf.shape)
        if is_param[i]:
            key = name.removeprefix(params_key + "/") if has_params else name
            rule, spec_list, problems = "(no rule: replicate)", [None] * len(shape), []
            for rx, tactic, steps in parsed:
                if rx.fullmatch(name):
                    rule = f"{rx.pattern} -> {tactic}"
                    spec_list, problems = _spec_for(name, shape, axes, steps, int(min_shard_size))
                    break
            while spec_list and spec_list[-1] is None:  # P() reads as "whole"
                spec_list = spec_list[:-1]
            spec = PartitionSpec(*spec_list)
            problem = "; ".join(problems)
            if problem:
                unsplit.append(f"{name}: {problem}")
            specs[key] = (spec, shape)
        else:
            spec, rule, problem = PartitionSpec(), "(replicate)", ""
            for key, (pspec, pshape) in sorted(specs.items(), key=lambda kv: -len(kv[0])):
                if (name == key or name.endswith("/" + key)) and pshape == shape:
                    spec, rule = pspec, f"follows {params_key}/{key}"
                    break
        nbytes = int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize if shape else np.dtype(leaf.dtype).itemsize
        split = int(np.prod([axes[a] for a in spec if a is not None])) if len(spec) else 1
        per_leaf[i] = ({"path": name, "shape": shape, "dtype": str(np.dtype(leaf.dtype)), "spec": str(spec),
                        "bytes": nbytes, "bytes_per_device": nbytes // split, "rule": rule, "problem": problem},
                       NamedSharding(mesh, spec))
    rows = [r for r, _ in per_leaf]
    out = [sh for _, sh in per_leaf]
    return Placement(jax.tree_util.tree_unflatten(treedef, out), rows, unsplit)


def param_shardings(mesh, abstract_params, rules: Sequence = DEFAULT_RULES, min_shard_size: int = 2**16):
    """A NamedSharding per leaf of ``abstract_params`` (arrays or ShapeDtypeStructs)."""
    return place(mesh, abstract_params, rules, min_shard_size).shardings


def config_rules(config) -> tuple[tuple[str, str], ...]:
    """``config.sharding`` (default :data:`DEFAULT_RULES`), validated."""
    rules = config.get("sharding", None)
    rules = DEFAULT_RULES if rules is None else tuple((str(r), str(t)) for r, t in rules)
    parse_rules(rules)
    return rules


def batch_sharding(mesh, ndim: int, axis: str = "data") -> NamedSharding:
    """Leading (batch) dim over ``axis``, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(axis, *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def describe(shardings) -> dict[str, str]:
    """{path: spec} for logging and tests."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {path_str(p): str(s.spec) for p, s in flat}
