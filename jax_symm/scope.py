"""`jax_symm.use_symmetric_memory()`: adopt jax_symm without rewriting a model.

Inside the scope, every `jax.lax.all_gather`, `jax.lax.psum_scatter`,
`jax.lax.psum` and `jax.lax.all_to_all` that is traced (library code such as a Flax model included)
binds the jax_symm primitive instead of lax's. Outside it nothing changes.
Where jax_symm cannot serve a call (axis_index_groups, positional axes, a
dtype without a jax_symm sum, an unbound axis name, a shard_map manual over
only some mesh axes) the lax op runs unchanged and silently, as it does when the
scope is disabled or jax_symm is disabled globally (JAX_SYMM_DISABLE=1 or
`jax.config.update("jax_symm_disable", True)`). Groups of one device move no
data either way.

This follows SGLang's `use_symmetric_memory(group)` context manager, which
allocates a model's collective buffers from NCCL symmetric memory.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator


from . import _compat, _eligibility, _kinds, settings
from ._primitives import all_gather_p, all_reduce_p, all_to_all_p, reduce_scatter_p

_PASS = object()  # a reroute's answer for "let lax handle this call"


def _served(kind_name: str, x, axes, axis_index_groups=None) -> tuple | None:
    """The call's axes as a tuple if jax_symm serves it, or None where the
    scope leaves it to lax: any trace-time reason of `_eligibility`
    (the ops raise on the same ones), or a call outside a fully manual mesh."""
    axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    kind = _kinds.kind(kind_name)
    if _eligibility.trace_time_reason(kind, x, axes, axis_index_groups) is not None:
        return None
    return None if _eligibility.outside_mesh(axes) else axes


def _all_gather(x, *, all_gather_dimension, axis_name, axis_index_groups, axis_size, tiled):
    axes = _served("all_gather", x, axis_name, axis_index_groups)
    if axes is None:
        return _PASS
    return all_gather_p.bind(x, all_gather_dimension=all_gather_dimension, axes=axes,
                             axis_size=axis_size, tiled=tiled, invariant=False)


def _all_gather_invariant(x, *, all_gather_dimension, axis_name, axis_size, tiled):
    axes = _served("all_gather", x, axis_name)
    if axes is None:
        return _PASS
    return all_gather_p.bind(x, all_gather_dimension=all_gather_dimension, axes=axes,
                             axis_size=axis_size, tiled=tiled, invariant=True)


def _reduce_scatter(x, *, scatter_dimension, axis_name, axis_index_groups, axis_size, tiled):
    axes = _served("reduce_scatter", x, axis_name, axis_index_groups)
    if axes is None:
        return _PASS
    return reduce_scatter_p.bind(x, scatter_dimension=scatter_dimension, axes=axes,
                                 axis_size=axis_size, tiled=tiled)


def _psum(x, *, axes, axis_index_groups=None, invariant):
    named = _served("all_reduce", x, axes, axis_index_groups)
    if named is None:
        return _PASS
    return all_reduce_p.bind(x, axes=named, axis_size=_compat.axis_size(named),
                             invariant=invariant)


def _all_to_all(x, *, split_axis, concat_axis, axis_name, axis_index_groups, tiled):
    # lax binds after its own untiled expand_dims, as jax_symm.all_to_all does.
    axes = _served("all_to_all", x, axis_name, axis_index_groups)
    if axes is None:
        return _PASS
    return all_to_all_p.bind(x, split_axis=split_axis, concat_axis=concat_axis, axes=axes,
                             axis_size=_compat.axis_size(axes), tiled=tiled)


_REROUTES = {
    "all_gather": _all_gather,
    "all_gather_invariant": _all_gather_invariant,
    "reduce_scatter": _reduce_scatter,
    "psum_invariant": functools.partial(_psum, invariant=True),
    "psum": functools.partial(_psum, invariant=False),
    "all_to_all": _all_to_all,
}



def _active() -> bool:
    return bool(settings.use_symmetric_memory.value and not settings.disable.value)


def _install() -> None:
    """Wraps the lax primitives' bind once (a patch of JAX's, listed by
    jax_symm.info(): `_compat.PATCHES`); the wrappers consult the scope."""
    _compat.reroute_lax_binds(_REROUTES, _active, _PASS)


@contextlib.contextmanager
def use_symmetric_memory(disabled: bool = False) -> Iterator[None]:
    """Routes lax all_gather / psum_scatter / psum / all_to_all traced inside to jax_symm.

    ``disabled=True`` makes the scope a pass-through (handy for A/B runs).
    Thread-safe and nestable: the setting is per thread and restored on exit,
    also when the body raises.
    """
    _install()
    with settings.use_symmetric_memory(not disabled):
        yield
