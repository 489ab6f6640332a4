"""Conformance: programs written with jax.lax collectives behave the same with
and without `use_symmetric_memory()`: the same values, output types (dtype,
shape, varying axes) and errors (type and message). Modelled on jax's own
tests/shard_map_test.py, which passes under the scope except where a test
inspects primitive names. A scope that hands a call back to lax does so
silently: warnings are errors here."""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

import jax_symm
from _util import random_array

pytestmark = [pytest.mark.filterwarnings("error"), pytest.mark.timeout(120)]

MESH = jax.make_mesh((4, 2), ("x", "y"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
_TYPES: list[str] = []  # types seen inside bodies, per run


def seen(*vals):
    """Records the types (incl. varying axes) of values inside a body."""
    for v in jax.tree.leaves(vals):
        _TYPES.append(str(jax.typeof(v)))
    return vals[0] if len(vals) == 1 else vals


def rand(shape, dtype=np.float32, seed=0, spec=None):
    x = random_array(np.random.default_rng(seed), shape, dtype)
    return x if spec is None else jax.device_put(x, NamedSharding(MESH, spec))


def smap(f, in_specs, out_specs, **kw):
    return jax.shard_map(f, mesh=MESH, in_specs=in_specs, out_specs=out_specs, **kw)


# Each program: () -> (jitted fn, args, whether the scope should emit jax_symm calls).
PROGRAMS = {}


def program(fn):
    PROGRAMS[fn.__name__] = fn
    return fn


@program
def vma_typing():
    def body(a):
        g = seen(lax.all_gather(a, "x", tiled=True))
        s = seen(lax.psum(a, "x"))
        r = seen(lax.psum_scatter(g, "x", tiled=True))
        return g, s, r
    f = smap(body, P("x", "y"), (P("x", "y"), P(None, "y"), P("x", "y")))
    return jax.jit(f), (rand((8, 4), spec=P("x", "y")),), True


@program
def no_vma_checks():
    def body(a):
        return (seen(lax.all_gather(a, "x", tiled=True)), seen(lax.psum(a, ("x", "y"))),
                seen(lax.psum_scatter(a, "y", scatter_dimension=1, tiled=True)))
    f = smap(body, P("x"), (P(None), P(None), P("x", "y")), check_vma=False)
    return jax.jit(f), (rand((8, 4), spec=P("x")),), True


@program
def invariant_input_gets_pvary():
    def body(a, w):  # w is invariant: lax inserts a pvary before the collective
        return seen(lax.psum(w, "x")), seen(lax.all_gather(w, "y"))
    f = smap(body, (P("x"), P()), (P(), P("y")))
    return jax.jit(f), (rand((8, 2), spec=P("x")), rand((3,), seed=1, spec=P())), True


@program
def all_gather_to_invarying():
    f = smap(lambda a: seen(lax.all_gather(a, "x", axis=1, to="invarying")), P("x"), P())
    return jax.jit(f), (rand((8, 3), spec=P("x")),), True


@program
def axis_index_groups_pass_through():
    def body(a):
        return seen(lax.psum(a, "x", axis_index_groups=[[0, 1], [2, 3]]))
    f = smap(body, P("x"), P("x"), check_vma=False)
    return jax.jit(f), (rand((8, 3), spec=P("x")),), False


@program
def tuple_axes():
    def body(a):
        return (seen(lax.psum(a, ("x", "y"))),
                seen(lax.all_gather(a, ("x", "y"), tiled=True)),
                seen(lax.psum_scatter(a, ("y", "x"), tiled=True)))
    f = smap(body, P(("x", "y")), (P(), P(("x", "y")), P(("x", "y"))))
    return jax.jit(f), (rand((64, 3), spec=P(("x", "y"))),), True


@program
def scalars():
    def body(a):
        s = jnp.sum(a)
        return seen(lax.psum(s, "x")), seen(lax.all_gather(s, "x"))
    f = smap(body, P("x"), (P(), P("x")))
    return jax.jit(f), (rand((8,), spec=P("x")),), True


@program
def constants():
    def body(a):
        return (seen(lax.psum(1, "x")), seen(lax.psum(np.float32(2.5), ("x", "y"))),
                a + lax.psum(jnp.int32(3), "y"))  # lax binds this one too
    f = smap(body, P("x"), (P(), P(), P("x")))
    return jax.jit(f), (rand((8,), spec=P("x")),), True


@program
def mixed_dtype_pytree():
    def body(t):
        return (seen(lax.psum(t, "x")), seen(lax.all_gather(t, "y")),
                seen(lax.psum_scatter(t, "y", tiled=True)))
    tree = {"a": rand((8, 2), np.float32, 1, P("x")),
            "b": (rand((8,), np.int32, 2, P("x")), rand((8, 4), jnp.bfloat16, 3, P("x")))}
    spec = {"a": P("x"), "b": (P("x"), P("x"))}
    none = {"a": P(), "b": (P(), P())}
    xy = {"a": P("x", "y"), "b": (P("x", "y"), P("x", "y"))}
    scattered = {"a": P(("x", "y")), "b": (P(("x", "y")), P(("x", "y")))}
    f = smap(body, (spec,), (none, xy, scattered))
    return jax.jit(f), (tree,), True


@program
def bool_psum():
    f = smap(lambda a: seen(lax.psum(a > 0, "x")), P("x"), P())
    return jax.jit(f), (rand((8, 3), spec=P("x")),), True


@program
def nested_shard_map():
    # The input is sharded over y already, so the inner in_specs match the
    # inner argument's type: jax >= 0.12 checks that inside a partially manual
    # shard_map too (an input sharded over x only is a ValueError there).
    inner = jax.shard_map(lambda b: seen(lax.psum(b, "y")), in_specs=P(None, "y"),
                          out_specs=P(), axis_names={"y"})

    def outer(a):  # manual over x only: a psum here is lax's (silently)
        return seen(lax.psum(inner(a), "x"))
    f = jax.shard_map(outer, mesh=MESH, in_specs=P("x"), out_specs=P(), axis_names={"x"})
    return jax.jit(f), (rand((8, 4), spec=P("x", "y")),), True


@program
def partially_manual_is_silent():
    f = smap(lambda a: seen(lax.psum(a, "x")), P("x"), P(), axis_names={"x"})
    return jax.jit(f), (rand((8, 2), spec=P("x")),), False


@program
def checkpointed_grad():
    @jax.checkpoint
    def layer(w, a):
        h = lax.all_gather(a, "x", tiled=True) @ w
        return lax.psum_scatter(jnp.tanh(h), "x", tiled=True)

    def loss(w, a):
        return jnp.sum(smap(lambda w, a: lax.psum(jnp.sum(layer(w, a) ** 2), "x"),
                            (P(), P("x")), P())(w, a))
    return (jax.jit(jax.grad(loss, argnums=(0, 1))),
            (rand((3, 3), seed=1, spec=P()), rand((8, 3), spec=P("x"))), True)


@program
def custom_vjp():
    @jax.custom_vjp
    def gather(a):
        return lax.all_gather(a, "x", tiled=True)

    def fwd(a):
        return gather(a), None

    def bwd(_, ct):
        return (lax.psum_scatter(ct, "x", tiled=True),)
    gather.defvjp(fwd, bwd)

    def loss(a):
        return jnp.sum(smap(lambda a: lax.psum(jnp.sum(jnp.sin(gather(a))), "x"), P("x"), P())(a))
    return jax.jit(jax.value_and_grad(loss)), (rand((8, 2), spec=P("x")),), True


@program
def grad_through_all_three():
    def loss(w, a):
        def body(w, a):
            g = lax.all_gather(a @ w, "x", tiled=True)
            r = lax.psum_scatter(g * g, "x", tiled=True)
            return lax.psum(jnp.sum(jnp.tanh(r)), "x")
        return smap(body, (P(), P("x")), P())(w, a)
    return (jax.jit(jax.grad(loss, argnums=(0, 1))),
            (rand((3, 3), seed=1, spec=P()), rand((8, 3), spec=P("x"))), True)


@program
def vmap_inside_shard_map():
    def body(a):  # vmap over a named axis next to the mesh axis (lax's own
        # psum over a vmap axis fails with check_vma=True in jax 0.10.2)
        return jax.vmap(lambda r: lax.psum(r, "x") * lax.psum(r, "v"), axis_name="v")(a)
    f = smap(body, P("x"), P(), check_vma=False)
    return jax.jit(f), (rand((8, 3), spec=P("x")),), True


@program
def error_unbound_axis_under_jit():
    return jax.jit(lambda a: lax.psum(a, "x")), (rand((4,)),), False


@program
def error_unknown_axis_in_shard_map():
    return jax.jit(smap(lambda a: lax.all_gather(a, "z"), P("x"), P("x"))), \
        (rand((8,), spec=P("x")),), False


@program
def error_scatter_not_divisible():
    return jax.jit(smap(lambda a: lax.psum_scatter(a, "x", tiled=True), P("x"), P("x"))), \
        (rand((12,), spec=P("x")),), False


def _run(name: str, scoped: bool):
    fn, args, _ = PROGRAMS[name]()
    _TYPES.clear()
    scope = jax_symm.use_symmetric_memory() if scoped else contextlib.nullcontext()
    with scope:
        try:
            out = jax.tree.map(np.asarray, fn(*args))
        except Exception as e:  # noqa: BLE001  (errors are compared too)
            return "error", (type(e), str(e).split("\n")[0]), list(_TYPES)
    return "ok", out, list(_TYPES)


def _tolerance(dtype):
    return dict(rtol=2e-2, atol=5e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)


# A shard_map nested in another one takes the abstract context mesh; jax_symm
# needs a concrete mesh at lowering and says so (NotImplementedError; jax
# 0.10.1 lowers it as partially manual instead: a RuntimeWarning), so the
# scope does not yet conform there.
_NESTED_ERRORS = (NotImplementedError, RuntimeWarning)
_NESTED = pytest.mark.xfail(strict=True, raises=_NESTED_ERRORS,
                            reason="nested shard_map lowers with an abstract mesh")


def _cases(names):
    return [pytest.param(n, marks=_NESTED) if n == "nested_shard_map" else n for n in names]


@pytest.mark.parametrize("name", _cases(sorted(PROGRAMS)))
def test_same_with_and_without_scope(name):
    kind0, out0, types0 = _run(name, scoped=False)
    kind1, out1, types1 = _run(name, scoped=True)
    if kind1 == "error" and out1[0] in _NESTED_ERRORS and kind0 == "ok":
        raise out1[0](out1[1])
    assert kind0 == kind1, (out0, out1)
    assert (kind0 == "error") == name.startswith("error_"), out0
    assert types0 == types1  # dtype, shape and varying axes of every collective's result
    if kind0 == "error":
        (t0, m0), (t1, m1) = out0, out1
        assert t0 is t1, (m0, m1)
        if not name.endswith("not_divisible"):  # jax_symm words its own shape errors
            assert m0 == m1
        return
    leaves0, tree0 = jax.tree.flatten(out0)
    leaves1, tree1 = jax.tree.flatten(out1)
    assert tree0 == tree1
    for a, b in zip(leaves0, leaves1):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.any(a != 0)  # a comparison that can fail
        if np.issubdtype(a.dtype, np.inexact) or a.dtype == jnp.bfloat16:
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                                       **_tolerance(a.dtype))
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", _cases(sorted(n for n in PROGRAMS if not n.startswith("error_"))))
def test_scope_emits_jax_symm_where_it_serves(name):
    fn, args, serves = PROGRAMS[name]()
    with jax_symm.use_symmetric_memory():
        text = fn.lower(*args).as_text()
    assert ("custom_call @jax_symm_host_" in text) == serves
    assert "custom_call @jax_symm_host_" not in PROGRAMS[name]()[0].lower(*args).as_text()


def test_gradient_psum_of_replicated_weight_is_xla_s_outside_the_scope():
    """Autodiff's psum for an invariant (replicated) parameter is bound when the
    gradient is traced: outside the scope it is XLA's all-reduce even if the
    forward pass calls jax_symm directly; traced inside the scope it is jax_symm's."""
    def loss(w, a):
        return jax_symm.psum(jnp.sum((a @ w) ** 2), "x")
    f = jax.shard_map(loss, mesh=MESH, in_specs=(P(), P("x")), out_specs=P())
    args = (rand((3, 3), seed=1, spec=P()), rand((8, 3), spec=P("x")))
    outside = jax.jit(jax.grad(f)).lower(*args).as_text()
    assert "stablehlo.all_reduce" in outside and "jax_symm_host" not in outside
    with jax_symm.use_symmetric_memory():
        inside = jax.jit(jax.grad(f)).lower(*args).as_text()
        g = jax.jit(jax.grad(f))(*args)
    assert "stablehlo.all_reduce" not in inside and "jax_symm_host_all_reduce" in inside
    np.testing.assert_allclose(g, jax.jit(jax.grad(f))(*args), rtol=1e-5)
