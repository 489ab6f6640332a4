"""Whether jax_symm serves a call, and if not why: every reason, named once.

Trace time (the front ends, `_frontend`): a direct jax_symm call raises on a
reason, with what to do instead; `use_symmetric_memory()` hands the same call
to lax unchanged. `trace_time_reason` is the one list both consult.

Lowering time (`_routing`): jax_symm disabled, a shard_map manual over only
some mesh axes, and a group of one device on a transport without 1-rank
calls are named here; what a transport itself cannot serve (a group across
hosts, a dtype NCCL does not sum, the crossover) it names itself
(`Transport.refusal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp

from . import _compat, _kinds
from ._kinds import Kind


class Reason(NamedTuple):
    """Why jax_symm does not serve a call: the exception a direct call raises."""

    error: type
    message: str

    def exception(self) -> Exception:
        return self.error(self.message)


# ---- trace time: about the arguments ----

def axis_tuple(axis_name: Any) -> tuple:
    """lax's canonical form: one axis name or a tuple of them."""
    if isinstance(axis_name, (set, frozenset, list)):
        raise TypeError(
            f"axis_name must be a hashable axis name or a tuple of them, got {axis_name!r}")
    return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def axis_index_groups(groups: Any, api_name: str) -> Reason | None:
    if groups is None:
        return None
    return Reason(NotImplementedError,
                  f"jax_symm.{api_name} does not support axis_index_groups; use "
                  f"jax.lax.{api_name} for sub-groups of an axis, or a mesh axis "
                  "that spans exactly the group.")


def positional_axes(axes: tuple, api_name: str, lax_name: str) -> Reason | None:
    if not any(isinstance(a, int) for a in axes):
        return None
    return Reason(NotImplementedError,
                  f"jax_symm.{api_name} works over named mesh axes only; use "
                  f"jax.lax.{lax_name} for positional axes.")


def check_bound(axes: tuple, api_name: str) -> None:
    """lax's NameError for an axis not bound by an enclosing shard_map, with
    lax's hint (lax itself gives it only for psum under jit). Inside a
    shard_map (or pmap) that hint points the wrong way: there the error names
    the unknown axis and lists the axes that are bound and the mesh's."""
    bound = _compat.bound_axis_sizes()
    unknown = [a for a in axes if not isinstance(a, int) and a not in bound]
    if not unknown or not bound:  # nothing wrong, or outside: lax's check and words
        _compat.check_axis_names(axes, f"jax_symm.{api_name}")
        return
    name = unknown[0]
    listed = ", ".join(f"{a!r} (size {n})" for a, n in bound.items())
    mesh = _compat.current_mesh_axes()
    mesh_text = f"; the mesh's axes are {mesh}" if mesh else ""
    close = _closest(str(name), [a for a in bound if isinstance(a, str)])
    hint = f" Did you mean {close!r}?" if close else ""
    raise NameError(
        f"Found an unbound axis name: {name}. jax_symm.{api_name} is inside a "
        f"shard_map (or pmap/vmap), but {name!r} is not an axis bound there: the "
        f"bound axes are {listed}{mesh_text}.{hint} Pass one of those names (or a "
        f"tuple of them) as axis_name.")


def _edits(a: str, b: str) -> int:
    """Edits from a to b, a swap of neighbours counting one (typed names:
    'pt' for 'tp')."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _closest(name: str, names: list[str]) -> str | None:
    """The one name within a typo of `name` (None if none or several)."""
    limit = max(1, len(name) // 3)
    near = [n for n in names if _edits(name, n) <= limit]
    return near[0] if len(near) == 1 else None


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


def not_gatherable(x: Any, api_name: str) -> Reason | None:
    dtype = _dtype_of(x)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.extended):
        return Reason(TypeError, f"jax_symm.{api_name}: x has extended dtype {dtype}; "
                                 "gather its underlying data (e.g. jax.random.key_data).")
    if _bits(np.dtype(dtype)) < 8:
        return Reason(TypeError,
                      f"jax_symm.{api_name}: x has dtype {dtype}, whose elements are "
                      "narrower than a byte; gather a packed uint8 view instead.")
    return None


def summable(x: Any) -> bool:
    """Whether some transport has a sum for `x`'s dtype (`_kinds.SUMMABLE`)."""
    dtype = _dtype_of(x)
    return (not jax.dtypes.issubdtype(dtype, jax.dtypes.extended)
            and np.dtype(dtype) in _kinds.SUMMABLE)


def not_summable(x: Any, api_name: str) -> Reason | None:
    if summable(x):
        return None
    return Reason(TypeError,
                  f"jax_symm.{api_name}: x has dtype {_dtype_of(x)}, which has no sum here; "
                  f"supported: {', '.join(sorted(str(d) for d in _kinds.SUMMABLE))}.")


def unsupported_dtype(kind: Kind, x: Any, api_name: str) -> Reason | None:
    """What the kind needs of the dtype: a sum, or whole bytes to move."""
    return not_summable(x, api_name) if kind.sums else not_gatherable(x, api_name)


# ---- trace time: about where the call is traced (the scope's extra care) ----

def outside_mesh(axes: tuple) -> bool:
    """Where the scope leaves a call to lax without a word, since lax's own
    behaviour is what the user gets there: an axis not bound here (lax raises
    its error, with its hint); a vmap axis name (not a mesh axis); a
    shard_map manual over only some mesh axes (XLA's partitioner owns the
    rest; a direct jax_symm call warns there at lowering instead)."""
    return (not _compat.axes_bound(axes) or _compat.partially_manual()
            or not _compat.mesh_axes(axes))


def trace_time_reason(kind: Kind, x: Any, axes: tuple, groups: Any) -> Reason | None:
    """The first reason jax_symm cannot serve this call, as the scope sees it
    at trace time (the ops raise on the same reasons, `_frontend`), or None."""
    name = kind.name
    return (axis_index_groups(groups, name) or positional_axes(axes, name, kind.lax_function)
            or unsupported_dtype(kind, x, name))


# ---- lowering time ----

DISABLED = "disabled"  # jax_symm_disable: silently XLA's collective


def no_mesh(kind: Kind) -> Exception:
    return NotImplementedError(
        f"jax_symm.{kind.name} must be used inside jax.shard_map or jax.pmap (this "
        "program has no manual mesh axes to communicate over).")


def partially_manual(kind: Kind) -> str:
    """XLA's partitioner owns the other axes and would replicate the call."""
    return (f"jax_symm.{kind.name} inside a shard_map that is manual over only some "
            "mesh axes uses XLA's own collective")


def one_rank_unserved(kind: Kind) -> Exception:
    """A group of one device with jax_symm_singleton_calls on, on a transport
    whose windows need two ranks (only NCCL has a 1-rank communicator, which
    is what the setting exists to measure)."""
    return NotImplementedError(
        f"jax_symm.{kind.name} over a group of one device with jax_symm_singleton_calls on: "
        "that setting keeps the custom call for one-device groups, which only the GPU "
        "transport has (a 1-rank NCCL communicator); the CPU transport's shared-memory "
        "windows need 2 or more ranks. On CPU turn it off "
        "(jax.config.update('jax_symm_singleton_calls', False), or unset "
        "JAX_SYMM_SINGLETON_CALLS), or use a mesh axis of 2 or more devices.")
