"""Trace-time argument checks shared by the public functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import jax
import jax.numpy as jnp

from . import _kinds

# Sums some transport implements (from C++, `_kinds`); other dtypes raise at trace time.
_SUMMABLE = _kinds.SUMMABLE


def axis_tuple(axis_name: Any) -> tuple:
    """lax's canonical form: one axis name or a tuple of them."""
    if isinstance(axis_name, (set, frozenset, list)):
        raise TypeError(
            f"axis_name must be a hashable axis name or a tuple of them, got {axis_name!r}")
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def check_bound(axes: tuple, api_name: str) -> None:
    """lax's NameError for an axis not bound by an enclosing shard_map, with
    lax's hint (lax itself gives it only for psum under jit)."""
    from . import _compat

    _compat.check_axis_names(axes, f"jax_symm.{api_name}")


def reject_axis_index_groups(axis_index_groups: Any, api_name: str) -> None:
    if axis_index_groups is not None:
        raise NotImplementedError(
            f"jax_symm.{api_name} does not support axis_index_groups; use "
            f"jax.lax.{api_name} for sub-groups of an axis, or a mesh axis "
            "that spans exactly the group.")


def _dtype_of(x: Any):
    return x.dtype if hasattr(x, "dtype") else jnp.result_type(x)


def _bits(dtype: np.dtype) -> int:
    if dtype == np.bool_:
        return 8
    for info in (jnp.iinfo, jnp.finfo):
        try:
            return int(info(dtype).bits)
        except (ValueError, TypeError):
            pass
    return dtype.itemsize * 8


def check_gatherable(x: Any, api_name: str) -> None:
    dtype = _dtype_of(x)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
        raise TypeError(f"jax_symm.{api_name}: x has extended dtype {dtype}; "
                        "gather its underlying data (e.g. jax.random.key_data).")
    if _bits(np.dtype(dtype)) < 8:
        raise TypeError(
            f"jax_symm.{api_name}: x has dtype {dtype}, whose elements are "
            "narrower than a byte; gather a packed uint8 view instead.")


def summable(x: Any) -> bool:
    """Whether the transports have a sum for `x`'s dtype."""
    dtype = _dtype_of(x)
    return not jax.dtypes.issubdtype(dtype, jax.dtypes.extended) and np.dtype(dtype) in _SUMMABLE


def check_summable(x: Any, api_name: str) -> None:
    dtype = _dtype_of(x)
    if not summable(x):
        raise TypeError(
            f"jax_symm.{api_name}: x has dtype {dtype}, which has no sum here; "
            f"supported: {', '.join(sorted(str(d) for d in _SUMMABLE))}.")
