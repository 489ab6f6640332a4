"""Diagnostics for measuring jax_symm itself (used by ``jax_symm.bench``).

    from jax_symm import diagnostics
    us = diagnostics.nccl_raw_time(jax.devices(), "all_gather", 1 << 20, "bfloat16")

These are tools for benchmarks and bug reports, not for programs: they do
set-up work (communicators, arenas) outside any jitted program, so in a
multi-process job every process must call them in the same order, like
lowering.
"""

from __future__ import annotations

from typing import Sequence

from ._kinds import KINDS

OPS = tuple(KINDS)


def nccl_available() -> tuple[bool, str]:
    """(True, "") when raw NCCL timing can run here, else (False, why not)."""
    import jax

    if jax.default_backend() != "gpu":
        return False, f"no GPU (backend {jax.default_backend()})"
    from . import _nccl

    try:
        if not _nccl.usable():
            needs = _nccl.version_string(_nccl.floor("symmetric_windows"))
            return False, f"the loaded NCCL has no symmetric windows (needs >= {needs})"
    except Exception as e:  # NCCL could not be loaded at all
        return False, f"NCCL unavailable: {e}"
    return True, ""


def nccl_raw_time(devices: Sequence, op: str, bytes_per_rank: int, dtype: str, *,
                  iters: int = 20, repeats: int = 20) -> list[float]:
    """Microseconds per raw NCCL call on jax_symm's symmetric window, per repeat.

    Runs `iters` back-to-back ``ncclAllGather`` / ``ncclReduceScatter`` /
    ``ncclAllReduce`` / ``ncclAlltoAll`` (`op`: "all_gather", "reduce_scatter",
    "all_reduce", "all_to_all") over
    `bytes_per_rank` bytes of `dtype` (a numpy dtype name) on the group of
    `devices` (in rank order), timed with CUDA events on this process's first
    rank, no JAX involved: the floor an NCCL-based path can reach. Creates the
    group's communicator and grows its arena as needed. Data are not checked.
    Raises RuntimeError with NCCL's or CUDA's message on failure.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    ok, why = nccl_available()
    if not ok:
        raise RuntimeError(f"jax_symm.diagnostics.nccl_raw_time: {why}")
    import numpy as np

    from . import _nccl
    from ._native import ext

    members = [int(d.id) for d in devices]
    groups = np.array([members])
    _nccl.ensure_groups(groups)
    # The timer runs every kind in place in the arena, but the all-to-all,
    # which NCCL never runs in place, with its two sides side by side.
    sides = 2 if op == "all_to_all" else 1
    _nccl.ensure_arenas(groups, sides * len(members) * int(bytes_per_rank))
    return list(ext.nccl_time_raw(members, op, int(bytes_per_rank), str(dtype),
                                  int(iters), int(repeats)))
