"""Helpers for the parity tests: random data, meshes, and lax comparisons."""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

FLOAT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]
INT_DTYPES = [jnp.int8, jnp.int16, jnp.int32, jnp.int64,
              jnp.uint8, jnp.uint16, jnp.uint32, jnp.uint64]
COMPLEX_DTYPES = [jnp.complex64]
SUM_DTYPES = FLOAT_DTYPES + INT_DTYPES + COMPLEX_DTYPES
GATHER_DTYPES = SUM_DTYPES + [jnp.bool_, jnp.float8_e4m3fn]


def cpu_mesh(shape, names) -> Mesh:
    devices = np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape)
    return Mesh(devices, names)


def random_array(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Fresh random data of `dtype`, never all zeros."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -100), min(info.max, 100)
        return rng.integers(lo, hi + 1, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def shard(x: np.ndarray, mesh: Mesh, spec: P):
    return jax.device_put(x, NamedSharding(mesh, spec))


def run_sharded(fn, x, mesh, in_spec, out_spec, **shard_map_kwargs):
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_spec, out_specs=out_spec,
                              **shard_map_kwargs))
    return np.asarray(f(shard(x, mesh, in_spec)))


def tolerance(dtype, world: int) -> dict:
    """Sums may associate differently from XLA's; everything else is exact."""
    dtype = np.dtype(dtype)
    if dtype == jnp.bfloat16:
        return dict(rtol=2e-2, atol=2e-2 * world)
    if dtype == np.float16:
        return dict(rtol=2e-3, atol=2e-3 * world)
    if dtype in (np.float32, np.complex64):
        return dict(rtol=1e-5, atol=1e-5 * world)
    if dtype in (np.float64, np.complex128):
        return dict(rtol=1e-12, atol=1e-12 * world)
    return dict(rtol=0, atol=0)


def assert_same(actual, expected, dtype, world=8):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    tol = tolerance(dtype, world)
    if tol["rtol"] == 0:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual.astype(np.complex128 if np.iscomplexobj(actual) else np.float64),
                                   expected.astype(np.complex128 if np.iscomplexobj(expected) else np.float64),
                                   **tol)
