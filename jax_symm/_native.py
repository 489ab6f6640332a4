"""Loads the compiled core and registers its FFI handlers with XLA."""

from __future__ import annotations

import functools

import jax

from . import _jax_symm as ext  # noqa: F401  (re-exported for the other modules)

HOST_TARGETS = {
    "all_gather": "jax_symm_host_all_gather",
    "reduce_scatter": "jax_symm_host_reduce_scatter",
    "all_reduce": "jax_symm_host_all_reduce",
}


@functools.cache
def register_host_targets() -> None:
    for op, capsule in ext.host_handlers().items():
        jax.ffi.register_ffi_target(HOST_TARGETS[op], capsule, platform="cpu")


@functools.cache
def publish_local_devices(platform: str) -> None:
    """Tells the handlers which global device id each local ordinal is."""
    devices = jax.local_devices(backend=platform)
    size = max(d.local_hardware_id for d in devices) + 1
    table = [-1] * size
    for d in devices:
        table[d.local_hardware_id] = d.id
    ext.set_local_devices(table)
