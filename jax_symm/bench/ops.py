"""The collectives the bench measures: one per kind of `jax_symm._kinds.KINDS`.

What a kind is (its name, its lax twin, whether it sums, how many chunks it
reads and writes) comes from that table; what is the bench's own (how to call
it, the chain's data dependence, the numpy reference, nccl-tests' bus
bandwidth) is one entry of `_MEASURE` per kind, so a new kind without one
fails here, at import.

Sizes are PER RANK: `bytes_per_rank` is the all-gather's input shard and the
reduce-scatter's output shard (nccl-tests' convention). Bandwidths follow
nccl-tests: algbw = algbw_bytes / time, busbw = algbw * busbw_factor(world).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import _kinds


@dataclass(frozen=True)
class Measure:
    """The bench's own facts about one kind."""

    call: Callable           # (f, x, axis_name) -> f(x, axis_name, ...): how the bench calls
    #                          the op, f being jax_symm's or lax's function
    feedback: Callable       # (a, y, world) -> next input, a's shape: the chain's data dependence
    reference: Callable      # numpy (x_global, world) -> expected global output (out_specs P(axis))
    busbw_factor: Callable   # world -> busbw / algbw (nccl-tests)


@dataclass(frozen=True)
class Op:
    kind: _kinds.Kind
    measure: Measure = field(repr=False)

    @property
    def name(self) -> str:
        return self.kind.name

    def symm(self, x, axis_name):
        """The op with jax_symm (its function is named as the kind), inside shard_map."""
        import jax_symm
        return self.measure.call(getattr(jax_symm, self.kind.name), x, axis_name)

    def lax(self, x, axis_name):
        """The same with jax.lax (the kind's lax twin)."""
        from jax import lax
        return self.measure.call(getattr(lax, self.kind.lax_function), x, axis_name)

    def in_elems(self, n: int, world: int) -> int:
        """Per-rank input elements, n = elements per rank (the kind's input chunks)."""
        return n * self.kind.in_chunks(world)

    def algbw_bytes(self, bytes_per_rank: int, world: int) -> int:
        """Bytes for algbw, as nccl-tests: the larger side (all-gather: its output,
        reduce-scatter: its input, all-reduce: its size)."""
        return bytes_per_rank * self.kind.staged_chunks(world)

    def busbw_factor(self, world: int) -> float:
        return self.measure.busbw_factor(world)

    def feedback(self, a, y, world):
        return self.measure.feedback(a, y, world)

    def reference(self, x, world):
        return self.measure.reference(x, world)

    @property
    def exact(self) -> bool:
        """Data movement only (no sum): results must match bit for bit."""
        return not self.kind.sums

    # Every kind is timed raw too (jax_symm.diagnostics.nccl_raw_time, op by
    # name; its ops are the kinds).
    raw_nccl = True


def _ag_feedback(a, y, world):
    # The last rank's chunk of the gather: a static slice of the collective's
    # result (not this rank's own chunk, which XLA may fold away).
    n = a.shape[0]
    return y[(world - 1) * n:]


def _rs_feedback(a, y, world):
    # Writes the (rescaled) result over the input's first chunk: an in-place,
    # per-rank-sized update, so every call of the chain sees new data.
    from jax import lax
    return lax.dynamic_update_slice(a, (y * (1.0 / world)).astype(a.dtype), (0,))


def _ar_feedback(a, y, world):
    # The rescaled sum is the next input: same shape, new data every call.
    return (y * (1.0 / world)).astype(a.dtype)


def _a2a_reference(x, world):
    # Rank r's input is W chunks; rank i's output is chunk i of every rank's.
    return x.reshape(world, world, -1).transpose(1, 0, 2).reshape(-1)


def _ar_reference(x, world):
    return np.tile(x.astype(np.float64).reshape(world, -1).sum(axis=0), world)


def _ag_reference(x, world):
    return np.tile(x, world)


def _rs_reference(x, world):
    return x.astype(np.float64).reshape(world, -1).sum(axis=0)


_MEASURE: dict[str, Measure] = {
    "all_gather": Measure(
        call=lambda f, x, ax: f(x, ax, tiled=True),
        feedback=_ag_feedback,
        reference=_ag_reference,
        busbw_factor=lambda world: (world - 1) / world,
    ),
    "reduce_scatter": Measure(
        call=lambda f, x, ax: f(x, ax, scatter_dimension=0, tiled=True),
        feedback=_rs_feedback,
        reference=_rs_reference,
        busbw_factor=lambda world: (world - 1) / world,
    ),
    "all_reduce": Measure(
        call=lambda f, x, ax: f(x, ax),
        feedback=_ar_feedback,
        reference=_ar_reference,
        busbw_factor=lambda world: 2 * (world - 1) / world,
    ),
    "all_to_all": Measure(
        call=lambda f, x, ax: f(x, ax, 0, 0, tiled=True),
        # The result has the input's shape and new data every call.
        feedback=lambda a, y, world: y,
        reference=_a2a_reference,
        busbw_factor=lambda world: (world - 1) / world,
    ),
}


def _ops() -> dict[str, Op]:
    _kinds.check_one_per_kind("jax_symm.bench.ops._MEASURE", _MEASURE)
    return {name: Op(kind, _MEASURE[name]) for name, kind in _kinds.KINDS.items()}


OPS: dict[str, Op] = _ops()

DTYPES = ("bfloat16", "float32")


def tolerance(dtype: str, world: int) -> float:
    """Relative (to max |reference|) tolerance of a sum's result."""
    return {"bfloat16": 2e-2, "float16": 2e-3}.get(dtype, 1e-5 * world)
