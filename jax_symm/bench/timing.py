"""Chains of K dependent calls in one jitted program, and their timing.

The program for K calls is

    for i in range(K):
        y = op(a)
        if i < K - 1:
            a = feedback(a, y)     # cheap, keeps each call dependent on the last
    return y

so every call sees new data and XLA can neither merge nor drop any of them.
Per repeat, t(K) and t(1) are measured back to back (wall clock around the
call, until the result is ready) and the time per op is

    (t(K) - t(1)) / (K - 1)

which cancels dispatch, the program's launch and its output copy; it includes
the feedback step (a slice / an in-place update of one per-rank chunk). With
K = 1 it is t(1) itself. Median and p10/p90 are over the repeats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


def chain_fn(op_fn, feedback, k: int, mesh, axis: str, world: int):
    """A jitted shard_map program: K dependent calls of `op_fn`."""
    import jax
    from jax.sharding import PartitionSpec as P

    def body(a):
        y = None
        for i in range(k):
            y = op_fn(a, axis)
            if i < k - 1:
                a = feedback(a, y, world)
        return y

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(axis), out_specs=P(axis)))


@dataclass
class Stats:
    median_us: float
    p10_us: float
    p90_us: float
    samples: int


def stats(per_op_seconds: list[float]) -> Stats:
    a = np.asarray(per_op_seconds, dtype=np.float64) * 1e6
    return Stats(float(np.median(a)), float(np.percentile(a, 10)),
                 float(np.percentile(a, 90)), int(a.size))


def _once(f, x) -> float:
    t = time.perf_counter()
    f(x).block_until_ready()
    return time.perf_counter() - t


def time_chain(f_k, f_1, x, k: int, repeats: int, warmup: int) -> Stats:
    """Per-op seconds -> Stats (microseconds), see the module docstring."""
    for _ in range(max(warmup, 1)):
        f_1(x).block_until_ready()
        if k > 1:
            f_k(x).block_until_ready()
    per_op = []
    for r in range(repeats):
        if k == 1:
            per_op.append(_once(f_1, x))
            continue
        if r % 2:  # alternate the order, against drift
            t1 = _once(f_1, x)
            tk = _once(f_k, x)
        else:
            tk = _once(f_k, x)
            t1 = _once(f_1, x)
        per_op.append((tk - t1) / (k - 1))
    return stats(per_op)
