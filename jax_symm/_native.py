"""Loads the compiled core and registers its FFI handlers with XLA."""

from __future__ import annotations

import functools

import jax

from . import _jax_symm as ext  # noqa: F401  (re-exported for the other modules)

@functools.cache
def publish_local_devices(platform: str) -> None:
    """Tells the handlers which global device id each XLA ordinal is.

    XLA:GPU reports the local CUDA ordinal (local_hardware_id); XLA:CPU
    reports the device id itself (2048 and up in a second process).
    """
    devices = jax.local_devices(backend=platform)
    ordinals = [d.id if platform == "cpu" else d.local_hardware_id for d in devices]
    ext.set_local_devices(platform, ordinals, [d.id for d in devices])
