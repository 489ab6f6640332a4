"""Data that processes of one job must agree on, through jax.distributed.

Everything travels through the distributed key-value store under a private
prefix; in a single process nothing needs to travel.
"""

from __future__ import annotations

import socket

from . import _compat

PREFIX = "jax_symm/"


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


def fetch(key: str) -> str:
    """Waits for the value another process published under `key`."""
    import jax

    client = _client()  # outside the try: "not initialised" is no timeout
    try:
        return client.blocking_key_value_get(PREFIX + key, timeout_ms())
    except Exception as e:  # the client raises XlaRuntimeError on timeout
        raise TimeoutError(
            f"jax_symm: process {jax.process_index()} waited {timeout_ms() / 1000:g} s "
            f"for '{PREFIX + key}': {e}. Is every process running the same program? "
            "(JAX_SYMM_BOOTSTRAP_TIMEOUT_S sets the wait.)") from e


def agree_on(key: str, make_value) -> str:
    """Process 0 makes the value; every process returns the same string."""
    import jax

    if _compat.process_count() == 1 or jax.process_index() == 0:
        return publish(key, make_value)
    return fetch(key)


def host_names() -> dict[int, str]:
    """Hostname of every process (process index -> name)."""
    import jax

    me = socket.gethostname()
    if _compat.process_count() == 1:
        return {0: me}
    client = _client()
    client.key_value_set(f"{PREFIX}host/{jax.process_index()}", me)
    return {
        p: client.blocking_key_value_get(f"{PREFIX}host/{p}", timeout_ms())
        for p in range(_compat.process_count())
    }



def per_process(key: str, mine: str) -> dict[int, str]:
    """Every process's value for `key` (process index -> value); each process
    passes its own."""
    import jax

    if _compat.process_count() == 1:
        return {0: mine}
    client = _client()
    client.key_value_set(f"{PREFIX}{key}/{jax.process_index()}", mine)
    out = {}
    for p in range(_compat.process_count()):
        try:
            out[p] = client.blocking_key_value_get(f"{PREFIX}{key}/{p}", timeout_ms())
        except Exception as e:
            raise TimeoutError(
                f"jax_symm: process {jax.process_index()} waited {timeout_ms() / 1000:g} s "
                f"for process {p}'s '{PREFIX}{key}': {e}. Is every process running the same "
                "program? (JAX_SYMM_BOOTSTRAP_TIMEOUT_S sets the wait.)") from e
    return out
