"""Chains of K dependent calls in one jitted program, and the per-op estimate.

The program for K calls is

    for i in range(K):
        y = op(a)
        if i < K - 1:
            a = feedback(a, y)     # cheap, keeps each call dependent on the last
    return y

so every call sees new data and XLA can neither merge nor drop any of them.
The scan form (`form="scan"`) runs the first K - 1 steps as the iterations of
a `lax.scan` loop (the form models use to loop over layers) and the last call
after it: its slope is the cost of one iteration (op, feedback and the loop's
own overhead).
Each repeat times one run of every chain length in `chain_lengths(k)` (e.g.
K = 1, k/2, k; wall clock around the call until the result is ready, the
order rotating between repeats against drift), of every method being
compared (`time_side_by_side`: methods side by side in each repeat, their
order rotating too, so that drift slows them alike). The time per op is the
least-squares slope of the median time at each K against K: dispatch, the
program's launch and its output copy are the intercept and drop out; the
slope includes the feedback step (a slice / an in-place update of one per-rank
chunk). Medians, not single runs, so that one run slowed by another process
on a busy machine does not tilt the line.

Spread: the slope is refitted on bootstrap resamples of the repeats (whole
repeats, so each keeps its K points); p10/p90 are that distribution's
percentiles (widened to include the fit itself, in the
rare case that it falls outside them). When p10 is not above zero the op's cost is not resolvable above
the timing noise: the case is reported as below resolution, with no figure,
never as a zero or negative time. With k = 1 there is no slope: the figure is
t(1) itself, one call with its dispatch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

BOOTSTRAP = 400  # resamples; enough for stable 10th/90th percentiles


def chain_fn(op_fn, feedback, k: int, mesh, axis: str, world: int, form: str = "chain"):
    """A jitted shard_map program: K dependent calls of `op_fn`, unrolled
    (form "chain") or as the K iterations of a lax.scan loop (form "scan")."""
    import jax
    from jax.sharding import PartitionSpec as P

    def unrolled(a):
        y = None
        for i in range(k):
            y = op_fn(a, axis)
            if i < k - 1:
                a = feedback(a, y, world)
        return y

    def scanned(a):
        def step(a, _):
            nxt = feedback(a, op_fn(a, axis), world)
            # A psum's result is invariant over the axis; the carry must keep
            # a's type (varying), as the next call's input in the chain does.
            from jax_symm import _compat

            if axis not in _compat.varying_axes(jax.typeof(nxt)):
                nxt = _compat.pvary(nxt, (axis,))
            return nxt, None

        # K - 1 iterations and the last call after the loop, whose result is
        # the program's: the same structure at every K, so the slope is one
        # iteration.
        a, _ = jax.lax.scan(step, a, None, length=k - 1)
        return op_fn(a, axis)

    if form not in ("chain", "scan"):
        raise ValueError(f"form must be 'chain' or 'scan', not {form!r}")
    body = unrolled if form == "chain" else scanned
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(axis), out_specs=P(axis)))


def chain_lengths(k: int) -> list[int]:
    """The chain lengths timed for a largest chain of `k`: 1, k/2, k (distinct)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return sorted({1, max(1, k // 2), k})


@dataclass
class Estimate:
    """Per-op time in microseconds, or why there is none (`resolved` False)."""

    time_us: float
    p10_us: float
    p90_us: float
    samples: int        # repeats
    resolved: bool
    slope_us: float     # the fitted slope, reported even when not resolved
    note: str = ""


def fit_slope(ks: Sequence[float], ts: Sequence[float]) -> float:
    """Least-squares slope of ts against ks (nan when all ks are equal)."""
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(ts, dtype=np.float64)
    dx = x - x.mean()
    denom = float(np.dot(dx, dx))
    if denom == 0.0:
        return math.nan
    return float(np.dot(dx, y - y.mean()) / denom)


def estimate(ks: Sequence[int], times_s: np.ndarray | Sequence[Sequence[float]], *,
             bootstrap: int = BOOTSTRAP, seed: int = 0) -> Estimate:
    """The per-op estimate from `times_s[r][j]`, seconds of repeat r at chain length ks[j]."""
    t = np.asarray(times_s, dtype=np.float64) * 1e6  # -> microseconds
    ks = list(ks)
    if t.ndim != 2 or t.shape[1] != len(ks) or t.shape[0] == 0:
        raise ValueError(f"times must be [repeats][{len(ks)}], got shape {t.shape}")
    reps = t.shape[0]
    if len(set(ks)) == 1:  # k = 1: one call, dispatch included
        col = t[:, 0]
        med = float(np.median(col))
        ok = math.isfinite(med) and med > 0
        return Estimate(med if ok else math.nan, float(np.percentile(col, 10)),
                        float(np.percentile(col, 90)), reps, ok, med,
                        "t(1): one call including dispatch")
    slope = fit_slope(ks, np.median(t, axis=0))
    if reps > 1:
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, reps, size=(bootstrap, reps))
        boots = np.array([fit_slope(ks, np.median(t[p], axis=0)) for p in picks])
    else:
        boots = np.array([slope])
    p10, p90 = (float(v) for v in np.percentile(boots, [10, 90]))
    if not (math.isfinite(slope) and math.isfinite(p10) and p10 > 0 and slope > 0):
        return Estimate(math.nan, math.nan, math.nan, reps, False, slope,
                        f"below resolution: slope {slope:.3g} us/op, bootstrap "
                        f"p10..p90 [{p10:.3g}, {p90:.3g}] reaches zero")
    return Estimate(slope, min(p10, slope), max(p90, slope), reps, True, slope)


def _once(f, x) -> float:
    t = time.perf_counter()
    f(x).block_until_ready()
    return time.perf_counter() - t


def time_side_by_side(methods: Mapping[str, Mapping[int, Callable]], x, repeats: int,
                      warmup: int, clock: Callable = _once
                      ) -> tuple[list[int], dict[str, np.ndarray]]:
    """(ks, {method: seconds[repeat][j]}) for several methods' chains
    (method -> chain length -> jitted fn), timed side by side: every repeat
    runs every method's chains, the methods' order and the chain lengths'
    order rotating between repeats. So a machine that slows down for a while
    (another job, a neighbour's memory traffic) slows every method alike
    instead of tilting the ratios between them."""
    ks = sorted(next(iter(methods.values()))) if methods else []
    labels = list(methods)
    for label in labels:
        if sorted(methods[label]) != ks:
            raise ValueError(f"{label}: chain lengths {sorted(methods[label])}, expected {ks}")
    for _ in range(max(warmup, 1)):
        for label in labels:
            for k in ks:
                methods[label][k](x).block_until_ready()
    out = {label: np.empty((repeats, len(ks))) for label in labels}
    order = list(range(len(ks)))
    for r in range(repeats):
        shift_m = r % len(labels) if labels else 0
        shift_k = r % len(ks) if ks else 0
        for label in labels[shift_m:] + labels[:shift_m]:
            for j in order[shift_k:] + order[:shift_k]:
                out[label][r, j] = clock(methods[label][ks[j]], x)
    return ks, out


def time_chains(fns: Mapping[int, Callable], x, repeats: int, warmup: int,
                clock: Callable = _once) -> tuple[list[int], np.ndarray]:
    """(ks, seconds[repeat][j]) for the chains `fns` (chain length -> jitted fn)."""
    ks, out = time_side_by_side({"": fns}, x, repeats, warmup, clock)
    return ks, out[""]
