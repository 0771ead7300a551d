"""Standalone reproduction: XLA SPMD gives a wrong gradient under data x model sharding (pure JAX).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python docs/scaleout/repro_model_sharding_grad.py
    ... --partitioner gspmd      # jax_use_shardy_partitioner=False (same result: the bug is in partitioning)
    ... --workaround             # pin b to its own sharding before the sum: correct
    ... --mesh 2x4 | 8x1 | 1x8   # data x model (got/want = data size; correct when either axis is 1)
    ... --size paper             # the hyperconv stage's shapes (16, 384) -> (8, 32), 3x3 kernels
    XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/dump --xla_dump_hlo_pass_re=spmd" ...

Program: two factorized-convolution paths over a batch-sharded input x (B, n, h, w), each a conv
over one feature axis followed by a transpose and a conv over the other; the second kernel of each
path (k2, k4) has its output channels split over 'model', so path a comes out split on axis 2 and
path b on axis 3; loss = sum(square(a + b)). The gradient of every kernel on the mesh is compared
with the same program on one device. Prints versions, then per kernel the least-squares ratio
got/want and the max relative error; exits 1 when a kernel is wrong.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SIZES = {  # (B, n, h, w, h2, w2, kernel)
    "min": (4, 1, 4, 8, 2, 4, 2),
    "paper": (8, 4, 16, 384, 8, 32, 3),
}


def conv(x, k):
    """'SAME' conv over axes (1, 2) with axis 3 as channels (NHWC input, HWIO kernel)."""
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def swap(x):
    return jnp.swapaxes(x, 2, 3)


def make_loss(pin_b=None):
    def loss(ks, x):
        k1, k2, k3, k4 = ks
        a = swap(conv(swap(conv(x, k1)), k2))  # (B, n, h2, w2), k2 split -> a split on axis 2
        b = conv(swap(conv(swap(x), k3)), k4)  # (B, n, h2, w2), k4 split -> b split on axis 3
        if pin_b is not None:
            b = jax.lax.with_sharding_constraint(b, pin_b)
        return jnp.sum(jnp.square(a + b))

    return loss


def inputs(size: str):
    bsz, n, h, w, h2, w2, k = SIZES[size]
    x = jax.random.normal(jax.random.PRNGKey(0), (bsz, n, h, w))
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    shapes = ((k, k, w, w2), (k, k, h, h2), (k, k, h, h2), (k, k, w, w2))
    ks = tuple(jax.random.normal(kk, s) / np.sqrt(k * k * s[2]) for kk, s in zip(keys, shapes))
    return ks, x


def run(data: int, model: int, size: str, workaround: bool) -> list[dict]:
    ks, x = inputs(size)
    want = jax.jit(jax.grad(make_loss()))(ks, x)  # one device
    mesh = Mesh(np.array(jax.devices()[:data * model]).reshape(data, model), ("data", "model"))
    rep = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P(None, None, None, "model"))  # output channels over 'model'
    pin = NamedSharding(mesh, P("data", None, None, "model")) if workaround else None
    got = jax.jit(jax.grad(make_loss(pin)))(jax.device_put(ks, (rep, split, rep, split)),
                                            jax.device_put(x, NamedSharding(mesh, P("data"))))
    rows = []
    for i, (g, r) in enumerate(zip(got, want)):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        rows.append({"kernel": f"k{i + 1}", "ratio": float(np.vdot(g, r) / np.vdot(r, r)),
                     "rel_err": float(np.max(np.abs(g - r)) / np.max(np.abs(r)))})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", default="4x2", help="data x model (default 4x2)")
    ap.add_argument("--partitioner", choices=("shardy", "gspmd"), default="shardy")
    ap.add_argument("--size", choices=sorted(SIZES), default="min")
    ap.add_argument("--workaround", action="store_true", help="with_sharding_constraint(b, P('data', None, None, 'model'))")
    args = ap.parse_args()
    try:
        jax.config.update("jax_use_shardy_partitioner", args.partitioner == "shardy")
    except AttributeError:  # older jax: GSPMD only
        if args.partitioner == "shardy":
            print("this jax has no Shardy partitioner", file=sys.stderr)
            return 2
    data, model = (int(v) for v in args.mesh.split("x"))
    import jaxlib

    print(json.dumps({"jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", "?"),
                      "backend": jax.default_backend(), "devices": jax.device_count(),
                      "mesh": {"data": data, "model": model}, "partitioner": args.partitioner, "size": args.size,
                      "workaround": args.workaround}))
    bad = False
    for r in run(data, model, args.size, args.workaround):
        wrong = r["rel_err"] > 1e-4
        bad |= wrong
        print(f"{r['kernel']}: got/want {r['ratio']:.4f}  max rel err {r['rel_err']:.1e}" + ("  WRONG" if wrong else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
