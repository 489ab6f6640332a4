"""CPU collectives without an order token.

The host handlers never hold an XLA thread while they wait for peers, so
jax_symm's primitives carry no JAX effect of their own: remat recomputes them
as it recomputes lax's, the persistent compilation cache stores them, nested
smap lowers them, and a call site is named by what it is, not by the order in
which a process happened to lower its programs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import jax
import jax.extend  # noqa: F401  (jaxprs_in_params: jax.core's copy is gone in 0.12)
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from jax_symm.testing import run_multiprocess

import order_workers as ow
from _util import random_array, shard

HERE = os.path.dirname(os.path.abspath(__file__))


def _subprocess(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with 8 CPU devices (an abort there
    cannot take pytest down)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_SYMM_TIMEOUT_S="20", PYTHONPATH=HERE)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


# --- remat treats jax_symm's collectives as lax's ----------------------------

def _count(jaxpr, names) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name in names
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count(sub, names)
    return n


@pytest.mark.timeout(60)
def test_remat_saves_what_lax_saves(mesh):
    """jax's test_collectives_not_saved, under the scope."""
    from jax._src.ad_checkpoint import saved_residuals

    f = jax.shard_map(lambda x: jax.lax.all_gather(x, "x") * jax.lax.all_gather(x, "x"),
                      mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    x = jnp.ones((8 * 4,))
    want = saved_residuals(jax.remat(f), x)
    with jax_symm.use_symmetric_memory():
        got = saved_residuals(jax.remat(f), x)
    assert len(want) == 1
    assert [str(a) for a, _ in got] == [str(a) for a, _ in want], (got, want)


@pytest.mark.timeout(60)
def test_checkpointed_all_gather_is_recomputed_in_the_backward_pass(rng, mesh):
    def loss(gather, w):
        def body(v):
            return jnp.sin(jax.checkpoint(lambda u: gather(u, "x", tiled=True) ** 2)(v)).sum()[None]
        return jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x"))(w).sum()

    w = shard(random_array(rng, (8 * 16,), np.float32), mesh, P("x"))
    ours = jax.make_jaxpr(jax.grad(lambda v: loss(jax_symm.all_gather, v)))(w).jaxpr
    lax_ = jax.make_jaxpr(jax.grad(lambda v: loss(jax.lax.all_gather, v)))(w).jaxpr
    n_lax = _count(lax_, {"all_gather"})
    assert n_lax == 2  # the forward gather and its recomputation
    assert _count(ours, {"jax_symm_all_gather", "all_gather"}) == n_lax
    got = jax.jit(jax.grad(lambda v: loss(jax_symm.all_gather, v)))(w)
    want = jax.jit(jax.grad(lambda v: loss(jax.lax.all_gather, v)))(w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


# --- float8 gradients are decided at trace time ------------------------------

def _f8_grad(gather, mesh, x):
    f = jax.shard_map(lambda v: gather(v, "x", tiled=True).astype(jnp.float32).sum()[None],
                      mesh=mesh, in_specs=P("x"), out_specs=P("x"))
    return jax.jit(jax.grad(lambda v: f(v).sum()))(x)


@pytest.mark.timeout(60)
def test_float8_gather_gradient(rng, mesh):
    x = shard(random_array(rng, (8 * 4,), np.float32).astype(jnp.float8_e4m3fn), mesh, P("x"))
    with pytest.raises(TypeError, match="no sum for float8_e4m3fn.*jax.lax.all_gather"):
        _f8_grad(jax_symm.all_gather, mesh, x)
    want = _f8_grad(jax.lax.all_gather, mesh, x)
    with jax_symm.use_symmetric_memory():
        got = _f8_grad(jax.lax.all_gather, mesh, x)
    np.testing.assert_array_equal(np.asarray(got).astype(np.float32),
                                  np.asarray(want).astype(np.float32))
    # Nothing is poisoned: the next jax_symm program runs.
    y = shard(random_array(rng, (8 * 4,), np.float32), mesh, P("x"))
    g = jax.jit(jax.shard_map(lambda v: jax_symm.psum(v, "x"), mesh=mesh, in_specs=P("x"),
                              out_specs=P("x")))
    np.testing.assert_allclose(np.asarray(g(y)),
                               np.tile(np.asarray(y).reshape(8, 4).sum(0), 8), rtol=1e-5)


# --- nested smap under the scope ---------------------------------------------

_NESTED_SMAP = """
import numpy as np, jax
from jax.sharding import AxisType
import jax_symm
mesh = jax.make_mesh((2, 2), ("x", "y"), axis_types=(AxisType.Auto,) * 2)
inner = lambda x: jax.smap(lambda v: jax.lax.psum(v, "y"), in_axes=0, out_axes=0,
                           axis_name="y")(x)
make = lambda: jax.jit(jax.smap(inner, in_axes=0, out_axes=0, axis_name="x"))
x = np.random.default_rng().standard_normal((4, 4)).astype(np.float32)
with jax.set_mesh(mesh):
    want = np.asarray(make()(x))
    with jax_symm.use_symmetric_memory():
        got = np.asarray(make()(x))
np.testing.assert_allclose(got, want, rtol=1e-6)
print("SAME")
"""


@pytest.mark.timeout(150)
def test_nested_smap_psum_under_the_scope():
    done = _subprocess(_NESTED_SMAP)
    assert done.returncode == 0 and "SAME" in done.stdout, done.stderr[-3000:]


# --- the persistent compilation cache ----------------------------------------

_CACHED = """
import json, sys
import order_workers
print("OUT", json.dumps(order_workers.cached_program(sys.argv[1])["outs"]))
"""


def _outputs(text: str):
    line = [ln for ln in text.splitlines() if ln.startswith("OUT ")]
    assert line, text[-3000:]
    return json.loads(line[0][4:])


@pytest.mark.timeout(240)
def test_persistent_cache_one_process(tmp_path):
    cache = str(tmp_path / "cache")
    runs = []
    for _ in range(2):  # writes the cache, then loads from it in a fresh process
        done = _subprocess(_CACHED, cache)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(_outputs(done.stdout))
        entries = sorted(os.listdir(cache))
    assert len(entries) == 2, entries  # ours and lax's: the second run added none
    for ours, lax_ in runs:
        assert ours == lax_
    assert runs[0] == runs[1]


@pytest.mark.multiprocess
@pytest.mark.timeout(300)
def test_persistent_cache_two_processes(tmp_path):
    """Two processes run jax_symm's program (and lax's) twice over one cache
    folder: the second run loads from it, and gives the first run's values.

    Where jax's cache keys differ between the processes (jaxlib 0.12.1 on CPU
    names only the process's own devices in the key, xla.CpuTopologyProto),
    process 0 loads the program and process 1 compiles it again (only process
    0 writes the cache). XLA's own collectives then never meet and hang
    (plain jax with gloo does). jax_symm pairs calls by call site, so its
    program must still run; lax's is left out of that second run."""
    cache = str(tmp_path / "cache")
    env = {"JAX_SYMM_TIMEOUT_S": "20"}
    first = run_multiprocess(ow.cached_program, args=(cache,), timeout_s=120, env=env)
    keys_agree = len({p["devices_key"] for p in first}) == 1
    second = run_multiprocess(ow.cached_program, args=(cache, keys_agree), timeout_s=120, env=env)
    for p in first:
        ours, lax_ = p["outs"]
        assert ours == lax_
    for p0, p1 in zip(first, second):
        assert p1["outs"][0] == p0["outs"][0]  # jax_symm's, loaded or compiled again
        if keys_agree:
            assert p1["outs"][1] == p0["outs"][1]
    entries = os.listdir(cache)
    assert len(entries) <= 4, entries  # per process, ours and lax's: none added


# --- call sites named by what they are ---------------------------------------

@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_programs_lowered_in_opposite_orders_pair_correctly():
    out = run_multiprocess(ow.opposite_lowering_order, args=(20,), timeout_s=130,
                           env={"JAX_SYMM_TIMEOUT_S": "10"})
    for p in out:
        assert not p["hung"], out
        assert p["wrong"] == [0, 0], out
        for err in p["errors"]:  # the processes' run orders may differ: an error, never wrong
            assert "jax_symm" in err and "same order" in err, err


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_concurrent_first_lowerings():
    out = run_multiprocess(ow.concurrent_first_lowerings, args=(6,), timeout_s=130,
                           env={"JAX_SYMM_TIMEOUT_S": "20"})
    for p in out:
        assert p["errors"] == [] and p["wrong"] == 0, out


# --- where a waiting call waits ----------------------------------------------

_SCANNED_OPS = """
import numpy as np, jax
from jax.sharding import PartitionSpec as P, NamedSharding
import jax_symm
from jax_symm import _compat
mesh = jax.make_mesh((8,), ("x",))
ops = {
    "all_gather": (lambda a: jax_symm.all_gather(a, "x", tiled=True)[-a.shape[0]:],
                   lambda a: jax.lax.all_gather(a, "x", tiled=True)[-a.shape[0]:]),
    "psum_scatter": (lambda a: jax.numpy.tile(jax_symm.psum_scatter(a, "x", tiled=True), 8) / 8,
                     lambda a: jax.numpy.tile(jax.lax.psum_scatter(a, "x", tiled=True), 8) / 8),
    "psum": (lambda a: _compat.pvary(jax_symm.psum(a, "x"), ("x",)) / 8,
             lambda a: _compat.pvary(jax.lax.psum(a, "x"), ("x",)) / 8),
}
rng = np.random.default_rng()
for n in (16, 64 << 10):  # elements per rank: the small and the partitioned all-reduce
    x = jax.device_put(rng.standard_normal(8 * n).astype(np.float32), NamedSharding(mesh, P("x")))
    for name, (symm, ref) in ops.items():
        def looped(op):
            step = lambda a, _: (op(a) + 1e-3 * a, None)
            return jax.jit(jax.shard_map(lambda a: jax.lax.scan(step, a, None, length=12)[0],
                                         mesh=mesh, in_specs=P("x"), out_specs=P("x")))
        f = looped(symm)
        assert "jax_symm" in f.lower(x).as_text(), name
        np.testing.assert_allclose(np.asarray(f(x)), np.asarray(looped(ref)(x)), rtol=1e-4,
                                   atol=1e-5, err_msg=f"{name} {n}")
    # Independent same-shape calls, which XLA may run in any order on each device.
    def many(gather):
        return jax.jit(jax.shard_map(
            lambda a: sum(gather(a * (i + 1), "x", tiled=True) for i in range(6)),
            mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    np.testing.assert_array_equal(np.asarray(many(jax_symm.all_gather)(x)),
                                  np.asarray(many(jax.lax.all_gather)(x)))
print("SAME")
"""


@pytest.mark.timeout(200)
@pytest.mark.parametrize("patience_us", ["0", "5000"])
def test_waits_on_xla_thread_or_in_the_pool_match_lax(patience_us):
    # 0: every call but the last to arrive moves its wait to jax_symm's pool
    # and is resumed there; 5000 (the default): calls mostly wait on XLA's
    # thread. Both must give lax's results, in a scan and in independent calls.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_SYMM_TIMEOUT_S="20", JAX_SYMM_PATIENCE_US=patience_us, PYTHONPATH=HERE)
    done = subprocess.run([sys.executable, "-c", _SCANNED_OPS], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "SAME" in done.stdout, done.stderr[-3000:]


def test_patience_must_not_be_negative(monkeypatch):
    from jax_symm import settings
    monkeypatch.setenv("JAX_SYMM_PATIENCE_US", "-1")
    with pytest.raises(ValueError, match="JAX_SYMM_PATIENCE_US"):
        settings.patience_s()
    monkeypatch.setenv("JAX_SYMM_PATIENCE_US", "250")
    assert settings.patience_s() == pytest.approx(250e-6)
