"""How a child JAX process's environment is built, for every launcher.

The test launcher (`jax_symm.testing.run_multiprocess`) and the bench's
workers (`jax_symm.bench.cli`) both start fresh interpreters that must import
this jax_symm, on a chosen platform, with a chosen number of virtual CPU
devices. The spelling of each of those facts lives here, once; each launcher
adds its own extras on top (and says why).
"""

from __future__ import annotations

import os
import re
from typing import Mapping

# The directory this jax_symm was imported from: first on a child's path, so
# that a child imports the same copy as its parent, not whichever comes first
# on its own path (a source checkout in its working directory, another install).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

# jax_symm's platform names -> JAX_PLATFORMS, which names the CUDA plugin.
_JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}


def jax_platforms(platform: str) -> str:
    """JAX_PLATFORMS for `platform` ("cpu" or "gpu")."""
    try:
        return _JAX_PLATFORMS[platform]
    except KeyError:
        raise ValueError(f"platform must be one of {sorted(_JAX_PLATFORMS)}, "
                         f"not {platform!r}") from None


def pythonpath(inherited: str) -> str:
    """PYTHONPATH with this jax_symm's root first, then `inherited`'s entries."""
    return os.pathsep.join(
        [PACKAGE_ROOT] + [p for p in inherited.split(os.pathsep) if p])


def has_device_count(xla_flags: str) -> bool:
    """Whether `xla_flags` already sets the number of virtual CPU devices."""
    return DEVICE_COUNT_FLAG in xla_flags


def without_device_count(xla_flags: str) -> str:
    """`xla_flags` less any virtual-CPU-device count."""
    return re.sub(DEVICE_COUNT_FLAG + r"=\S*", "", xla_flags).strip()


def with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` plus a count of `devices` virtual CPU devices (appended: it
    does not remove a count already there, see `without_device_count`)."""
    return f"{xla_flags} {DEVICE_COUNT_FLAG}={devices}".strip()


def changes(base: Mapping[str, str], *, platform: str | None = None) -> dict[str, str]:
    """What every child changes from `base`, its parent's environment: this
    jax_symm first on PYTHONPATH and, if `platform` is given, JAX_PLATFORMS.
    (XLA_FLAGS is each launcher's: they differ on an inherited device count.)"""
    out = {"PYTHONPATH": pythonpath(base.get("PYTHONPATH", ""))}
    if platform is not None:
        out["JAX_PLATFORMS"] = jax_platforms(platform)
    return out
