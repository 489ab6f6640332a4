"""What jax_symm sees: versions, NCCL, communicators, arenas, host windows.

    python -m jax_symm.info

A package, not a module, so that `python -m` runs `info/__main__.py`: the
package's `__init__` imports this (for `jax_symm.info()`) before runpy starts,
and runpy warns when the module it is about to run is imported already.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax

from . import handlers


def info() -> dict[str, Any]:
    """A snapshot of jax_symm's state in this process (plain data)."""
    from .. import _compat, _dispatch, _kinds, _nccl, _nccl_path, __version__, settings
    from .._native import ext

    out: dict[str, Any] = {
        "jax_symm": __version__,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process": f"{jax.process_index()} of {jax.process_count()}",
        "host_windows": [{"name": n, "bytes": b} for n, b in ext.host_windows()],
        # GPU: per-rank message bytes up to which the window path is used
        # (jax_symm_crossover_bytes, or the cost model of _dispatch.py).
        "crossover_bytes": {
            "setting": int(settings.crossover_bytes.value),
            "by_op_for_8_ranks": {k: _dispatch.crossover_bytes(k, 8)
                                  for k in _kinds.KINDS},
        },
        # Where jax_symm changes JAX's own objects, and whether it has here.
        "jax_patches": _compat.patches(),
        # Whether XLA took jax_symm's FFI handlers, read from XLA's registry
        # after registering them (a refused handler leaves import working).
        "ffi_handlers": {p: handlers.status(p) for p in _platforms()},
    }
    if jax.default_backend() == "gpu":
        try:
            nccl = _nccl.load()
            choice = _nccl_path.choice()
            out["nccl"] = {"version": _nccl.version_string(nccl["version"]),
                           "path": nccl["path"],
                           # Whose communicators and memory NCCL runs on, and why
                           # (JAX_SYMM_NCCL_PATH; _nccl_path.py).
                           "nccl_path": choice.path,
                           "nccl_path_why": choice.why,
                           "symmetric_windows": nccl["symmetric_windows"],
                           # NCCL < 2.30.7's symmetric kernels may read their input
                           # early after a kernel (PDL); from that version on the
                           # all-gather skips its copy-in (README, "NCCL versions").
                           "pdl_fixed_version": _nccl.version_string(
                               nccl["pdl_fixed_version"]),
                           "gather_sends_in_place": nccl["gather_sends_in_place"],
                           # What serves jax_symm.all_to_all: "ncclAlltoAll" or
                           # "ncclSend/ncclRecv" (ffi/nccl_enqueue.h).
                           "all_to_all": nccl.get("all_to_all", ""),
                           # A collective that makes no progress for this long is
                           # aborted (0: never), where communicators' stall_watch.
                           "stall_timeout_s": settings.gpu_timeout_s(),
                           "force_window": bool(settings.force_window.value),
                           "min_arena_bytes": settings.arena_bytes(),
                           "aborted": _nccl.aborted()}
            groups = _nccl.groups_info()
            out["nccl"]["communicators"] = groups
            out["nccl"]["arena_bytes_total"] = sum(
                sum(g["arena_bytes"]) * len(g["local_devices"]) for g in groups)
        except RuntimeError as e:
            out["nccl"] = {"error": str(e)}
    else:
        out["nccl"] = None
    return out


def _platforms() -> list[str]:
    """The platforms with a jax_symm transport that this process has."""
    out = ["cpu"]
    try:
        if jax.devices("gpu"):
            out.append("gpu")
    except RuntimeError:  # no GPU backend here
        pass
    return out


def main() -> None:
    report = info()
    print(json.dumps(report, indent=2))
    trouble = handlers.problem(report["ffi_handlers"])
    if trouble:  # a state that is not normal is not reported as one
        print(trouble, file=sys.stderr)
        sys.exit(1)
