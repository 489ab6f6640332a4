"""`jax_symm.reduce_scatter` (alias `psum_scatter`): jax.lax.psum_scatter
through jax_symm's transports."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from . import _compat, _frontend, _kinds, _lowering
from ._primitives import all_gather_p, reduce_scatter_p


_OP = _frontend.Op(_kinds.kind("reduce_scatter"), skips_one_sized_axes=True)


def reduce_scatter(x: Any, axis_name: Any, *, scatter_dimension: int = 0,
                   tiled: bool = False, axis_index_groups: Any = None) -> Any:
    """Sums `x` over the mesh axes `axis_name` and keeps this device's slice.

    Same arguments, result and varying-axes typing as :func:`jax.lax.psum_scatter`.
    `x` may be a pytree; each leaf is reduced. Must be called inside
    :func:`jax.shard_map`.
    """
    axes = _frontend.axes(_OP, axis_name, axis_index_groups)
    if not axes:
        return x
    size = _compat.axis_size(axes)

    def bind(leaf):
        # Negative dimensions count from the end, as in newer lax (0.11+).
        dim = _compat.canonicalize_axis(scatter_dimension, max(jnp.ndim(leaf), 1))
        return reduce_scatter_p.bind(
            leaf, scatter_dimension=dim, axes=axes, axis_size=size, tiled=bool(tiled))

    def unreduced(leaf):
        return lax.psum_scatter(leaf, axes, scatter_dimension=scatter_dimension, tiled=tiled)

    return _frontend.each_leaf(_OP, x, axes, bind, unreduced)


psum_scatter = reduce_scatter


def _abstract_eval(x_aval, *, scatter_dimension, axes, axis_size, tiled):
    _compat.check_axis_names(axes, "jax_symm.reduce_scatter")
    _compat.check_unreduced([x_aval], axes, "reduce_scatter")
    shape = list(x_aval.shape)
    if not 0 <= scatter_dimension < len(shape):
        raise ValueError(f"jax_symm.reduce_scatter: scatter_dimension {scatter_dimension} "
                         f"is out of bounds for an operand of rank {len(shape)}")
    n = shape[scatter_dimension]
    if tiled:
        if n % axis_size:
            raise ValueError(
                f"jax_symm.reduce_scatter: tiled scatter dimension {scatter_dimension} "
                f"has size {n}, which is not divisible by the axis size {axis_size}")
        shape[scatter_dimension] = n // axis_size
    else:
        if n != axis_size:
            raise ValueError(
                f"jax_symm.reduce_scatter: scatter dimension {scatter_dimension} has "
                f"size {n}, which must equal the axis size {axis_size} (or pass tiled=True)")
        del shape[scatter_dimension]
    vma = _compat.collective_vma("reduce_scatter", axes, x_aval)
    return (_compat.update_aval(x_aval, shape, vma),
            _compat.collective_effects(axes))


def _transpose(ct, x, *, scatter_dimension, axes, axis_size, tiled):
    ct = _compat.pvary_for_collective(axes, ct)
    return (all_gather_p.bind(ct, all_gather_dimension=scatter_dimension, axes=axes,
                              axis_size=axis_size, tiled=tiled, invariant=False),)


def _batch(axis_data, vals_in, dims_in, *, scatter_dimension, axes, axis_size, tiled):
    (x,), (d,) = vals_in, dims_in
    params = dict(axes=axes, axis_size=axis_size, tiled=tiled)
    if axis_data.name not in axes:
        if d is None:
            return reduce_scatter_p.bind(x, scatter_dimension=scatter_dimension,
                                         **params), None
        if d <= scatter_dimension:
            scatter_dimension += 1
        elif not tiled:  # the scattered dimension disappears before d
            d -= 1
        return reduce_scatter_p.bind(x, scatter_dimension=scatter_dimension,
                                     **params), d
    # Reducing over the vmapped axis itself: sum the batch, and the scattered
    # dimension becomes the new batch dimension, as in lax's batching rule.
    if len(axes) > 1:
        raise NotImplementedError(
            "jax_symm.reduce_scatter over a vmapped axis together with other axes")
    y = x * axis_size if d is None else x.sum(axis=d, dtype=x.dtype)
    if tiled:
        n = y.shape[scatter_dimension]
        y = y.reshape(*y.shape[:scatter_dimension], axis_size, n // axis_size,
                      *y.shape[scatter_dimension + 1:])
    return y, scatter_dimension


def _to_lax(params):
    return dict(scatter_dimension=params["scatter_dimension"], axis_name=params["axes"],
                axis_index_groups=None, axis_size=params["axis_size"],
                tiled=params["tiled"])


reduce_scatter_p.def_effectful_abstract_eval(_abstract_eval)
_compat.deflinear2(reduce_scatter_p, _transpose)
_compat.register_collective_batcher(reduce_scatter_p, _batch)
_lowering.register(reduce_scatter_p, "reduce_scatter", _to_lax)
