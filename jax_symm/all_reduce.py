"""`jax_symm.all_reduce` (alias `psum`): jax.lax.psum of one array per leaf
through jax_symm's transports."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from . import _compat, _frontend, _kinds, _lowering
from ._primitives import all_reduce_p


_OP = _frontend.Op(_kinds.kind("all_reduce"), skips_one_sized_axes=True,
                   accepts_axis_list=True)


def all_reduce(x: Any, axis_name: Any, *, axis_index_groups: Any = None) -> Any:
    """Sums `x` over the mesh axes `axis_name`; every device gets the total.

    Same arguments, result and varying-axes typing as :func:`jax.lax.psum`
    (booleans are summed as int32, as lax does). `x` may be a pytree. Named
    mesh axes only: positional (integer) axes raise NotImplementedError.
    """
    axes = _frontend.axes(_OP, axis_name, axis_index_groups)
    if not axes:
        return x

    def bind(leaf):
        return all_reduce_p.bind(leaf, axes=axes, axis_size=_compat.axis_size(axes),
                                 invariant=_compat.check_vma_enabled())

    def each(leaf):
        if jnp.result_type(leaf) == jnp.bool_:
            leaf = lax.convert_element_type(leaf, jnp.int32)
        if not _compat.is_tracer(leaf):  # a constant: no devices involved
            return leaf * _compat.axis_size(axes)
        return _frontend.one_leaf(_OP, leaf, axes, bind, lambda v: lax.psum(v, axes))

    return jax.tree_util.tree_map(each, x)


psum = all_reduce


def _abstract_eval(x_aval, *, axes, axis_size, invariant):
    _compat.check_axis_names(axes, "jax_symm.all_reduce")
    _compat.check_unreduced([x_aval], axes, "psum")
    vma = frozenset(a for a in _compat.varying_axes(x_aval) if a not in axes)
    return (_compat.update_aval(x_aval, x_aval.shape, vma),
            _compat.collective_effects(axes))


def _transpose(ct, x, *, axes, axis_size, invariant):
    if invariant:  # varying -> invariant: the cotangent just becomes varying
        return (_compat.pvary(ct, axes),)
    # Without varying-axes types a psum is a psum + broadcast, so its
    # transpose sums again, as lax's psum transpose does.
    return (all_reduce_p.bind(ct, axes=axes, axis_size=axis_size, invariant=False),)


def _batch(axis_data, vals_in, dims_in, *, axes, axis_size, invariant):
    (x,), (d,) = vals_in, dims_in
    rest = tuple(a for a in axes if a != axis_data.name)

    def reduce_rest(v):
        if not rest:
            return v
        return all_reduce_p.bind(v, axes=rest, axis_size=axis_size // (
            axis_data.size if axis_data.name in axes else 1), invariant=invariant)

    if axis_data.name not in axes:
        return all_reduce_p.bind(x, axes=axes, axis_size=axis_size, invariant=invariant), d
    # Summing over the vmapped axis: the batch holds every member's value.
    y = x * axis_data.size if d is None else jnp.sum(x, axis=d, dtype=x.dtype)
    return reduce_rest(y), None


def _to_lax(params):
    return dict(axes=params["axes"], axis_index_groups=None)


all_reduce_p.def_effectful_abstract_eval(_abstract_eval)
_compat.deflinear2(all_reduce_p, _transpose)
_compat.register_collective_batcher(all_reduce_p, _batch)
_lowering.register(all_reduce_p, "all_reduce", _to_lax)
