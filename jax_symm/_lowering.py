"""From a primitive's parameters to an XLA FFI custom call, per platform.

Every collective is described to the handlers the same way: the replica groups
as global device ids, a channel that names the call site, and the data layout
as `outer` rows of `world` chunks of `inner_bytes` (see ffi/ffi_common.h).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable

import numpy as np

import jax

from . import _compat

# Which primitive lowering the transports implement; the rest go to lax.
KINDS = ("all_gather", "reduce_scatter", "all_reduce")


def layout(shape, dim: int, itemsize: int) -> tuple[int, int]:
    """(outer, inner_bytes) for data split around dimension `dim` of `shape`.

    For all-gather `shape` is the input and `dim` the gather dimension; for
    reduce-scatter `shape` is the output (tiled form) and `dim` the scatter
    dimension. Either way: outer = prod(shape[:dim]), inner = the rest.
    """
    outer = math.prod(shape[:dim])
    inner = math.prod(shape[dim:]) * itemsize
    return int(outer), int(inner)


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _groups_process_indices(groups: np.ndarray) -> set[int]:
    by_id = {d.id: d.process_index for d in jax.devices()}
    return {by_id[int(i)] for i in groups.reshape(-1)}


def lower_host(kind: str, lax_rule: Callable, ctx, x, *, axes: tuple,
               outer: int, inner_bytes: int, **lax_params):
    """XLA:CPU lowering: the shared-memory host transport."""
    from . import _host
    from ._native import HOST_TARGETS

    axis_ctx = ctx.module_context.axis_context
    if not hasattr(axis_ctx, "mesh"):
        raise NotImplementedError(
            f"jax_symm.{kind} must be used inside jax.shard_map (it has no pmap "
            "or auto-sharding lowering).")
    groups = _compat.replica_groups(axis_ctx, axes)
    if _compat.process_count() > 1:
        _host.setup()
        if not _host.group_is_host_local(_groups_process_indices(groups)):
            _warn_once("jax_symm: a group spans several hosts; the CPU transport "
                       "is shared memory, so these calls use XLA's own collectives.")
            return lax_rule(ctx, x, **lax_params)
    _host.setup()
    channel = next(ctx.module_context.channel_iterator)
    rule = jax.ffi.ffi_lowering(HOST_TARGETS[kind], has_side_effect=True)
    return rule(
        ctx, x,
        groups=np.ascontiguousarray(groups.reshape(-1), dtype=np.int64),
        group_size=np.int64(groups.shape[1]),
        channel=np.int64(channel),
        outer=np.int64(outer),
        inner_bytes=np.int64(inner_bytes),
    )


def register(prim, kind: str, lax_prim, to_lax_params: Callable, layout_of: Callable,
             identity_rule: Callable) -> None:
    """Registers `prim`'s lowerings: host transport on CPU, lax elsewhere.

    `to_lax_params(params)` maps our parameters to lax's primitive's, for the
    fallback; `layout_of(aval_in, params)` gives (outer, inner_bytes);
    `identity_rule(ctx, x, **params)` lowers a group of one (no communication).
    """

    def fallback(platform):
        def rule(ctx, x, **params):
            return _compat.lax_lowering(lax_prim, platform)(ctx, x, **to_lax_params(params))
        return rule

    def host_rule(ctx, x, **params):
        if params["axis_size"] == 1:
            return identity_rule(ctx, x, **params)
        outer, inner = layout_of(ctx.avals_in[0], params)
        lax_rule = _compat.lax_lowering(lax_prim, "cpu")
        return lower_host(kind, lax_rule, ctx, x, axes=params["axes"], outer=outer,
                          inner_bytes=inner, **to_lax_params(params))

    _compat.register_lowering(prim, fallback(None))
    _compat.register_lowering(prim, host_rule, platform="cpu")
