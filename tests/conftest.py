"""Every test process sees 8 virtual CPU devices, unless it runs on GPUs."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402  (after XLA_FLAGS)

# 64-bit types are part of the parity matrix.
jax.config.update("jax_enable_x64", True)


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from _util import cpu_mesh  # noqa: E402


@pytest.fixture
def rng():
    """Fresh random data in every test (never a fixed seed)."""
    return np.random.default_rng()


@pytest.fixture
def mesh():
    """The 8 virtual CPU devices on one axis 'x' (test modules may override)."""
    return cpu_mesh((8,), ("x",))
