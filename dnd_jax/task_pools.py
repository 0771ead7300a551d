"""Nested, seeded training pools for the task-scaling curve (how DnD's gain depends on #tasks).

All targets are held out at once: the candidate training tasks are every task whose family is not a
target's family; a seeded permutation orders them, and the pool of size K is the first K of that
order, so the pools are nested (K=6 is inside K=12, ...). The zoo collects targets first, then the
candidates in pool order, so a partially collected zoo already holds the smaller pools.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def candidates(names: Sequence[str], targets: Sequence[str], family: Callable[[str], str]) -> list[str]:
    """Tasks that may train a generator evaluated on ``targets``: no shared family, no duplicates."""
    banned = {family(t) for t in targets}
    seen, out = set(), []
    for n in names:
        if n in seen or n in targets or family(n) in banned:
            continue
        seen.add(n)
        out.append(n)
    return out


def pool_order(names: Sequence[str], seed: int) -> list[str]:
    """A seeded permutation of the sorted candidate names (independent of the input order)."""
    ordered = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return [ordered[i] for i in perm]


def nested_pools(order: Sequence[str], sizes: Sequence[int]) -> dict[int, list[str]]:
    """{K: the first K tasks of ``order``}; K larger than the order is an error."""
    pools = {}
    for k in sizes:
        if not 0 < k <= len(order):
            raise ValueError(f"pool size {k} is outside 1..{len(order)} (the number of candidate tasks)")
        pools[int(k)] = list(order[:k])
    return pools
