"""jax_symm ops under jit, grad/vjp, jvp, vmap, scan, fori_loop, checkpoint,
and several independent collectives in one program, against jax.lax."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from _util import assert_same, cpu_mesh, random_array, run_sharded, shard

OPS = {
    "all_gather": (lambda x: jax_symm.all_gather(x, "x", axis=1, tiled=True),
                   lambda x: jax.lax.all_gather(x, "x", axis=1, tiled=True)),
    "all_gather_stacked": (lambda x: jax_symm.all_gather(x, "x", axis=0),
                           lambda x: jax.lax.all_gather(x, "x", axis=0)),
    "reduce_scatter": (lambda x: jax_symm.psum_scatter(x, "x", scatter_dimension=1, tiled=True),
                       lambda x: jax.lax.psum_scatter(x, "x", scatter_dimension=1, tiled=True)),
    "all_reduce": (lambda x: jax_symm.psum(x, "x"), lambda x: jax.lax.psum(x, "x")),
    "all_to_all": (lambda x: jax_symm.all_to_all(x, "x", 1, 0, tiled=True),
                   lambda x: jax.lax.all_to_all(x, "x", 1, 0, tiled=True)),
    "all_to_all_same_axis": (lambda x: jax_symm.all_to_all(x, "x", 1, 1, tiled=True),
                             lambda x: jax.lax.all_to_all(x, "x", 1, 1, tiled=True)),
}


@pytest.mark.parametrize("op", OPS)
def test_grad(op, rng, mesh):
    ours, ref = OPS[op]
    x = random_array(rng, (32, 16), np.float32)

    def loss(f):
        inner = jax.shard_map(lambda a: jnp.sin(f(a)) * 1.5, mesh=mesh,
                              in_specs=P("x"), out_specs=P("x"))
        return jax.jit(jax.grad(lambda a: jnp.sum(inner(a) ** 2)))

    xs = shard(x, mesh, P("x"))
    assert_same(loss(ours)(xs), loss(ref)(xs), np.float32)


@pytest.mark.parametrize("op", OPS)
def test_vjp_and_jvp(op, rng, mesh):
    ours, ref = OPS[op]
    x = shard(random_array(rng, (32, 16), np.float32), mesh, P("x"))
    t = shard(random_array(rng, (32, 16), np.float32), mesh, P("x"))
    wrap = lambda f: jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    p1, tan1 = jax.jit(lambda a, b: jax.jvp(wrap(ours), (a,), (b,)))(x, t)
    p2, tan2 = jax.jit(lambda a, b: jax.jvp(wrap(ref), (a,), (b,)))(x, t)
    assert_same(p1, p2, np.float32)
    assert_same(tan1, tan2, np.float32)
    out, vjp1 = jax.vjp(wrap(ours), x)
    _, vjp2 = jax.vjp(wrap(ref), x)
    ct = jnp.asarray(random_array(rng, out.shape, np.float32))
    assert_same(vjp1(ct)[0], vjp2(ct)[0], np.float32)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("in_axis", [0, 1, 2])
def test_vmap_inside_shard_map(op, in_axis, rng, mesh):
    ours, ref = OPS[op]
    x = random_array(rng, (3, 32, 16), np.float32)
    x = np.moveaxis(x, 0, in_axis)
    spec = [None, None, None]
    spec[1 if in_axis == 0 else 0] = "x"
    spec = P(*spec)
    for out_axis in (0, -1):
        f = lambda g: (lambda a: jax.vmap(g, in_axes=in_axis, out_axes=out_axis)(a))
        assert_same(run_sharded(f(ours), x, mesh, spec, spec),
                    run_sharded(f(ref), x, mesh, spec, spec), np.float32)


def test_vmap_over_the_collective_axis(rng):
    """vmap with axis_name: the batch is the group, no devices involved."""
    x = jnp.asarray(random_array(rng, (8, 3, 8), np.float32))
    for ours, ref in [
        (lambda v: jax_symm.all_gather(v, "i"), lambda v: jax.lax.all_gather(v, "i")),
        (lambda v: jax_symm.all_gather(v, "i", axis=1, tiled=True),
         lambda v: jax.lax.all_gather(v, "i", axis=1, tiled=True)),
        (lambda v: jax_symm.psum_scatter(v, "i", scatter_dimension=1),
         lambda v: jax.lax.psum_scatter(v, "i", scatter_dimension=1)),
    ]:
        for in_axes in (0, 2):
            assert_same(jax.vmap(ours, in_axes=in_axes, axis_name="i")(x),
                        jax.vmap(ref, in_axes=in_axes, axis_name="i")(x), np.float32)


@pytest.mark.parametrize("loop", ["scan", "fori_loop"])
def test_loops(loop, rng, mesh):
    x = random_array(rng, (64, 4), np.float32)

    def body_fn(gather, scatter):
        def step(c):
            return scatter(jnp.tanh(gather(c)) * 0.5, "x", tiled=True) + c
        if loop == "scan":
            return lambda c: jax.lax.scan(lambda c, _: (step(c), None), c, None, length=5)[0]
        return lambda c: jax.lax.fori_loop(0, 5, lambda i, c: step(c), c)

    ours = body_fn(lambda c: jax_symm.all_gather(c, "x", tiled=True), jax_symm.psum_scatter)
    ref = body_fn(lambda c: jax.lax.all_gather(c, "x", tiled=True), jax.lax.psum_scatter)
    assert_same(run_sharded(ours, x, mesh, P("x"), P("x")),
                run_sharded(ref, x, mesh, P("x"), P("x")), np.float32)


def test_checkpoint_grad(rng, mesh):
    x = shard(random_array(rng, (32, 8), np.float32), mesh, P("x"))

    def make(gather, scatter):
        @jax.checkpoint
        def block(a):
            return scatter(jnp.sin(gather(a, "x", tiled=True)), "x", tiled=True)
        f = jax.shard_map(block, mesh=mesh, in_specs=P("x"), out_specs=P("x"))
        return jax.jit(jax.grad(lambda a: jnp.sum(f(a) ** 2)))

    assert_same(make(jax_symm.all_gather, jax_symm.psum_scatter)(x),
                make(jax.lax.all_gather, jax.lax.psum_scatter)(x), np.float32)


def test_many_independent_collectives_in_one_program(rng, mesh):
    """Independent calls may run in any order per device; each must meet its
    own peers (matched by call site), never another call's."""
    xs = [random_array(rng, (64 * (i + 1), 3), np.float32) for i in range(6)]

    def prog(gather, scatter):
        def f(*args):
            outs = []
            for i, a in enumerate(args):
                outs.append(gather(a * (i + 1), "x", tiled=True) if i % 2 else
                            scatter(a - i, "x", tiled=True))
            return tuple(outs)
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("x"),) * len(xs),
                                     out_specs=(P("x"),) * len(xs)))

    args = [shard(x, mesh, P("x")) for x in xs]
    ours = prog(jax_symm.all_gather, jax_symm.psum_scatter)(*args)
    ref = prog(jax.lax.all_gather, jax.lax.psum_scatter)(*args)
    for a, b in zip(ours, ref):
        assert_same(a, b, np.float32)


def test_mixed_with_lax_collectives(rng, mesh):
    x = random_array(rng, (64, 4), np.float32)

    def f(a):
        g = jax_symm.all_gather(a, "x", tiled=True)
        s = jax.lax.psum(jnp.sum(g), "x")
        r = jax.lax.psum_scatter(g * s, "x", tiled=True)
        return jax_symm.psum_scatter(jax.lax.all_gather(r, "x", tiled=True), "x", tiled=True)

    def g(a):
        g = jax.lax.all_gather(a, "x", tiled=True)
        s = jax.lax.psum(jnp.sum(g), "x")
        r = jax.lax.psum_scatter(g * s, "x", tiled=True)
        return jax.lax.psum_scatter(jax.lax.all_gather(r, "x", tiled=True), "x", tiled=True)

    assert_same(run_sharded(f, x, mesh, P("x"), P("x")),
                run_sharded(g, x, mesh, P("x"), P("x")), np.float32)


def test_repeated_calls_reuse_windows(rng, mesh):
    """The same compiled program, called many times on new data, stays right."""
    f = jax.jit(jax.shard_map(lambda a: jax_symm.psum_scatter(
        jax_symm.all_gather(a, "x", tiled=True), "x", tiled=True),
        mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    for _ in range(20):
        x = random_array(rng, (32, 5), np.float32)
        np.testing.assert_allclose(np.asarray(f(shard(x, mesh, P("x")))), 8 * x, rtol=1e-5,
                                   atol=1e-5)


def test_lowers_to_the_host_custom_call(mesh, rng):
    x = shard(random_array(rng, (64,), np.float32), mesh, P("x"))
    f = jax.jit(jax.shard_map(lambda a: jax_symm.psum_scatter(jax_symm.all_gather(a, "x"), "x"),
                              mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    text = f.lower(x).as_text()
    assert "jax_symm_host_all_gather" in text and "jax_symm_host_reduce_scatter" in text
    assert "all_gather" not in text.replace("jax_symm_host_all_gather", "")


def test_partially_manual_shard_map_falls_back_to_lax(rng):
    """shard_map manual over some mesh axes only: XLA's partitioner owns the
    rest, so jax_symm hands the call to XLA's collective (with a warning)."""
    import warnings

    mesh = cpu_mesh((2, 4), ("d", "x"))
    x = random_array(rng, (8, 6), np.float32)

    def run(op):
        f = jax.jit(jax.shard_map(lambda a: op(a, "x", tiled=True), mesh=mesh,
                                  in_specs=P("x"), out_specs=P("x"), axis_names={"x"}))
        return np.asarray(f(shard(x, mesh, P("x"))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = run(jax_symm.all_gather)
    assert_same(ours, run(jax.lax.all_gather), np.float32)


def test_vmap_untiled_scatter_batch_after_scatter_dim(rng, mesh):
    """Batch dimension after the (removed) scatter dimension; checked against
    numpy, since lax's own batching rule gets this case wrong (IndexError)."""
    x = random_array(rng, (8 * 8, 3, 2), np.float32)  # per device (8, 3, 2): scatter dim 0
    f = jax.jit(jax.shard_map(
        lambda a: jax.vmap(lambda v: jax_symm.psum_scatter(v, "x"), in_axes=2, out_axes=1)(a),
        mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    out = np.asarray(f(shard(x, mesh, P("x"))))  # per device (3, 2)
    want = x.reshape(8, 8, 3, 2).sum(axis=0)       # device d keeps row d of the sum
    np.testing.assert_allclose(out, want.reshape(8 * 3, 2), rtol=1e-5, atol=1e-5)
