"""Data that processes of one job must agree on, through jax.distributed.

Everything travels through the distributed key-value store under a private
prefix; in a single process nothing needs to travel.

A process waiting for a value asks, every ~0.1 s, whether the process that
publishes it has left the job: a process that fails before it ever joined the
job's liveness record (an uncaught exception or Ctrl-C before its first
jax_symm call) announces why here, on its way out (`announce_departure`, from
_liveness's exit hooks); one that joined is known to the record, kills
included. Either way its peers stop waiting at once, naming it and why,
instead of waiting out JAX_SYMM_BOOTSTRAP_TIMEOUT_S.
"""

from __future__ import annotations

import os
import socket
import threading
import time

from . import _compat
from ._native import ext

PREFIX = "jax_symm/"
_LEFT = "left/"  # + process index: why that process left the job
# How long one blocking read lasts before the waiter checks on the publisher:
# the bound on how late a departure is noticed.
_POLL_S = 0.1
# A peer's announcement only ever goes into an error message; the store is
# reachable by whoever reaches the coordinator, so never quote more than this.
_MAX_WHY_CHARS = 1000

_announce_lock = threading.Lock()
_announced = False


def timeout_ms() -> int:
    from . import settings

    return int(settings.bootstrap_timeout_s() * 1000)


def _client():
    client = _compat.distributed_client()
    if client is None:
        raise RuntimeError(
            "jax_symm: this is a multi-process program but jax.distributed is "
            "not initialised; call jax.distributed.initialize() first.")
    return client


def publish(key: str, make_value) -> str:
    """Makes a value and shares it under `key`; returns it."""
    value = make_value()
    if _compat.process_count() > 1:
        _client().key_value_set(PREFIX + key, value)
    return value


def fetch(key: str, publisher: int = 0, what: str | None = None) -> str:
    """Waits for the value process `publisher` publishes under `key`; fails
    at once if that process leaves the job first. `what` names the value in
    errors."""
    return _wait_for(_client(), key, publisher,
                     f"{what or 'the value'} '{PREFIX + key}' from process {publisher}")


def departure(process: int) -> str:
    """Why `process` left the job ("process 1 (pid 42) raised an uncaught
    ValueError: ... and is exiting"), or "" while it may still take part."""
    why = ext.host_process_gone(process)  # the liveness record, once joined
    if why:
        return why
    client = _compat.distributed_client()
    if client is None:
        return ""
    try:
        return client.key_value_try_get(f"{PREFIX}{_LEFT}{process}")[:_MAX_WHY_CHARS]
    except Exception:  # noqa: BLE001  (NOT_FOUND: it has announced nothing)
        return ""


def announce_departure(why: str) -> None:
    """Tells the job that this process is leaving, and why (the first reason
    stays), for peers still waiting for a value from it. On the way out, so
    it never raises; a no-op without jax.distributed."""
    global _announced
    try:
        where = _compat.distributed_process()
        client = _compat.distributed_client()
        if where is None or where[1] < 2 or client is None:
            return
        with _announce_lock:
            if _announced:
                return
            _announced = True
        me = where[0]
        client.key_value_set(f"{PREFIX}{_LEFT}{me}", f"process {me} (pid {os.getpid()}) {why}")
    except Exception:  # noqa: BLE001  (never mask the way out's own error)
        pass


def _wait_for(client, key: str, publisher: int, what: str) -> str:
    import jax

    me = jax.process_index()
    timeout_s = timeout_ms() / 1000
    deadline = time.monotonic() + timeout_s
    while True:
        slice_s = min(_POLL_S, deadline - time.monotonic())
        try:
            return client.blocking_key_value_get(PREFIX + key, max(1, int(slice_s * 1000)))
        except Exception as e:  # the client raises XlaRuntimeError / JaxRuntimeError
            if "DEADLINE_EXCEEDED" not in str(e):
                raise RuntimeError(f"jax_symm: process {me} could not read {what} from "
                                   f"jax.distributed's key-value store: {e}") from e
            last = e
        why = departure(publisher)
        if why:
            raise RuntimeError(
                f"jax_symm: process {me} waited for {what}, but {why}. Restart the job.")
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"jax_symm: process {me} waited {timeout_s:g} s for {what}; process "
                f"{publisher} has not published it, nor said that it left the job. "
                "Is every process running the same program? "
                "(JAX_SYMM_BOOTSTRAP_TIMEOUT_S sets the wait.)") from last


def agree_on(key: str, make_value, what: str | None = None) -> str:
    """Process 0 makes the value; every process returns the same string."""
    import jax

    if _compat.process_count() == 1 or jax.process_index() == 0:
        return publish(key, make_value)
    return fetch(key, 0, what)


def per_process(key: str, mine: str, what: str | None = None) -> dict[int, str]:
    """Every process's value for `key` (process index -> value); each process
    passes its own. `what` names the values in errors ("host name")."""
    import jax

    if _compat.process_count() == 1:
        return {0: mine}
    client = _client()
    client.key_value_set(f"{PREFIX}{key}/{jax.process_index()}", mine)
    return {p: _wait_for(client, f"{key}/{p}", p,
                         f"process {p}'s {what or 'value'} '{PREFIX}{key}/{p}'")
            for p in range(_compat.process_count())}


def host_names() -> dict[int, str]:
    """Hostname of every process (process index -> name)."""
    return per_process("host", socket.gethostname(), "host name")
