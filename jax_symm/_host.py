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
