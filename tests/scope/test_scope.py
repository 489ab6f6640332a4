"""use_symmetric_memory(): lax collectives traced inside go through jax_symm;
outside, disabled, on exceptions and across threads nothing changes."""

import threading

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from _util import assert_same, cpu_mesh, random_array, shard


def model(a):
    g = jax.lax.all_gather(a, "x", tiled=True)
    s = jax.lax.psum(jnp.sum(g ** 2), "x")
    return jax.lax.psum_scatter(jnp.tanh(g) * s, "x", tiled=True)


def compiled(mesh):
    return jax.jit(jax.shard_map(model, mesh=mesh, in_specs=P("x"), out_specs=P("x")))


def n_symm_calls(f, x) -> int:
    return f.lower(x).as_text().count("custom_call @jax_symm_")


def test_on_off_disabled_and_restored(mesh):
    x = shard(random_array(np.random.default_rng(), (64, 4), np.float32), mesh, P("x"))
    f = compiled(mesh)
    ref = f(x)
    assert n_symm_calls(f, x) == 0
    with jax_symm.use_symmetric_memory():
        assert n_symm_calls(f, x) == 3
        assert_same(f(x), ref, np.float32)
    assert n_symm_calls(f, x) == 0  # a fresh trace outside the scope is plain lax
    with jax_symm.use_symmetric_memory(disabled=True):
        assert n_symm_calls(f, x) == 0


def test_global_disable(mesh):
    x = shard(random_array(np.random.default_rng(), (64, 4), np.float32), mesh, P("x"))
    f = compiled(mesh)
    with jax_symm.use_symmetric_memory():
        jax.config.update("jax_symm_disable", True)
        try:
            assert n_symm_calls(f, x) == 0
        finally:
            jax.config.update("jax_symm_disable", False)
        assert n_symm_calls(f, x) == 3


def test_restored_after_exception(mesh):
    x = shard(random_array(np.random.default_rng(), (64, 4), np.float32), mesh, P("x"))
    f = compiled(mesh)
    with pytest.raises(RuntimeError, match="boom"):
        with jax_symm.use_symmetric_memory():
            raise RuntimeError("boom")
    assert n_symm_calls(f, x) == 0


def test_nesting(mesh):
    x = shard(random_array(np.random.default_rng(), (64, 4), np.float32), mesh, P("x"))
    f = compiled(mesh)
    with jax_symm.use_symmetric_memory():
        with jax_symm.use_symmetric_memory(disabled=True):
            assert n_symm_calls(f, x) == 0
        assert n_symm_calls(f, x) == 3


def test_world_size_one_moves_nothing():
    mesh = cpu_mesh((1, 8), ("one", "x"))
    x = shard(random_array(np.random.default_rng(), (8, 4), np.float32), mesh, P(("one", "x")))
    f = jax.jit(jax.shard_map(lambda a: jax.lax.psum_scatter(
        jax.lax.all_gather(a, "one", tiled=True), "one", tiled=True),
        mesh=mesh, in_specs=P(("one", "x")), out_specs=P(("one", "x"))))
    with jax_symm.use_symmetric_memory():
        assert n_symm_calls(f, x) == 0
        assert_same(f(x), x, np.float32)


def test_unsupported_calls_pass_through(mesh):
    x = shard(np.arange(64, dtype=np.int32), mesh, P("x"))
    f = jax.jit(jax.shard_map(
        lambda a: jax.lax.all_gather(a, "x", axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]]),
        mesh=mesh, in_specs=P("x"), out_specs=P("x"), check_vma=False))
    ref = f(x)
    with jax_symm.use_symmetric_memory():
        assert n_symm_calls(f, x) == 0
        np.testing.assert_array_equal(f(x), ref)


def test_threads_are_independent(mesh):
    """A scope in one thread does not leak into another thread's traces."""
    x = shard(random_array(np.random.default_rng(), (64, 4), np.float32), mesh, P("x"))
    entered, done = threading.Event(), threading.Event()
    seen = {}

    def scoped():
        with jax_symm.use_symmetric_memory():
            entered.set()
            seen["scoped"] = n_symm_calls(compiled(mesh), x)
            done.wait(30)

    t = threading.Thread(target=scoped)
    t.start()
    entered.wait(30)
    seen["plain"] = n_symm_calls(compiled(mesh), x)
    done.set()
    t.join(60)
    assert seen == {"scoped": 3, "plain": 0}


def test_grad_inside_scope(mesh):
    x = shard(random_array(np.random.default_rng(), (64, 4), np.float32), mesh, P("x"))
    loss = lambda v: jnp.sum(jax.shard_map(model, mesh=mesh, in_specs=P("x"),
                                           out_specs=P("x"))(v) ** 2)
    ref = jax.jit(jax.grad(loss))(x)
    with jax_symm.use_symmetric_memory():
        g = jax.jit(jax.grad(loss))
        assert n_symm_calls(g, x) >= 5
        np.testing.assert_allclose(np.asarray(g(x)), np.asarray(ref), rtol=1e-4, atol=1e-3)
