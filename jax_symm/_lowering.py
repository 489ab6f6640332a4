"""From a primitive's parameters to an XLA FFI custom call, per platform.

Every collective is described to the handlers the same way: the replica groups
as global device ids, a channel that names the call site, and the data layout
as `outer` rows of `world` chunks of `inner_bytes` (see ffi/ffi_common.h).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Callable

import numpy as np

import jax

from . import _compat

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


def _require_mesh(kind: str, ctx):
    axis_ctx = ctx.module_context.axis_context
    if not hasattr(axis_ctx, "mesh"):
        raise NotImplementedError(
            f"jax_symm.{kind} must be used inside jax.shard_map (it has no pmap "
            "or auto-sharding lowering).")
    return axis_ctx


def _partially_manual(axis_ctx) -> bool:
    """shard_map(axis_names=...) over some mesh axes only: XLA's partitioner
    still owns the other axes and would replicate the custom call over them."""
    manual = getattr(axis_ctx, "manual_axes", None)
    return manual is not None and set(manual) != set(axis_ctx.mesh.axis_names)


def _use_lax_instead(kind: str, axis_ctx) -> str | None:
    """Why this call must go to XLA's own collective, if it must."""
    if _partially_manual(axis_ctx):
        return (f"jax_symm.{kind} inside a shard_map that is manual over only some mesh "
                "axes uses XLA's own collective")
    return None


def disabled() -> bool:
    """jax_symm_disable (env JAX_SYMM_DISABLE=1) lowers every jax_symm op to
    XLA's own collective."""
    from . import _config

    return bool(_config.disable.value)


def lower_host(kind: str, lax_rule: Callable, ctx, x, *, axes: tuple,
               outer: int, inner_bytes: int, lax_params: dict):
    """XLA:CPU lowering: the shared-memory host transport (jax_symm/_host.py)."""
    from . import _host

    axis_ctx = _require_mesh(kind, ctx)
    why = _use_lax_instead(kind, axis_ctx)
    groups = None
    if why is None and not _compat.has_order_token(ctx):
        why = ("jax_symm: this CPU program was traced while the default backend was not "
               "the CPU, so its collectives carry no order token; they use XLA's own "
               "collectives.")
    if why is None:
        groups = _compat.replica_groups(axis_ctx, axes)
        why = _host.unusable_reason(groups)
    if why is not None:
        _warn_once(why)
        return lax_rule(ctx, x, **lax_params)
    return _host.lower(kind, ctx, x, groups=groups, outer=outer, inner_bytes=inner_bytes)


# NCCL has no 16-bit integer type: those sums stay with XLA.
_NCCL_UNSUMMABLE = {np.dtype(np.int16), np.dtype(np.uint16)}


def lower_nccl(kind: str, lax_rule: Callable, ctx, x, *, axes: tuple,
               outer: int, inner_bytes: int, lax_params: dict):
    """XLA:GPU lowering: NCCL collectives on symmetric windows.

    Creates the group's communicators and grows its arena here, at lowering
    time, the one point every process passes in step. No side effect is
    declared: identical calls may be merged or dropped, on every device alike,
    and XLA stays free to capture the calls into CUDA graphs.
    """
    from . import _nccl

    axis_ctx = _require_mesh(kind, ctx)
    if (why := _use_lax_instead(kind, axis_ctx)) is not None:
        _warn_once(why)
        return lax_rule(ctx, x, **lax_params)
    if not _nccl.usable():
        return lax_rule(ctx, x, **lax_params)
    _nccl.warn_if_concurrent_command_buffers()
    if kind != "all_gather" and np.dtype(ctx.avals_in[0].dtype) in _NCCL_UNSUMMABLE:
        return lax_rule(ctx, x, **lax_params)
    groups = _compat.replica_groups(axis_ctx, axes)
    _nccl.ensure_groups(groups)
    world = groups.shape[1]
    need = outer * inner_bytes * (1 if kind == "all_reduce" else world)
    arenas = _nccl.ensure_arenas(groups, need)
    rule = jax.ffi.ffi_lowering(_nccl.NCCL_TARGETS[kind])
    _compat.pass_order_token(ctx)  # one stream per device keeps program order
    return rule(
        ctx, x,
        groups=np.ascontiguousarray(groups.reshape(-1), dtype=np.int64),
        group_size=np.int64(world),
        outer=np.int64(outer),
        inner_bytes=np.int64(inner_bytes),
        arena_bytes=arenas,
    )


def singleton_calls() -> bool:
    """JAX_SYMM_SINGLETON_CALLS=1 keeps the custom call for groups of one
    (normally a reshape), to test and time the transport on a single device."""
    return os.environ.get("JAX_SYMM_SINGLETON_CALLS", "0") not in ("", "0", "false", "False")


_TRANSPORTS = {"cpu": lower_host, "cuda": lower_nccl}


def register(prim, kind: str, lax_prim, to_lax_params: Callable, layout_of: Callable,
             identity_rule: Callable) -> None:
    """Registers `prim`'s lowerings: a jax_symm transport on CPU and CUDA, lax
    elsewhere (and wherever jax_symm is disabled).

    `to_lax_params(params)` maps our parameters to lax's primitive's, for the
    fallback; `layout_of(aval_in, params)` gives (outer, inner_bytes);
    `identity_rule(ctx, x, **params)` lowers a group of one (no communication).
    """

    def lax_rule(platform):
        rule = _compat.lax_lowering(lax_prim, platform)

        def lowered(ctx, x, **params):
            out = rule(ctx, x, **params)
            _compat.pass_order_token(ctx)
            return out
        return lowered

    def fallback(platform):
        def rule(ctx, x, **params):
            return lax_rule(platform)(ctx, x, **to_lax_params(params))
        return rule

    def transport_rule(platform):
        def rule(ctx, x, **params):
            if params["axis_size"] == 1 and not singleton_calls():
                _compat.pass_order_token(ctx)
                return identity_rule(ctx, x, **params)
            if disabled():
                return fallback(platform)(ctx, x, **params)
            outer, inner = layout_of(ctx.avals_in[0], params)
            return _TRANSPORTS[platform](kind, lax_rule(platform), ctx, x, axes=params["axes"],
                                         outer=outer, inner_bytes=inner,
                                         lax_params=to_lax_params(params))
        return rule

    _compat.register_lowering(prim, fallback(None))
    for platform in _TRANSPORTS:
        _compat.register_lowering(prim, transport_rule(platform), platform=platform)
