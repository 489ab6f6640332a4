"""The collectives the bench measures. Adding one is one entry in OPS.

Sizes are PER RANK: `bytes_per_rank` is the all-gather's input shard and the
reduce-scatter's output shard (nccl-tests' convention). Bandwidths follow
nccl-tests: algbw = algbw_bytes / time, busbw = algbw * busbw_factor(world).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Op:
    name: str
    symm: Callable          # (x, axis_name) -> y with jax_symm, inside shard_map
    lax: Callable           # the same with jax.lax
    in_elems: Callable      # (n, world) -> per-rank input elements, n = elements per rank
    feedback: Callable      # (a, y, world) -> next input, a's shape: the chain's data dependence
    reference: Callable     # numpy (x_global, world) -> expected global output (out_specs P(axis))
    algbw_bytes: Callable   # (bytes_per_rank, world) -> bytes for algbw
    busbw_factor: Callable  # world -> busbw / algbw
    exact: bool             # data movement only: results must match bit for bit
    raw_nccl: bool = True   # timed by jax_symm.diagnostics.nccl_raw_time (op by name)


def _jax_symm():
    import jax_symm
    return jax_symm


def _lax():
    from jax import lax
    return lax


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


def _ar_reference(x, world):
    return np.tile(x.astype(np.float64).reshape(world, -1).sum(axis=0), world)


def _ag_reference(x, world):
    return np.tile(x, world)


def _rs_reference(x, world):
    return x.astype(np.float64).reshape(world, -1).sum(axis=0)


OPS: dict[str, Op] = {
    "all_gather": Op(
        name="all_gather",
        symm=lambda x, ax: _jax_symm().all_gather(x, ax, tiled=True),
        lax=lambda x, ax: _lax().all_gather(x, ax, tiled=True),
        in_elems=lambda n, world: n,
        feedback=_ag_feedback,
        reference=_ag_reference,
        algbw_bytes=lambda b, world: b * world,
        busbw_factor=lambda world: (world - 1) / world,
        exact=True,
    ),
    "reduce_scatter": Op(
        name="reduce_scatter",
        symm=lambda x, ax: _jax_symm().psum_scatter(x, ax, scatter_dimension=0, tiled=True),
        lax=lambda x, ax: _lax().psum_scatter(x, ax, scatter_dimension=0, tiled=True),
        in_elems=lambda n, world: n * world,
        feedback=_rs_feedback,
        reference=_rs_reference,
        algbw_bytes=lambda b, world: b * world,
        busbw_factor=lambda world: (world - 1) / world,
        exact=False,
    ),
    "all_reduce": Op(
        name="all_reduce",
        symm=lambda x, ax: _jax_symm().psum(x, ax),
        lax=lambda x, ax: _lax().psum(x, ax),
        in_elems=lambda n, world: n,
        feedback=_ar_feedback,
        reference=_ar_reference,
        algbw_bytes=lambda b, world: b,
        busbw_factor=lambda world: 2 * (world - 1) / world,
        exact=False,
    ),
}

DTYPES = ("bfloat16", "float32")


def tolerance(dtype: str, world: int) -> float:
    """Relative (to max |reference|) tolerance of a sum's result."""
    return {"bfloat16": 2e-2, "float16": 2e-3}.get(dtype, 1e-5 * world)
