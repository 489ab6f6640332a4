"""From a jax_symm primitive to XLA, for every op and platform.

Each op module describes its collective with a `Collective` spec and calls
`register`. The one lowering rule here then, for each call:

1. lowers a group of one device to a reshape (no data moves);
2. decides whether XLA's own collective serves the call instead, and why
   (`_use_xla_reason`): jax_symm disabled, a partially manual shard_map, a
   transport that cannot serve it, or -- on GPU (`_nccl.window_reason`) --
   a communicator without symmetric kernels, an NCCL below the window path's
   version floor, or a message above the size crossover of `_dispatch`;
3. moves the gathered or scattered dimension to the front in JAX
   (`_leading_axis_form`), so that transports only ever see NCCL's natural
   layout and XLA fuses the transposes into neighbouring work;
4. hands the call to the platform's transport slice: `_host` (XLA:CPU) or
   `_nccl` (XLA:GPU), which own their set-up, FFI targets and attributes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable

import jax.numpy as jnp

from . import _compat, _kinds, settings


@dataclasses.dataclass(frozen=True)
class Collective:
    """What the shared lowering needs to know about one collective primitive.

    kind:      "all_gather", "reduce_scatter" or "all_reduce" (the transports' name)
    lax:       lax's twin primitive, whose lowering serves the XLA path
    lax_params: our primitive's parameters -> lax's
    dimension: the parameter naming the gathered / scattered dimension, if any
    """

    kind: str
    lax: Any
    lax_params: Callable[[dict], dict]
    dimension: str | None = None


# The host transport's windows pair two or more ranks; only NCCL has a 1-rank
# call (a 1-rank communicator), which is what the setting exists to measure.
_SINGLETON_ON_CPU = (
    "jax_symm.{kind} over a group of one device with jax_symm_singleton_calls on: "
    "that setting keeps the custom call for one-device groups, which only the GPU "
    "transport has (a 1-rank NCCL communicator); the CPU transport's shared-memory "
    "windows need 2 or more ranks. On CPU turn it off "
    "(jax.config.update('jax_symm_singleton_calls', False), or unset "
    "JAX_SYMM_SINGLETON_CALLS), or use a mesh axis of 2 or more devices.")


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _message_bytes(spec: Collective, ctx) -> int:
    """Bytes one rank contributes: a side of the call that holds one chunk."""
    nbytes = [int(math.prod(a.shape)) * a.dtype.itemsize
              for a in (ctx.avals_in[0], ctx.avals_out[0])]
    return _kinds.kind(spec.kind).chunk_bytes(*nbytes)


def _use_xla_reason(spec: Collective, platform: str, ctx, axes: tuple):
    """(why XLA's collective serves this call, or None; whether to warn; groups)."""
    if settings.disable.value:
        return "disabled", False, None
    axis_ctx = ctx.module_context.axis_context
    mesh = getattr(axis_ctx, "mesh", None)
    if mesh is None:
        raise NotImplementedError(
            f"jax_symm.{spec.kind} must be used inside jax.shard_map or jax.pmap (this "
            "program has no manual mesh axes to communicate over).")
    manual = getattr(axis_ctx, "manual_axes", None)
    if manual is not None and set(manual) != set(mesh.axis_names):
        # XLA's partitioner owns the other axes and would replicate the call.
        return (f"jax_symm.{spec.kind} inside a shard_map that is manual over only some "
                "mesh axes uses XLA's own collective"), True, None
    groups = _compat.replica_groups(axis_ctx, axes)
    if platform == "cpu":
        from . import _host

        why = _host.unusable_reason(groups)
        return why, True, groups
    from . import _nccl

    why, warn = _nccl.window_reason(spec.kind, ctx.avals_in[0].dtype, groups,
                                    _message_bytes(spec, ctx))
    return why, warn, (None if why is not None else groups)


def _leading_axis_form(spec: Collective, prim, params: dict, out_shape: tuple):
    """The call as a JAX function around the same primitive along dimension 0
    (untiled), or None if it already is in that form."""
    if spec.dimension is None or params[spec.dimension] == 0:
        return None
    d = params[spec.dimension]
    lead = dict(params, **{spec.dimension: 0, "tiled": False})
    world = params["axis_size"]
    if _kinds.kind(spec.kind).gathers:
        def gather(x):
            # [W, *x] -> W moved to d; tiled merges it with x's dimension d.
            y = jnp.moveaxis(prim.bind(x, **lead), 0, d)
            return y.reshape(out_shape)
        return gather

    def scatter(x):
        y = jnp.moveaxis(x, d, 0)
        if params["tiled"]:  # [W*c, ...] -> [W, c, ...]: W chunks of c rows
            y = y.reshape(world, y.shape[0] // world, *y.shape[1:])
        r = prim.bind(y, **lead)
        return jnp.moveaxis(r, 0, d) if params["tiled"] else r
    return scatter


def register(prim, spec: Collective) -> None:
    """Registers `prim`'s lowerings: jax_symm's transports on CPU and CUDA,
    XLA's collective elsewhere and wherever jax_symm does not serve a call."""

    def xla_rule(platform):
        rule = _compat.lax_lowering(spec.lax, platform)

        def lowered(ctx, x, **params):
            out = rule(ctx, x, **spec.lax_params(params))
            _compat.pass_order_token(ctx)
            return out
        return lowered

    def transport_rule(platform):
        def rule(ctx, x, **params):
            if params["axis_size"] == 1 and not settings.singleton_calls.value:
                _compat.pass_order_token(ctx)
                return [_compat.reshape_to(ctx, x, ctx.avals_out[0])]
            if params["axis_size"] == 1 and platform == "cpu" and not settings.disable.value:
                raise NotImplementedError(_SINGLETON_ON_CPU.format(kind=spec.kind))
            why, warn, groups = _use_xla_reason(spec, platform, ctx, params["axes"])
            if why is not None:
                if warn:
                    _warn_once(why)
                return xla_rule(platform)(ctx, x, **params)
            relayout = _leading_axis_form(spec, prim, params, ctx.avals_out[0].shape)
            if relayout is not None:
                return _compat.lower_fun(relayout, multiple_results=False)(ctx, x)
            transport = _transport(platform)
            return transport.lower(spec.kind, ctx, x, groups=groups,
                                   chunk_bytes=_message_bytes(spec, ctx))
        return rule

    _compat.register_lowering(prim, xla_rule(None))
    for platform in ("cpu", "cuda"):
        _compat.register_lowering(prim, transport_rule(platform), platform=platform)


def _transport(platform: str):
    if platform == "cpu":
        from . import _host
        return _host
    from . import _nccl
    return _nccl
