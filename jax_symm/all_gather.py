"""`jax_symm.all_gather`: jax.lax.all_gather through jax_symm's transports."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from . import _compat, _eligibility, _frontend, _kinds, _lowering, settings
from ._primitives import all_gather_p, reduce_scatter_p


_OP = _frontend.Op(_kinds.kind("all_gather"))


def all_gather(x: Any, axis_name: Any, *, axis: int = 0, tiled: bool = False,
               axis_index_groups: Any = None, to: str = "varying") -> Any:
    """Gathers `x` from every device along the mesh axes `axis_name`.

    Same arguments, result and varying-axes typing as :func:`jax.lax.all_gather`
    (``to='reduced'`` is passed through to lax). `x` may be a pytree; each leaf
    is gathered. Must be called inside :func:`jax.shard_map`.
    """
    reason = _eligibility.axis_index_groups(axis_index_groups, "all_gather")
    if reason is not None:
        raise reason.exception()
    allowed = {"varying", "invarying", "reduced"}
    if to not in allowed:
        raise ValueError(f"jax_symm.all_gather: `to` must be one of {sorted(allowed)}, got {to!r}")
    if to == "reduced":
        return lax.all_gather(x, axis_name, axis=axis, tiled=tiled, to=to)
    axes = _frontend.axes(_OP, axis_name, axis_index_groups)
    if not axes:
        return x
    size = _compat.axis_size(axes)

    def bind(leaf):
        ndim = jnp.ndim(leaf)
        return all_gather_p.bind(
            leaf,
            all_gather_dimension=_compat.canonicalize_axis(axis, ndim if tiled else ndim + 1),
            axes=axes, axis_size=size, tiled=bool(tiled), invariant=(to == "invarying"))

    return _frontend.each_leaf(_OP, x, axes, bind)


def _abstract_eval(x_aval, *, all_gather_dimension, axes, axis_size, tiled, invariant):
    _compat.check_axis_names(axes, "jax_symm.all_gather")
    _compat.check_unreduced([x_aval], axes, "all_gather")
    shape = list(x_aval.shape)
    if tiled:
        shape[all_gather_dimension] *= axis_size
    else:
        shape.insert(all_gather_dimension, axis_size)
    if invariant:
        vma = frozenset(a for a in _compat.varying_axes(x_aval) if a not in axes)
    else:
        vma = _compat.collective_vma("all_gather", axes, x_aval)
    return (_compat.update_aval(x_aval, shape, vma),
            _compat.collective_effects(axes))


def _transpose(ct, x, *, all_gather_dimension, axes, axis_size, tiled, invariant):
    if invariant:  # each device keeps its own slice of the invariant cotangent
        chunk = ct.shape[all_gather_dimension] // axis_size
        start = lax.axis_index(axes) * chunk
        out = lax.dynamic_slice_in_dim(ct, start, chunk, axis=all_gather_dimension)
        return (out if tiled else lax.squeeze(out, [all_gather_dimension]),)
    if not _eligibility.summable(ct):
        # The cotangent needs a sum jax_symm has not got (float8, bool): decided
        # here, at trace time, never by a failing call at run time.
        if settings.use_symmetric_memory.value:  # the scope hands it to lax
            return (lax.psum_scatter(ct, axes, scatter_dimension=all_gather_dimension,
                                     tiled=tiled),)
        raise TypeError(
            f"jax_symm.all_gather: the gradient of an all-gather of {ct.dtype} is a "
            f"reduce-scatter, and jax_symm has no sum for {ct.dtype}. Use "
            "jax.lax.all_gather for this array (inside use_symmetric_memory() such "
            "gradients go to lax by themselves).")
    ct = _compat.pvary_for_collective(axes, ct)
    return (reduce_scatter_p.bind(ct, scatter_dimension=all_gather_dimension, axes=axes,
                                  axis_size=axis_size, tiled=tiled),)


def _batch(axis_data, vals_in, dims_in, *, all_gather_dimension, axes, axis_size,
           tiled, invariant):
    (x,), (d,) = vals_in, dims_in
    params = dict(axes=axes, axis_size=axis_size, tiled=tiled, invariant=invariant)
    if axis_data.name not in axes:
        if d is None:
            return all_gather_p.bind(x, all_gather_dimension=all_gather_dimension,
                                     **params), None
        if d <= all_gather_dimension:
            all_gather_dimension += 1
        elif not tiled:  # a new output dimension lands before the batch dim
            d += 1
        return all_gather_p.bind(x, all_gather_dimension=all_gather_dimension,
                                 **params), d
    # Gathering over the vmapped axis itself: the batch already holds every
    # member's value, as in lax's batching rule; no communication is needed.
    if len(axes) > 1:
        raise NotImplementedError(
            "jax_symm.all_gather over a vmapped axis together with other axes")
    if d is None:
        y = jnp.broadcast_to(jnp.expand_dims(x, all_gather_dimension),
                             (*x.shape[:all_gather_dimension], axis_size,
                              *x.shape[all_gather_dimension:]))
    else:
        y = jnp.moveaxis(x, d, all_gather_dimension)
    if tiled:
        y = y.reshape(*y.shape[:all_gather_dimension], -1, *y.shape[all_gather_dimension + 2:])
    return y, None


def _to_lax(params):
    return dict(all_gather_dimension=params["all_gather_dimension"],
                axis_name=params["axes"], axis_index_groups=None,
                axis_size=params["axis_size"], tiled=params["tiled"])


all_gather_p.def_effectful_abstract_eval(_abstract_eval)
_compat.deflinear2(all_gather_p, _transpose)
_compat.register_collective_batcher(all_gather_p, _batch)
_lowering.register(all_gather_p, "all_gather", _to_lax)
