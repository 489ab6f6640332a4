"""jax_symm ops equal jax.lax ops on fresh random data, on 8 CPU devices.

Covers every dtype, tiled and untiled, every gather/scatter dimension of
1-D to 3-D operands, 1-D and 2-D meshes and gathering over one or several
mesh axes. All-gather is compared bit for bit; sums to the dtype's rounding.
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from _util import (shard, GATHER_DTYPES, SUM_DTYPES, assert_same, cpu_mesh, random_array,
                   run_sharded)

SEED = np.random.SeedSequence().entropy  # fresh data every run, printed on failure


@pytest.fixture
def rng(request):
    seed = (SEED + hash(request.node.name)) % 2**32
    print(f"data seed: {seed}")
    return np.random.default_rng(seed)


# (per-device shape, dimension) pairs: leading, middle and trailing dims.
SHAPE_CASES = [((5,), 0), ((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 1), ((2, 3, 4), 2),
               ((2, 3, 4), -1)]


def _gather_pair(dtype, rng, mesh, axes, shard_spec, local_shape, axis, tiled):
    world = int(np.prod([mesh.shape[a] for a in axes]))
    n_dev = mesh.devices.size
    glob = (local_shape[0] * n_dev,) + tuple(local_shape[1:])
    x = random_array(rng, glob, dtype)
    ours = run_sharded(lambda a: jax_symm.all_gather(a, axes, axis=axis, tiled=tiled),
                       x, mesh, shard_spec, shard_spec)
    ref = run_sharded(lambda a: jax.lax.all_gather(a, axes, axis=axis, tiled=tiled),
                      x, mesh, shard_spec, shard_spec)
    assert_same(ours, ref, dtype, world)


@pytest.mark.parametrize("dtype", GATHER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_all_gather_dtypes_shapes(dtype, rng):
    mesh = cpu_mesh((8,), ("x",))
    for local_shape, axis in SHAPE_CASES:
        for tiled in (False, True):
            _gather_pair(dtype, rng, mesh, ("x",), P(("x",)), local_shape, axis, tiled)


def _scatter_pair(dtype, rng, mesh, axes, shard_spec, local_shape, dim, tiled):
    world = int(np.prod([mesh.shape[a] for a in axes]))
    local = list(local_shape)
    local[dim] = world * (local[dim] if tiled else 1)
    n_dev = mesh.devices.size
    glob = (local[0] * n_dev,) + tuple(local[1:])
    x = random_array(rng, glob, dtype)
    fn = lambda op: (lambda a: op(a, axes, scatter_dimension=dim, tiled=tiled))
    ours = run_sharded(fn(jax_symm.reduce_scatter), x, mesh, shard_spec, shard_spec)
    ref = run_sharded(fn(jax.lax.psum_scatter), x, mesh, shard_spec, shard_spec)
    assert_same(ours, ref, dtype, world)


@pytest.mark.parametrize("count", [65537, 300007])
@pytest.mark.parametrize("dtype", [jnp.int8, jnp.float32, jnp.complex64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axes", [("a", "b"), ("b",)], ids=["world8", "groups_of_4"])
def test_large_gather_split_into_tasks(axes, dtype, count, rng):
    """In one process the ranks share a call's copies out in ranges of
    256 KiB of one output (ffi/host_exchange.cc, SharedWork), ranges that
    start and end inside a rank's chunk, at odd byte offsets for int8."""
    mesh = cpu_mesh((2, 4), ("a", "b"))
    spec = P(("a", "b"))
    x = random_array(rng, (8 * count,), dtype)
    fn = lambda op: (lambda a: op(a, axes, tiled=True))
    f = jax.jit(jax.shard_map(fn(jax_symm.all_gather), mesh=mesh, in_specs=spec,
                              out_specs=spec))
    assert "custom_call @jax_symm_host_all_gather" in f.lower(shard(x, mesh, spec)).as_text()
    ours = run_sharded(fn(jax_symm.all_gather), x, mesh, spec, spec)
    ref = run_sharded(fn(jax.lax.all_gather), x, mesh, spec, spec)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", SUM_DTYPES, ids=lambda d: np.dtype(d).name)
def test_reduce_scatter_dtypes_shapes(dtype, rng):
    mesh = cpu_mesh((8,), ("x",))
    for local_shape, dim in [((3,), 0), ((2, 3), 0), ((3, 2), 1), ((2, 3, 2), 1),
                             ((2, 2, 3), 2)]:
        for tiled in (False, True):
            if not tiled and len(local_shape) == 1 and dim == 0:
                continue  # result would be a scalar per device; covered below
            _scatter_pair(dtype, rng, mesh, ("x",), P(("x",)), local_shape, dim, tiled)


def test_reduce_scatter_to_scalar(rng):
    mesh = cpu_mesh((8,), ("x",))
    x = random_array(rng, (64,), np.float32)
    fn = lambda op: (lambda a: op(a, "x")[None])
    assert_same(run_sharded(fn(jax_symm.psum_scatter), x, mesh, P("x"), P("x")),
                run_sharded(fn(jax.lax.psum_scatter), x, mesh, P("x"), P("x")),
                np.float32)


MESH_2D_AXES = [("a",), ("b",), ("a", "b"), ("b", "a")]


@pytest.mark.parametrize("axes", MESH_2D_AXES, ids=lambda a: "+".join(a))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32])
def test_2d_mesh(axes, dtype, rng):
    mesh = cpu_mesh((2, 4), ("a", "b"))
    spec = P(("a", "b"))
    for tiled in (False, True):
        _gather_pair(dtype, rng, mesh, axes, spec, (3, 2), 1, tiled)
        _scatter_pair(dtype, rng, mesh, axes, spec, (2, 3), 1, tiled)
    # A 2-D operand sharded over both mesh axes, gathered along each.
    x = random_array(rng, (6, 8), dtype)
    spec2 = P("a", "b")
    for axis in (0, 1):
        ours = run_sharded(lambda v: jax_symm.all_gather(v, axes, axis=axis, tiled=True),
                           x, mesh, spec2, spec2)
        ref = run_sharded(lambda v: jax.lax.all_gather(v, axes, axis=axis, tiled=True),
                          x, mesh, spec2, spec2)
        assert_same(ours, ref, dtype)


def test_axis_of_size_one(rng):
    mesh = cpu_mesh((1, 8), ("one", "x"))
    spec = P(("one", "x"))
    x = random_array(rng, (16, 3), np.float32)
    for tiled in (False, True):
        ours = run_sharded(lambda a: jax_symm.all_gather(a, "one", tiled=tiled), x, mesh,
                           spec, spec)
        ref = run_sharded(lambda a: jax.lax.all_gather(a, "one", tiled=tiled), x, mesh,
                          spec, spec)
        assert_same(ours, ref, np.float32)
    ours = run_sharded(lambda a: jax_symm.psum_scatter(a, "one", tiled=True), x, mesh,
                       spec, spec)
    ref = run_sharded(lambda a: jax.lax.psum_scatter(a, "one", tiled=True), x, mesh,
                      spec, spec)
    assert_same(ours, ref, np.float32)
    # No custom call is emitted for a group of one.
    f = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "one"), mesh=mesh,
                              in_specs=spec, out_specs=spec))
    assert "jax_symm" not in f.lower(x).as_text()


def test_to_invarying(rng):
    mesh = cpu_mesh((8,), ("x",))
    x = random_array(rng, (16, 2), np.float32)
    ours = run_sharded(lambda a: jax_symm.all_gather(a, "x", tiled=True, to="invarying"),
                       x, mesh, P("x"), P())
    np.testing.assert_array_equal(ours, x)


def test_pytree_input(rng):
    mesh = cpu_mesh((8,), ("x",))
    xs = {"a": random_array(rng, (8, 2), np.float32), "b": random_array(rng, (16,), np.int32)}
    f = lambda op: jax.jit(jax.shard_map(lambda t: op(t, "x", tiled=True), mesh=mesh,
                                         in_specs=P("x"), out_specs=P("x")))
    ours, ref = f(jax_symm.all_gather)(xs), f(jax.lax.all_gather)(xs)
    for k in xs:
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(ref[k]))


def test_check_vma_false(rng):
    mesh = cpu_mesh((8,), ("x",))
    x = random_array(rng, (64, 3), np.float32)
    ours = run_sharded(lambda a: jax_symm.psum_scatter(a, "x", tiled=True), x, mesh,
                       P("x"), P("x"), check_vma=False)
    ref = run_sharded(lambda a: jax.lax.psum_scatter(a, "x", tiled=True), x, mesh,
                      P("x"), P("x"), check_vma=False)
    assert_same(ours, ref, np.float32)


@pytest.mark.parametrize("dtype", SUM_DTYPES + [jnp.bool_], ids=lambda d: np.dtype(d).name)
def test_all_reduce_dtypes(dtype, rng):
    mesh = cpu_mesh((2, 4), ("a", "b"))
    spec = P(("a", "b"))
    for axes in MESH_2D_AXES:
        for check_vma in (True, False):
            x = random_array(rng, (8 * 3, 5), dtype)
            ours = run_sharded(lambda a: jax_symm.psum(a, axes), x, mesh, spec, spec,
                               check_vma=check_vma)
            ref = run_sharded(lambda a: jax.lax.psum(a, axes), x, mesh, spec, spec,
                              check_vma=check_vma)
            assert_same(ours, ref, np.int32 if dtype == jnp.bool_ else dtype, 8)


def test_negative_scatter_dimension(rng):
    """Counted from the end, as lax >= 0.11 does (lax 0.10 mishandles it, so
    the reference uses the equivalent positive dimension)."""
    mesh = cpu_mesh((8,), ("x",))
    x = random_array(rng, (16, 8 * 3), np.float32)
    ours = run_sharded(lambda a: jax_symm.psum_scatter(a, "x", scatter_dimension=-1, tiled=True),
                       x, mesh, P("x"), P("x"))
    ref = run_sharded(lambda a: jax.lax.psum_scatter(a, "x", scatter_dimension=1, tiled=True),
                      x, mesh, P("x"), P("x"))
    assert_same(ours, ref, np.float32)
