"""From a jax_symm primitive to XLA, for every op and platform.

Each op module registers its primitive with `register`. The one lowering
rule here then, for each call:

1. lowers a group of one device to a reshape (no data moves);
2. asks `_routing` which path serves the call: XLA's own collective (jax_symm
   disabled, a partially manual shard_map, or what the platform's transport
   refuses: `Transport.refusal`), or the transport;
3. has the transport lower the call in NCCL's natural layout, world chunks
   along the leading axis, in and out as the kind has them (`_kinds.Kind`:
   its split and concat axes): the relayout around it is lowered here, in
   JAX (`_leading_axis_form`), so that XLA fuses the transposes into
   neighbouring work and the routing is decided once.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import jax.numpy as jnp

from . import _compat, _kinds, _routing, settings
from ._kinds import Kind


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _leading_axis_form(kind: Kind, params: dict, in_aval, out_aval):
    """(before, the call's input aval, its output aval, after): the call in
    the leading-axis form, between two JAX functions; None if the call's
    buffers already are in that form.

    The form (ffi/ffi_common.h CallLayout): a side of WORLD chunks is
    [world, *chunk], chunk j being the j-th slice of the axis the kind names
    for it (`Kind.split` in, `Kind.concat` out), major; a side of ONE chunk is
    the chunk as it lies. So the input's split axis is cut into world slices
    that move to the front, and the output's leading world chunks move to its
    concat axis and merge with it. Where that axis is 0 the bytes already lie
    so, and no data moves (that side keeps its own type).
    """
    split = params[kind.split] if kind.split else 0
    concat = params[kind.concat] if kind.concat else 0
    if split == 0 and concat == 0:
        return None
    world = params["axis_size"]
    like = lambda aval, s: _compat.update_aval(aval, s, _compat.varying_axes(aval))
    chunk = list(in_aval.shape)  # one rank's chunk, in the input's order
    if kind.split:
        chunk[split] //= world
    before, lead_in, after, lead_out = None, in_aval, None, out_aval
    if split:
        lead_in = like(in_aval, (world, *chunk))

        def before(x):
            y = x.reshape(*x.shape[:split], world, x.shape[split] // world,
                          *x.shape[split + 1:])
            return jnp.moveaxis(y, split, 0)
    if concat:
        # An all-gather's untiled concat axis is the new one, of the output.
        lead_out = like(out_aval, (world, *chunk))
        after = lambda y: jnp.moveaxis(y, 0, concat).reshape(out_aval.shape)
    return before, lead_in, lead_out, after


def _lower_call(transport, call, kind: Kind, ctx, x, params: dict):
    """The transport's custom call, with the relayout to and from the leading
    form around it (lowered here, so that nothing is routed twice)."""
    form = _leading_axis_form(kind, params, ctx.avals_in[0], ctx.avals_out[0])
    if form is None:
        return transport.lower(call, ctx, x)
    before, lead_in, lead_out, after = form
    # Every context is made before any sets its tokens (each may do so once).
    ctx_before = _compat.with_avals(ctx, ctx.avals_in, [lead_in])
    ctx_call = _compat.with_avals(ctx, [lead_in], [lead_out])
    ctx_after = _compat.with_avals(ctx, [lead_out], ctx.avals_out)
    if before is not None:
        (x,) = _compat.lower_fun(before, multiple_results=False)(ctx_before, x)
    (y,) = transport.lower(call, ctx_call, x)
    if after is not None:
        (y,) = _compat.lower_fun(after, multiple_results=False)(ctx_after, y)
    _compat.pass_order_token(ctx)
    return [y]


def register(prim, kind_name: str, lax_params: Callable[[dict], dict]) -> None:
    """Registers `prim`'s lowerings: a transport's on each platform that has
    one, XLA's collective (lax's twin primitive, its parameters from
    `lax_params`) elsewhere and wherever the transport does not serve a call."""
    kind = _kinds.kind(kind_name)
    twin = _compat.lax_primitive(kind.lax_twin)

    def xla_rule(platform):
        rule = _compat.lax_lowering(twin, platform)

        def lowered(ctx, x, **params):
            out = rule(ctx, x, **lax_params(params))
            _compat.pass_order_token(ctx)
            return out
        return lowered

    def transport_rule(transport):
        fallback = xla_rule(transport.platform)

        def rule(ctx, x, **params):
            if params["axis_size"] == 1 and not settings.singleton_calls.value:
                _compat.pass_order_token(ctx)
                return [_compat.reshape_to(ctx, x, ctx.avals_out[0])]
            route = _routing.route(kind, transport, ctx, params["axes"], params["axis_size"])
            if route.call is None:
                if route.warn:
                    _warn_once(route.why)
                return fallback(ctx, x, **params)
            return _lower_call(transport, route.call, kind, ctx, x, params)
        return rule

    _compat.register_lowering(prim, xla_rule(None))
    for transport in _routing.TRANSPORTS.values():
        _compat.register_lowering(prim, transport_rule(transport), platform=transport.platform)
