"""The one table of collective kinds, and the dtypes each transport sums.

Every rule that depends on what a kind moves derives from `KINDS`: the bytes
a call names as its chunk (`_lowering`), the host window's slot (`_host`), the
NCCL arena (`_nccl`), the copies of the cost model (`_dispatch`), the
leading-axis relayout (`_lowering`: which parameters name the input axis cut
into world chunks and the output axis they are stacked along) and whether a
dtype needs a sum. C++ has
its own table (ffi/ffi_kinds.h `JAX_SYMM_COLLECTIVE_KINDS`: the handlers
check buffers with its layouts and ask NCCL for a type only where it sums);
the two are compared at import (names, order, layouts, sums), so they cannot
drift apart.

The dtypes each transport sums come from C++ too (ffi/host_reduce.cc
`kHostSumTypes`, ffi/nccl_types.h `kNcclSumTypes`), the lists the kernels
themselves dispatch on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import jax.numpy as jnp

from ._native import ext

ONE, WORLD = "one", "world"  # chunks per rank: one, or one per rank of the group


@dataclasses.dataclass(frozen=True)
class Kind:
    """What one kind of collective moves, per rank, in chunks of `chunk_bytes`.

    name:       the transports' and C++'s name ("all_gather", ...)
    chunks_in:  ONE or WORLD chunks read
    chunks_out: ONE or WORLD chunks written
    sums:       whether it adds (so needs a sum for the dtype)
    lax_twin:   the name of lax's primitive that serves it on XLA's path (`<name>_p`)
    split:      with WORLD chunks in, the primitive's parameter naming the input
                axis cut into them (chunk j, rank j's, is the j-th slice of it)
    concat:     with WORLD chunks out, the parameter naming the output axis
                they lie along (rank i's chunk is the i-th slice of it)
    lax_function_name: lax's public function that jax_symm's op mirrors, where
                its name is not the primitive's (`lax_function`)
    """

    name: str
    chunks_in: str
    chunks_out: str
    sums: bool
    lax_twin: str
    split: str | None = None
    concat: str | None = None
    lax_function_name: str | None = None

    def __post_init__(self):
        # A side of world chunks needs the axis they lie along, and only it.
        if (self.chunks_in == WORLD) != (self.split is not None) or (
                self.chunks_out == WORLD) != (self.concat is not None):
            raise ValueError(f"jax_symm: kind {self.name!r}: a side of world chunks, and "
                             "only such a side, names its axis (split / concat)")

    @property
    def lax_function(self) -> str:
        """`jax.lax.<lax_function>`: the function users call ("psum_scatter")."""
        return self.lax_function_name or self.lax_twin

    def in_chunks(self, world: int) -> int:
        return world if self.chunks_in == WORLD else 1

    def out_chunks(self, world: int) -> int:
        return world if self.chunks_out == WORLD else 1

    def staged_chunks(self, world: int) -> int:
        """What a call stages in a symmetric buffer: the larger of its two sides."""
        return max(self.in_chunks(world), self.out_chunks(world))

    def copied_chunks(self, world: int) -> int:
        """What the window path copies: its input in, its output out."""
        return self.in_chunks(world) + self.out_chunks(world)

    def chunk_bytes(self, in_bytes: int, world: int) -> int:
        """The chunk of a call: its input's bytes over its input's chunks."""
        return in_bytes // self.in_chunks(world)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("all_gather", ONE, WORLD, sums=False, lax_twin="all_gather",
         concat="all_gather_dimension"),
    Kind("reduce_scatter", WORLD, ONE, sums=True, lax_twin="reduce_scatter",
         split="scatter_dimension", lax_function_name="psum_scatter"),
    Kind("all_reduce", ONE, ONE, sums=True, lax_twin="psum"),
    Kind("all_to_all", WORLD, WORLD, sums=False, lax_twin="all_to_all",
         split="split_axis", concat="concat_axis"),
)}


def kind(name: str) -> Kind:
    return KINDS[name]


def check_against_native() -> None:
    """ImportError if the C++ module's kinds, layouts or sums differ from
    `KINDS` (a stale build, or one table edited without the other)."""
    native = tuple(ext.collective_kinds())
    sums = dict(ext.collective_sums())
    theirs = {n: (*v, sums.get(n)) for n, v in ext.collective_layouts().items()}
    ours = {k.name: (k.chunks_in, k.chunks_out, k.sums) for k in KINDS.values()}
    if native != tuple(KINDS) or theirs != ours:
        raise ImportError(
            f"jax_symm: the compiled extension's collectives {native} with (layout, sums) "
            f"{theirs} do not match jax_symm/_kinds.py's {ours}. Rebuild it "
            "(pip install .), or edit both tables together.")


def check_one_per_kind(where: str, names) -> None:
    """ImportError unless `names` (a table keyed by kind name) are exactly the
    kinds of `KINDS`: a kind missing from it fails at import, not at a call."""
    names = list(names)
    missing = [k for k in KINDS if k not in names]
    extra = [n for n in names if n not in KINDS]
    if missing or extra:
        raise ImportError(f"jax_symm: {where} must have one entry per kind of "
                          f"_kinds.KINDS; missing {missing}, not kinds {extra}")


def check_op_registry() -> None:
    """ImportError unless every kind has what each layer keeps of it apart
    from this table: its primitive (`_primitives`, "jax_symm_<kind>"), its
    public op (`jax_symm.<kind>`), lax's twin primitive (`_compat`, lax's
    fallback at lowering) and function (`jax.lax.<lax_function>`), the
    scope's reroute of that twin (`scope._REROUTES`) and the cost model's
    figure (`_dispatch._SAVED_AT_ZERO_US`). jax_symm/__init__.py calls it
    once every op is imported; the bench checks its own measures
    (`bench/ops.py`)."""
    import jax
    import jax_symm
    from . import _compat, _dispatch, _primitives, scope

    def lax_has(kind: Kind) -> bool:
        try:
            _compat.lax_primitive(kind.lax_twin)
        except KeyError:
            return False
        return callable(getattr(jax.lax, kind.lax_function, None))

    prims = [v.name for n, v in vars(_primitives).items() if n.endswith("_p")]
    check_one_per_kind("_primitives.py (jax_symm_<kind>)",
                       [p.removeprefix("jax_symm_") for p in prims])
    check_one_per_kind("jax_symm's public ops",
                       [n for n in KINDS if callable(getattr(jax_symm, n, None))])
    check_one_per_kind("_compat's lax primitives and jax.lax (each kind's lax twin)",
                       [k.name for k in KINDS.values() if lax_has(k)])
    check_one_per_kind("scope._REROUTES (each kind's lax twin)",
                       [k.name for k in KINDS.values() if k.lax_twin in scope._REROUTES])
    check_one_per_kind("_dispatch._SAVED_AT_ZERO_US", _dispatch._SAVED_AT_ZERO_US)


def _dtypes(names) -> frozenset:
    return frozenset(np.dtype(jnp.dtype(n)) for n in names)


# Per transport, the dtypes its kernels sum.
SUM_DTYPES: dict[str, frozenset] = {
    "host": _dtypes(ext.host_sum_dtypes()),
    "nccl": _dtypes(ext.nccl_sum_dtypes()),
}
# What some transport sums: other dtypes raise at trace time; one that only
# some transports sum goes to XLA's collective on the others.
SUMMABLE: frozenset = frozenset().union(*SUM_DTYPES.values())

check_against_native()
