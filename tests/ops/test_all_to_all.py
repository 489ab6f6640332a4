"""jax_symm.all_to_all equals jax.lax.all_to_all (and a numpy all-to-all) on
fresh random data: every dtype, 1-D to 3-D operands with every pair of split
and concat axes, tiled and untiled, 1-D and 2-D meshes (sub-groups), grad,
vmap, scan and the scope; the host custom call is in the lowered program; on
CPU in one process (8 devices) and in two (2 x 2 devices)."""

import itertools

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
import _a2a_ref
from _util import GATHER_DTYPES, assert_same, cpu_mesh, random_array, run_sharded, shard

TARGET = "custom_call @jax_symm_host_all_to_all"


def _sharded(fn, mesh, spec):
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec))


def _check(rng, dtype, mesh, axes, local_shape, split, concat, tiled, hlo=False):
    """jax_symm vs lax vs numpy for one case; `split`/`concat` may be negative
    for jax_symm (lax gets them counted from the front: it mishandles
    negative axes)."""
    spec = P(tuple(mesh.axis_names))
    x = random_array(rng, (local_shape[0] * mesh.devices.size, *local_shape[1:]), dtype)
    ndim = len(local_shape)
    s, c = split % ndim, concat % ndim
    ours = lambda a: jax_symm.all_to_all(a, axes, split, concat, tiled=tiled)
    ref = lambda a: jax.lax.all_to_all(a, axes, s, c, tiled=tiled)
    got = run_sharded(ours, x, mesh, spec, spec)
    world = int(np.prod([mesh.shape[a] for a in axes]))
    assert_same(got, run_sharded(ref, x, mesh, spec, spec), dtype, world)
    np.testing.assert_array_equal(got, _a2a_ref.on_mesh(x, mesh, axes, s, c, tiled))
    if hlo:
        text = _sharded(ours, mesh, spec).lower(shard(x, mesh, spec)).as_text()
        assert TARGET in text and "all_to_all" not in text.replace(TARGET, ""), text[-3000:]


def _cases(world, ndims=(1, 2, 3)):
    """(local shape, split, concat, tiled): every pair of axes of 1-D to 3-D
    operands, the split axis sized for the group (tiled: 2 chunks' worth)."""
    for ndim in ndims:
        for s, c in itertools.product(range(ndim), repeat=2):
            for tiled in (False, True):
                shape = [3, 2, 5][:ndim]
                shape[s] = world * (2 if tiled else 1)
                yield tuple(shape), s, c, tiled


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int8], ids=lambda d: np.dtype(d).name)
def test_every_split_and_concat_axis(dtype, rng, mesh):
    for shape, s, c, tiled in _cases(8):
        _check(rng, dtype, mesh, ("x",), shape, s, c, tiled)


def test_negative_axes_count_from_the_end(rng, mesh):
    for shape, s, c, tiled in _cases(8, ndims=(2, 3)):
        _check(rng, np.float32, mesh, ("x",), shape, s - len(shape), c - len(shape), tiled)


@pytest.mark.parametrize("dtype", GATHER_DTYPES + [jnp.complex128, jnp.float8_e5m2],
                         ids=lambda d: np.dtype(d).name)
def test_dtypes(dtype, rng, mesh):
    """Bytes move, whatever they are: every dtype lax moves whole bytes of."""
    _check(rng, dtype, mesh, "x", (3, 2, 16), 2, 0, True, hlo=True)
    _check(rng, dtype, mesh, "x", (8, 3), 0, 1, False)
    _check(rng, dtype, mesh, "x", (2, 8, 3), 1, 1, True)


@pytest.mark.parametrize("axes", [("a",), ("b",), ("a", "b"), ("b", "a")],
                         ids=lambda a: "+".join(a))
def test_2d_mesh_and_sub_groups(axes, rng):
    mesh = cpu_mesh((2, 4), ("a", "b"))
    world = int(np.prod([mesh.shape[a] for a in axes]))
    for shape, s, c, tiled in _cases(world, ndims=(2, 3)):
        _check(rng, np.float32, mesh, axes, shape, s, c, tiled)
    _check(rng, jnp.bfloat16, mesh, axes, (3, 4 * world), 1, 0, True, hlo=True)


@pytest.mark.parametrize("count", [40001, 300007])
@pytest.mark.parametrize("axes", [("a", "b"), ("b",)], ids=["world8", "groups_of_4"])
def test_large_exchange_split_into_tasks(axes, count, rng):
    """In one process the ranks share a call's copies out in ranges of
    256 KiB of one output (ffi/host_exchange.cc, Gather), which start and end
    inside chunks, at odd byte offsets (int8, odd chunk sizes)."""
    mesh = cpu_mesh((2, 4), ("a", "b"))
    world = int(np.prod([mesh.shape[a] for a in axes]))
    _check(rng, jnp.int8, mesh, axes, (world * count,), 0, 0, True)
    _check(rng, jnp.int8, mesh, axes, (2, world * count), 1, 0, True)


def test_axis_of_size_one(rng):
    mesh = cpu_mesh((1, 8), ("one", "x"))
    spec = P(("one", "x"))
    x = random_array(rng, (16, 1, 3), np.float32)
    for s, c, tiled in [(1, 2, False), (2, 0, True), (0, 0, True)]:
        got = run_sharded(lambda a: jax_symm.all_to_all(a, "one", s, c, tiled=tiled), x,
                          mesh, spec, spec)
        ref = run_sharded(lambda a: jax.lax.all_to_all(a, "one", s, c, tiled=tiled), x,
                          mesh, spec, spec)
        assert_same(got, ref, np.float32)
    f = _sharded(lambda a: jax_symm.all_to_all(a, "one", 1, 2), mesh, spec)
    assert "jax_symm" not in f.lower(x).as_text()


def test_pytree(rng, mesh):
    xs = {"a": random_array(rng, (8, 16), np.float32), "b": random_array(rng, (16, 8), np.int32)}
    f = lambda op: jax.jit(jax.shard_map(lambda t: op(t, "x", 1, 0, tiled=True), mesh=mesh,
                                         in_specs=P("x"), out_specs=P("x")))
    ours, ref = f(jax_symm.all_to_all)(xs), f(jax.lax.all_to_all)(xs)
    for k in xs:
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(ref[k]))


def test_check_vma_false(rng, mesh):
    x = random_array(rng, (64, 16), np.float32)
    ours = run_sharded(lambda a: jax_symm.all_to_all(a, "x", 1, 0, tiled=True), x, mesh,
                       P("x"), P("x"), check_vma=False)
    ref = run_sharded(lambda a: jax.lax.all_to_all(a, "x", 1, 0, tiled=True), x, mesh,
                      P("x"), P("x"), check_vma=False)
    np.testing.assert_array_equal(ours, ref)


# ---- transforms ----

TRANSFORM_CASES = [(1, 0, True), (0, 1, True), (1, 1, True), (0, 1, False), (0, 0, False)]


def _lax_untiled_as_tiled(a, axes, split, concat, tiled):
    """lax.all_to_all untiled, written as lax does it (expand_dims, a tiled
    all-to-all, squeeze) but through the public tiled function: lax's own
    transpose of an untiled all-to-all with split != concat gets the
    cotangent's shape wrong (jax 0.10.2 to 0.12.1), so its grad is no reference."""
    assert not tiled
    if split < concat:
        out = jax.lax.all_to_all(jnp.expand_dims(a, concat + 1), axes, split, concat + 1,
                                 tiled=True)
        return jnp.squeeze(out, split)
    out = jax.lax.all_to_all(jnp.expand_dims(a, concat), axes, split + 1, concat, tiled=True)
    return jnp.squeeze(out, split + 1)


@pytest.mark.parametrize("split,concat,tiled", TRANSFORM_CASES)
def test_grad(split, concat, tiled, rng, mesh):
    """The transpose is the all-to-all with the axes swapped."""
    x = shard(random_array(rng, (64, 16), np.float32), mesh, P("x"))
    ref = (jax.lax.all_to_all if tiled or split == concat else _lax_untiled_as_tiled)

    def grad(op):
        inner = jax.shard_map(lambda a: jnp.sin(op(a, "x", split, concat, tiled=tiled)) * 1.5,
                              mesh=mesh, in_specs=P("x"), out_specs=P("x"))
        return jax.jit(jax.grad(lambda a: jnp.sum(inner(a) ** 2)))

    g = grad(jax_symm.all_to_all)
    assert_same(g(x), grad(ref)(x), np.float32)
    assert g.lower(x).as_text().count(TARGET) == 2  # forward and its transpose


@pytest.mark.parametrize("split,concat,tiled", TRANSFORM_CASES)
@pytest.mark.parametrize("in_axis", [0, 2])
def test_vmap_inside_shard_map(split, concat, tiled, in_axis, rng, mesh):
    x = np.moveaxis(random_array(rng, (3, 64, 16), np.float32), 0, in_axis)
    spec = P(*[("x" if i == (1 if in_axis == 0 else 0) else None) for i in range(3)])
    for out_axis in (0, -1):
        f = lambda op: (lambda a: jax.vmap(lambda v: op(v, "x", split, concat, tiled=tiled),
                                           in_axes=in_axis, out_axes=out_axis)(a))
        np.testing.assert_array_equal(run_sharded(f(jax_symm.all_to_all), x, mesh, spec, spec),
                                      run_sharded(f(jax.lax.all_to_all), x, mesh, spec, spec))


@pytest.mark.parametrize("split,concat,tiled", TRANSFORM_CASES)
def test_vmap_over_the_collective_axis(split, concat, tiled, rng):
    """vmap with axis_name: the batch is the group, no devices involved."""
    x = jnp.asarray(random_array(rng, (8, 8, 16), np.float32))
    ours = lambda v: jax_symm.all_to_all(v, "i", split, concat, tiled=tiled)
    for in_axes in (0, 1):
        ref = lambda v: jax.lax.all_to_all(v, "i", split, concat, tiled=tiled)
        np.testing.assert_array_equal(jax.vmap(ours, in_axes=in_axes, axis_name="i")(x),
                                      jax.vmap(ref, in_axes=in_axes, axis_name="i")(x))
    # An input that is the same for every member: as if broadcast along the
    # batch (lax's rule broadcasts it to a wrong shape here, jax 0.10-0.12).
    one = x[0]
    np.testing.assert_array_equal(
        jax.vmap(ours, in_axes=None, axis_name="i", axis_size=8)(one),
        jax.vmap(ours, axis_name="i")(jnp.broadcast_to(one, (8, *one.shape))))


def test_scan_ulysses_swap(rng, mesh):
    """A sequence-parallel step in a scan: heads <-> sequence and back."""
    x = random_array(rng, (8 * 4, 16, 3), np.float32)  # [seq, heads, dim] per device [4, 16, 3]

    def body(op):
        def step(c, _):
            h = op(c, "x", 1, 0, tiled=True)            # [32, 2, 3]: all seq, some heads
            h = jnp.tanh(h) + jnp.roll(h, 1, axis=0) * 0.5
            return op(h, "x", 0, 1, tiled=True) + c, None  # back to [4, 16, 3]
        return lambda c: jax.lax.scan(step, c, None, length=4)[0]

    got = run_sharded(body(jax_symm.all_to_all), x, mesh, P("x"), P("x"))
    assert_same(got, run_sharded(body(jax.lax.all_to_all), x, mesh, P("x"), P("x")),
                np.float32)


def test_scope_reroutes_lax_all_to_all(rng, mesh):
    x = shard(random_array(rng, (64, 16), np.float32), mesh, P("x"))
    cases = [(1, 0, True), (0, 1, False), (1, 1, True)]
    f = lambda s, c, t: _sharded(lambda a: jax.lax.all_to_all(a, "x", s, c, tiled=t), mesh,
                                 P("x"))
    for s, c, t in cases:
        ref = f(s, c, t)(x)
        with jax_symm.use_symmetric_memory():
            g = f(s, c, t)
            assert TARGET in g.lower(x).as_text()
            np.testing.assert_array_equal(g(x), ref)
    # What jax_symm does not serve stays lax's, silently.
    with jax_symm.use_symmetric_memory():
        g = _sharded(lambda a: jax.lax.all_to_all(a, "x", 1, 0, axis_index_groups=[
            [0, 1, 2, 3], [4, 5, 6, 7]], tiled=True), mesh, P("x"))
        assert "jax_symm" not in g.lower(x).as_text()


# ---- errors, at trace time ----

def _trace(fn, mesh, shape=(64, 16)):
    x = jnp.zeros(shape, jnp.float32)
    return _sharded(fn, mesh, P("x")).lower(x)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((1, 0), dict(tiled=True, axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]]),
     NotImplementedError, "does not support axis_index_groups"),
    ((1, 0), dict(tiled=False), ValueError, r"split_axis 1 .* has size 16, which must equal "
                                             r"the size of axis 'x' \(8\)"),
    ((2, 0), dict(tiled=True), ValueError, r"split_axis=2 is out of range for x of shape "
                                           r"\(8, 16\) \(valid: -2 to 1\)"),
    ((1, -3), dict(tiled=True), ValueError, r"concat_axis=-3 is out of range"),
    ((1.0, 0), dict(tiled=True), TypeError, "split_axis must be an int"),
])
def test_errors(args, kwargs, error, match, mesh):
    with pytest.raises(error, match=match):
        _trace(lambda a: jax_symm.all_to_all(a, "x", *args, **kwargs), mesh)


def test_not_divisible_names_the_sizes(mesh):
    with pytest.raises(ValueError, match=r"split_axis 1 of x \(shape \(8, 12\)\) has size 12, "
                                         r"which is not divisible by the size of axis 'x' \(8\)"):
        _trace(lambda a: jax_symm.all_to_all(a, "x", 1, 0, tiled=True), mesh, (64, 12))


def test_unbound_axis_and_scalar(mesh):
    with pytest.raises(NameError, match="'y' is not an axis bound there"):
        _trace(lambda a: jax_symm.all_to_all(a, "y", 1, 0, tiled=True), mesh)
    with pytest.raises(ValueError, match="x is a scalar"):
        _trace(lambda a: jax_symm.all_to_all(a.sum(), "x", 0, 0, tiled=True), mesh)


# ---- several processes ----

@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_two_processes_match_lax_and_numpy():
    from jax_symm.testing import run_multiprocess
    import all_to_all_workers

    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"data seed: {seed}")
    out = run_multiprocess(all_to_all_workers.check, args=(seed,), timeout_s=130)
    assert len(out) == 2
    for pid, res in enumerate(out):
        assert res["process_index"] == pid and res["device_count"] == 4
        assert len(res["cases"]) >= 20, res["cases"]
        for name, r in res["cases"].items():
            assert r["custom_call"], (pid, name)
            assert r["equal_numpy"], (pid, name, r)
            assert r["equal_lax"], (pid, name, r)
    assert out[0]["cases"].keys() == out[1]["cases"].keys()
