"""`jax_symm.all_to_all`: jax.lax.all_to_all through jax_symm's transports."""

from __future__ import annotations

import operator
from typing import Any

import jax.numpy as jnp
from jax import lax

from . import _compat, _frontend, _kinds, _lowering
from ._primitives import all_to_all_p


_OP = _frontend.Op(_kinds.kind("all_to_all"))


def _canonical_axis(name: str, axis: Any, shape: tuple) -> int:
    """`axis` of an operand of `shape` as a non-negative int, or lax's user
    gets a message that says what is wrong (lax itself fails with an
    IndexError, or a crash, on these)."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"jax_symm.all_to_all: {name} must be an int, got {axis!r}") from None
    ndim = len(shape)
    if not -ndim <= axis < ndim:
        valid = f"{-ndim} to {ndim - 1}" if ndim else "none: x is a scalar"
        raise ValueError(f"jax_symm.all_to_all: {name}={axis} is out of range for x of shape "
                         f"{tuple(shape)} (valid: {valid})")
    return axis % ndim


def all_to_all(x: Any, axis_name: Any, split_axis: int, concat_axis: int, *,
               axis_index_groups: Any = None, tiled: bool = False) -> Any:
    """Splits `x` along `split_axis` into one chunk per device of the mesh
    axes `axis_name`, sends chunk j to device j, and concatenates the chunks
    received along `concat_axis` (in the senders' order).

    Same arguments, result and varying-axes typing as :func:`jax.lax.all_to_all`;
    negative axes count from the end. `x` may be a pytree; each leaf is
    exchanged. Must be called inside :func:`jax.shard_map`.
    """
    axes = _frontend.axes(_OP, axis_name, axis_index_groups)
    size = _compat.axis_size(axes)

    def bind(leaf):
        shape = jnp.shape(leaf)
        split = _canonical_axis("split_axis", split_axis, shape)
        concat = _canonical_axis("concat_axis", concat_axis, shape)
        n = shape[split]
        if tiled and n % size:
            raise ValueError(
                f"jax_symm.all_to_all: split_axis {split} of x (shape {tuple(shape)}) has size "
                f"{n}, which is not divisible by the size of {_named(axes)} ({size}): tiled, "
                "the split axis is cut into one equal chunk per device")
        if not tiled and n != size:
            raise ValueError(
                f"jax_symm.all_to_all: split_axis {split} of x (shape {tuple(shape)}) has size "
                f"{n}, which must equal the size of {_named(axes)} ({size}): untiled, each "
                "device gets one slice of it (or pass tiled=True to cut it into chunks)")
        # As lax does: untiled, a new axis of one at concat_axis (counted in
        # the output, where the split axis is gone) takes the chunks, and the
        # split axis, then of one element per chunk, is squeezed out after.
        if not tiled:
            if split < concat:
                concat += 1
                leaf = lax.expand_dims(leaf, (concat,))
            elif concat < split:
                leaf = lax.expand_dims(leaf, (concat,))
                split += 1
        out = all_to_all_p.bind(leaf, split_axis=split, concat_axis=concat, axes=axes,
                                axis_size=size, tiled=bool(tiled))
        return lax.squeeze(out, (split,)) if not tiled and split != concat else out

    return _frontend.each_leaf(_OP, x, axes, bind)


def _named(axes: tuple) -> str:
    return f"axis {axes[0]!r}" if len(axes) == 1 else f"axes {axes}"


# The primitive is lax's all_to_all_p: always tiled in effect (the untiled
# case is an expand_dims / squeeze around it, above); `tiled` is carried for
# XLA's path, as lax carries it.
def _abstract_eval(x_aval, *, split_axis, concat_axis, axes, axis_size, tiled):
    _compat.check_axis_names(axes, "jax_symm.all_to_all")
    _compat.check_unreduced([x_aval], axes, "all_to_all")
    shape = list(x_aval.shape)
    for name, axis in (("split_axis", split_axis), ("concat_axis", concat_axis)):
        if not 0 <= axis < len(shape):
            raise ValueError(f"jax_symm.all_to_all: {name} {axis} is out of bounds for an "
                             f"operand of rank {len(shape)}")
    if shape[split_axis] % axis_size:
        raise ValueError(f"jax_symm.all_to_all: split_axis {split_axis} has size "
                         f"{shape[split_axis]}, not divisible by the axis size {axis_size}")
    shape[split_axis] //= axis_size
    shape[concat_axis] *= axis_size
    vma = _compat.collective_vma("all_to_all", axes, x_aval)
    out = _compat.update_aval(x_aval, shape, vma).update(weak_type=False)
    return out, _compat.collective_effects(axes)


def _transpose(ct, x, *, split_axis, concat_axis, axes, axis_size, tiled):
    # Its own transpose: what went from chunk j here to rank j comes back.
    ct = _compat.pvary_for_collective(axes, ct)
    return (all_to_all_p.bind(ct, split_axis=concat_axis, concat_axis=split_axis, axes=axes,
                              axis_size=axis_size, tiled=tiled),)


def _split(axis: int, parts: int, x):
    shape = list(x.shape)
    shape[axis:axis + 1] = [parts, shape[axis] // parts]
    return x.reshape(shape)


def _fold(axis: int, x):
    shape = list(x.shape)
    shape[axis:axis + 2] = [shape[axis] * shape[axis + 1]]
    return x.reshape(shape)


def _batch(axis_data, vals_in, dims_in, *, split_axis, concat_axis, axes, axis_size, tiled):
    (x,), (d,) = vals_in, dims_in
    params = dict(axes=axes, axis_size=axis_size, tiled=tiled)
    if axis_data.name not in axes:
        if d is None:
            return all_to_all_p.bind(x, split_axis=split_axis, concat_axis=concat_axis,
                                     **params), None
        return all_to_all_p.bind(x, split_axis=split_axis + (d <= split_axis),
                                 concat_axis=concat_axis + (d <= concat_axis), **params), d
    # Over the vmapped axis itself: the batch holds every member's value, so
    # the exchange is a local relayout, as in lax's batching rule.
    if len(axes) > 1:
        raise NotImplementedError(
            "jax_symm.all_to_all over a vmapped axis together with other axes")
    if d is None:
        x = jnp.broadcast_to(x, (axis_data.size, *x.shape))
        d = 0
    if split_axis == concat_axis:
        axis = split_axis + (d <= split_axis)
        x = _split(axis, axis_size, x)
        moved = d + (axis <= d)
        return _fold(axis, jnp.swapaxes(x, moved, axis)), d
    x = _fold(concat_axis, jnp.moveaxis(x, d, concat_axis))
    return _split(split_axis, axis_size, x), split_axis


def _to_lax(params):
    return dict(split_axis=params["split_axis"], concat_axis=params["concat_axis"],
                axis_name=params["axes"], axis_index_groups=None, tiled=params["tiled"])


all_to_all_p.def_effectful_abstract_eval(_abstract_eval)
_compat.deflinear2(all_to_all_p, _transpose)
_compat.register_collective_batcher(all_to_all_p, _batch)
_lowering.register(all_to_all_p, "all_to_all", _to_lax)
