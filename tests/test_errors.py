"""Bad input fails at trace time with lax-like errors naming the argument;
native (C++) failures surface as Python exceptions, never aborts."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from _util import cpu_mesh, shard


@pytest.fixture
def mesh():
    return cpu_mesh((8,), ("x",))


def trace(fn, x, mesh, spec=P("x")):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec)).trace(
        shard(x, mesh, spec))


def test_axis_index_groups_rejected(mesh):
    x = np.ones((16,), np.float32)
    with pytest.raises(NotImplementedError, match="axis_index_groups"):
        trace(lambda a: jax_symm.all_gather(a, "x", axis_index_groups=[[0, 1]]), x, mesh)
    with pytest.raises(NotImplementedError, match="axis_index_groups"):
        trace(lambda a: jax_symm.psum_scatter(a, "x", axis_index_groups=[[0, 1]]), x, mesh)


def test_scatter_dimension_not_divisible(mesh):
    with pytest.raises(ValueError, match="not divisible by the axis size 8"):
        trace(lambda a: jax_symm.psum_scatter(a, "x", tiled=True), np.ones((8 * 3,)), mesh)
    with pytest.raises(ValueError, match="must equal the axis size 8"):
        trace(lambda a: jax_symm.psum_scatter(a, "x"), np.ones((8 * 3,)), mesh)


def test_axis_out_of_range(mesh):
    with pytest.raises(ValueError, match="out of bounds"):
        trace(lambda a: jax_symm.all_gather(a, "x", axis=3, tiled=True), np.ones((16,)), mesh)
    with pytest.raises(ValueError, match="out of bounds"):
        trace(lambda a: jax_symm.psum_scatter(a, "x", scatter_dimension=2, tiled=True),
              np.ones((64,)), mesh)


def test_unknown_axis_name(mesh):
    with pytest.raises(NameError, match="unbound axis name: y"):
        trace(lambda a: jax_symm.all_gather(a, "y"), np.ones((16,)), mesh)


def test_outside_shard_map():
    with pytest.raises(NameError, match="unbound axis name"):
        jax.jit(lambda a: jax_symm.all_gather(a, "x")).trace(jnp.ones(4))
    with pytest.raises(NameError, match="unbound axis name"):
        jax_symm.psum_scatter(jnp.ones(8), "x")


def test_unsupported_dtypes(mesh):
    with pytest.raises(TypeError, match="bool.*no sum"):
        trace(lambda a: jax_symm.psum_scatter(a, "x", tiled=True), np.ones((64,), bool), mesh)
    with pytest.raises(TypeError, match="narrower than a byte"):
        trace(lambda a: jax_symm.all_gather(a, "x"), np.ones((16,), jnp.int4), mesh)


def test_bad_to_argument(mesh):
    with pytest.raises(ValueError, match="`to` must be one of"):
        trace(lambda a: jax_symm.all_gather(a, "x", to="sideways"), np.ones((16,)), mesh)


def test_native_error_becomes_python_exception(mesh):
    """A handler that fails returns its message through XLA as an exception."""
    from jax_symm._native import ext

    x = shard(np.arange(64, dtype=np.float32), mesh, P("x"))
    f = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "x", tiled=True), mesh=mesh,
                              in_specs=P("x"), out_specs=P("x")))
    f(x).block_until_ready()  # sets up the device table
    try:
        ext.set_local_devices("cpu", [], [])  # handlers can no longer find their device
        with pytest.raises(Exception, match="jax_symm: device ordinal .* is unknown"):
            f(x).block_until_ready()
    finally:
        ids = [d.id for d in jax.local_devices(backend="cpu")]
        ext.set_local_devices("cpu", ids, ids)
        # The failed call left JAX's order token errored: without this every
        # later jax_symm program in this process would report the same error.
        jax_symm._compat.clear_order_tokens()
    np.testing.assert_array_equal(np.asarray(f(x))[:64], np.arange(64, dtype=np.float32))
