"""The steps every public op takes before it binds its primitive.

lax's canonical axes, the trace-time reasons of `_eligibility` (raised, with
what to do instead), lax's rule of dropping one-sized axes, the pvary lax
inserts before a collective, and an unreduced input handed to lax: once here,
for the three ops.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from . import _compat, _eligibility, _kinds


@dataclasses.dataclass(frozen=True)
class Op:
    """A public op as its front end sees it.

    kind:      its collective (`_kinds.KINDS`), which names it: `name`, jax_symm's
               name, in messages about the data ("all_reduce"), and `lax_name`,
               lax's twin function, in messages about the axes ("psum")
    skips_one_sized_axes: drops axes of size one first, as its lax twin does
    accepts_axis_list: takes a list of axis names too, as lax.psum does
    """

    kind: _kinds.Kind
    skips_one_sized_axes: bool = False
    accepts_axis_list: bool = False

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def lax_name(self) -> str:
        return self.kind.lax_function


def axes(op: Op, axis_name: Any, axis_index_groups: Any) -> tuple:
    """The mesh axes of a call, or the exception lax's user should see."""
    reason = _eligibility.axis_index_groups(axis_index_groups, op.lax_name)
    if reason is not None:
        raise reason.exception()
    found = (tuple(axis_name) if op.accepts_axis_list and isinstance(axis_name, list)
             else _eligibility.axis_tuple(axis_name))
    reason = _eligibility.positional_axes(found, op.name, op.lax_name)
    if reason is not None:
        raise reason.exception()
    _eligibility.check_bound(found, op.lax_name)
    return _compat.skip_one_sized_axes(found) if op.skips_one_sized_axes else found


def one_leaf(op: Op, leaf: Any, axes: tuple, bind: Callable[[Any], Any],
             unreduced: Callable[[Any], Any] | None = None) -> Any:
    """`bind(leaf)` after the per-leaf checks. A sum's input that is
    unreduced over the axes goes to `unreduced`, its lax twin (jax_symm has
    no unreduced sums)."""
    reason = _eligibility.unsupported_dtype(op.kind, leaf, op.name)
    if reason is not None:
        raise reason.exception()
    if unreduced is not None and _compat.input_kind(
            _compat.typeof(leaf), axes, f"jax_symm.{op.name}") == "unreduced":
        return unreduced(leaf)
    return bind(_compat.pvary_for_collective(axes, leaf))


def each_leaf(op: Op, x: Any, axes: tuple, bind: Callable[[Any], Any],
              unreduced: Callable[[Any], Any] | None = None) -> Any:
    """`one_leaf` for every leaf of the pytree `x`."""
    return jax.tree_util.tree_map(lambda leaf: one_leaf(op, leaf, axes, bind, unreduced), x)
