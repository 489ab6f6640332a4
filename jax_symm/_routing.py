"""Which path serves a call at lowering: a transport, or XLA's own collective.

One transport per lowering platform (`TRANSPORTS`); the decision reads the
settings, the shard_map the call sits in (`_eligibility` names the reasons)
and then asks the platform's transport (`Transport.refusal`). Every process
reaches the same answer for the same program.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _compat, _eligibility, _host, _nccl, settings
from ._kinds import Kind
from ._transport import Call, Transport

TRANSPORTS: dict[str, Transport] = {t.platform: t for t in (_host.TRANSPORT, _nccl.TRANSPORT)}


class Route(NamedTuple):
    """The decision for one call: `call` for the transport to lower, or None
    where XLA's collective serves it, then `why` (and whether to warn)."""

    call: Call | None
    why: str | None = None
    warn: bool = False


def chunk_bytes(kind: Kind, ctx, world: int) -> int:
    """Bytes per rank and chunk of the call, from its input's type."""
    aval = ctx.avals_in[0]
    return kind.chunk_bytes(int(math.prod(aval.shape)) * aval.dtype.itemsize, world)


def route(kind: Kind, transport: Transport, ctx, axes: tuple, axis_size: int) -> Route:
    """Decides the path of a call of `kind` over `axes` (a group of two or more
    devices, or one with jax_symm_singleton_calls on)."""
    if settings.disable.value:
        return Route(None, _eligibility.DISABLED)
    if axis_size == 1 and not transport.serves_one_rank:
        raise _eligibility.one_rank_unserved(kind)
    axis_ctx = ctx.module_context.axis_context
    mesh = getattr(axis_ctx, "mesh", None)
    if mesh is None:
        raise _eligibility.no_mesh(kind)
    manual = getattr(axis_ctx, "manual_axes", None)
    if manual is not None and set(manual) != set(mesh.axis_names):
        return Route(None, _eligibility.partially_manual(kind), warn=True)
    call = Call(kind, np.dtype(ctx.avals_in[0].dtype), _compat.replica_groups(axis_ctx, axes),
                chunk_bytes(kind, ctx, axis_size), tuple(axes))
    refusal = transport.refusal(call)
    if refusal is not None:
        return Route(None, refusal.why, refusal.warn)
    return Route(call)
