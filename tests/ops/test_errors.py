"""Bad input fails at trace time with lax-like errors naming the argument;
native (C++) failures surface as Python exceptions, never aborts."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from _util import shard


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
    # The failure stays with that execution: the next one runs (no order token
    # carries the error on).
    np.testing.assert_array_equal(np.asarray(f(x))[:64], np.arange(64, dtype=np.float32))


# --- at least as helpful as lax for the same mistake -----------------------

_OPS = [
    ("psum", lambda a: jax_symm.psum(a, "x"), lambda a: jax.lax.psum(a, "x")),
    ("all_gather", lambda a: jax_symm.all_gather(a, "x"), lambda a: jax.lax.all_gather(a, "x")),
    ("psum_scatter", lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
     lambda a: jax.lax.psum_scatter(a, "x", tiled=True)),
    ("all_to_all", lambda a: jax_symm.all_to_all(a, "x", 0, 0, tiled=True),
     lambda a: jax.lax.all_to_all(a, "x", 0, 0, tiled=True)),
]


def _error(fn, x):
    with pytest.raises(Exception) as info:
        fn(x)
    return info.value


@pytest.mark.parametrize("name,ours,lax_fn", _OPS, ids=[o[0] for o in _OPS])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_outside_shard_map_says_how_to_fix_like_lax(name, ours, lax_fn, jit):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(8), jnp.float32)
    wrap = jax.jit if jit else (lambda f: f)
    mine, theirs = _error(wrap(ours), x), _error(wrap(lax_fn), x)
    assert type(mine) is type(theirs) is NameError
    assert "unbound axis name: x" in str(mine) and "unbound axis name: x" in str(theirs)
    # lax names the fix only for psum under jit; jax_symm always does.
    if "To fix this" in str(theirs):
        assert str(theirs).replace(name, f"jax_symm.{name}") == str(mine)
    assert f"To fix this, please call jax_symm.{name} under `jax.shard_map`" in str(mine)


_TYPO_OPS = [
    ("psum", lambda ax: (lambda a: jax_symm.psum(a, ax)), lambda ax: (lambda a: jax.lax.psum(a, ax))),
    ("all_gather", lambda ax: (lambda a: jax_symm.all_gather(a, ax, tiled=True)),
     lambda ax: (lambda a: jax.lax.all_gather(a, ax, tiled=True))),
    ("psum_scatter", lambda ax: (lambda a: jax_symm.psum_scatter(a, ax, tiled=True)),
     lambda ax: (lambda a: jax.lax.psum_scatter(a, ax, tiled=True))),
    ("all_to_all", lambda ax: (lambda a: jax_symm.all_to_all(a, ax, 0, 0, tiled=True)),
     lambda ax: (lambda a: jax.lax.all_to_all(a, ax, 0, 0, tiled=True))),
]


@pytest.mark.parametrize("name,ours,lax_fn", _TYPO_OPS, ids=[o[0] for o in _TYPO_OPS])
def test_mistyped_axis_inside_shard_map_names_it_and_the_mesh_axes(name, ours, lax_fn):
    """Inside shard_map, "please call ... under jax.shard_map" points the wrong
    way: the error names the unknown axis, lists the bound
    axes and the mesh's, suggests the close one, and says at least what lax
    says (lax's all_gather: "unbound axis name: pt"; its psum: a bare
    AssertionError)."""
    from _util import cpu_mesh
    mesh = cpu_mesh((2, 4), ("dp", "tp"))
    x = np.ones((64,), np.float32)
    spec = P(("dp", "tp"))
    mine = _error(lambda v: trace(ours("pt"), v, mesh, spec), x)
    theirs = _error(lambda v: trace(lax_fn("pt"), v, mesh, spec), x)
    text = str(mine)
    assert isinstance(mine, NameError)
    assert "unbound axis name: pt" in text
    assert "'dp' (size 2), 'tp' (size 4)" in text and "('dp', 'tp')" in text
    assert "Did you mean 'tp'?" in text
    assert "under `jax.shard_map`" not in text
    # Everything lax's message says, ours says too (lax's words, other op name).
    for line in str(theirs).splitlines():
        assert line.replace(f"lax.{name}", f"jax_symm.{name}") in text or not line.strip(), line
    # A valid axis next to the typo: the typo is the one named.
    err = _error(lambda v: trace(ours(("dp", "tq")), v, mesh, spec), x)
    assert "unbound axis name: tq" in str(err) and "Did you mean 'tp'?" in str(err)


def test_psum_outside_shard_map_under_the_scope_is_lax_error():
    """The scope passes an unbound axis through to lax: lax's own error."""
    f = jax.jit(lambda a: jax.lax.psum(a, "x"))
    with jax_symm.use_symmetric_memory():
        err = _error(f, jnp.ones(4))
    assert isinstance(err, NameError)
    assert "To fix this, please call psum under `jax.shard_map`" in str(err)


def test_abstract_mesh_names_the_fix():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    f = jax.jit(jax.shard_map(lambda a: jax_symm.psum(a, "x"), mesh=mesh.abstract_mesh,
                              in_specs=P("x"), out_specs=P()))
    with pytest.raises(NotImplementedError, match="needs a concrete device mesh.*jax.sharding.Mesh"):
        f(np.arange(8.0))
    # lax does no better here: a runtime error about an unregistered custom call.
    g = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "x"), mesh=mesh.abstract_mesh,
                              in_specs=P("x"), out_specs=P()))
    with pytest.raises(Exception):
        g(np.arange(8.0))
