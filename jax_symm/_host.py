"""Set-up of the host (XLA:CPU) transport: session, timeouts, clean-up.

The shared-memory windows themselves are created by the C++ handlers on first
use; all Python has to do is make every process agree on a session name, say
which groups can use shared memory (all members on one host), and unlink the
segments at exit.
"""

from __future__ import annotations

import atexit
import functools
import os

from . import _bootstrap, _compat
from ._native import ext, publish_local_devices, register_host_targets


def timeout_s() -> float:
    return float(os.environ.get("JAX_SYMM_TIMEOUT_S", "300"))


@functools.cache
def setup() -> None:
    """Idempotent; the first lowering of a jax_symm op on CPU calls it."""
    register_host_targets()
    publish_local_devices("cpu")
    ext.host_reap_stale()  # segments of earlier jobs that were killed
    session = _bootstrap.agree_on("host_session", _bootstrap.new_session_id)
    ext.set_host_config(session, timeout_s(), 0.05, _compat.process_count() == 1)
    atexit.register(ext.host_unlink_all)


@functools.cache
def _process_hosts() -> dict[int, str]:
    return _bootstrap.host_names()


def group_is_host_local(process_indices) -> bool:
    """True when every process in the group runs on this host."""
    hosts = _process_hosts()
    return len({hosts[p] for p in process_indices}) <= 1


_KIND_CODES = {"all_gather": 0, "reduce_scatter": 1, "all_reduce": 2}


def prepare(kind: str, channel: int, groups, chunk_bytes: int) -> None:
    """Maps the windows of a call site's local groups ahead of its first call,
    recording this process as the server of its ranks there."""
    import jax

    me = jax.process_index()
    owner = {d.id: d.process_index for d in jax.devices()}
    world = groups.shape[1]
    slot = chunk_bytes * (world if kind == "reduce_scatter" else 1)
    for row in groups:
        mine = [r for r, gid in enumerate(row) if owner[int(gid)] == me]
        if mine:
            ext.host_prepare(_KIND_CODES[kind], int(channel), [int(g) for g in row], int(slot),
                             mine)
