"""Every jax_symm call is its own call site, met by every device in one order.

JAX lowers identical equations once and reuses the result, a jitted function
called twice is lowered once, and XLA:CPU runs independent operations
concurrently and in any order. jax_symm's calls must still pair up correctly:
K independent same-shape collectives in one shard_map body (the q/k/v gathers
of a layer, a psum over a dict of gradients) give lax's results, in one
process and across processes, with no wait.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import jax
from jax.sharding import PartitionSpec as P

import jax_symm
from jax_symm.testing import run_multiprocess

import call_site_workers as csw
from _util import random_array, shard


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    # A regression would otherwise wait out the default 300 s at a barrier.
    monkeypatch.setenv("JAX_SYMM_TIMEOUT_S", "20")


def _check(body, ref, mesh, xs, out_spec):
    specs = (P("x"),) * len(xs)
    run = lambda fn: jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs,
                                           out_specs=(out_spec,) * len(xs),
                                           check_vma=False))
    placed = [shard(x, mesh, P("x")) for x in xs]
    start = time.monotonic()
    ours = run(body)(*placed)
    jax.block_until_ready(ours)
    elapsed = time.monotonic() - start
    want = run(ref)(*placed)
    for o, w in zip(ours, want):
        np.testing.assert_allclose(np.asarray(o), np.asarray(w), rtol=1e-5, atol=1e-5)
    assert elapsed < 15, f"took {elapsed:.1f} s: calls waited for each other"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("k", [2, 12, 40])
def test_independent_same_shape_gathers(rng, mesh, k):
    xs = [random_array(rng, (64, 4), np.float32) for _ in range(k)]
    _check(lambda *a: tuple(jax_symm.all_gather(v, "x", tiled=True) for v in a),
           lambda *a: tuple(jax.lax.all_gather(v, "x", tiled=True) for v in a),
           mesh, xs, P(None))


@pytest.mark.timeout(120)
def test_psum_of_a_dict_of_same_shape_leaves(rng, mesh):
    xs = [random_array(rng, (8 * 5, 3), np.float32) for _ in range(16)]
    as_dict = lambda a: {f"w{i}": v for i, v in enumerate(a)}
    _check(lambda *a: tuple(jax_symm.psum(as_dict(a), "x").values()),
           lambda *a: tuple(jax.lax.psum(as_dict(a), "x").values()),
           mesh, xs, P("x"))


@pytest.mark.timeout(120)
def test_one_jitted_function_called_independently(rng, mesh):
    """One sub-function, lowered once, called at 6 independent points."""
    gather = jax.jit(lambda v: jax_symm.all_gather(v, "x", tiled=True))
    scatter = jax.jit(lambda v: jax_symm.psum_scatter(v, "x", tiled=True))
    xs = [random_array(rng, (64, 8), np.float32) for _ in range(6)]
    _check(lambda *a: tuple(scatter(gather(v)) for v in a),
           lambda *a: tuple(jax.lax.psum_scatter(jax.lax.all_gather(v, "x", tiled=True),
                                                 "x", tiled=True) for v in a),
           mesh, xs, P("x"))


@pytest.mark.timeout(120)
def test_mixed_ops_inside_scan_and_cond(rng, mesh):
    """Collectives inside loop and branch bodies interleaved with outer ones."""
    x = random_array(rng, (64, 4), np.float32)

    def ours(a):
        def step(c, _):
            s = jax_symm.psum(c, "x")
            g = jax_symm.all_gather(c, "x", tiled=True)
            c = jax.lax.cond(g.sum() > 0, lambda: c + s, lambda: c - s)
            return c, jax_symm.all_gather(a, "x", tiled=True).sum() + g.sum()
        return jax.lax.scan(step, a, None, length=4)

    def ref(a):
        def step(c, _):
            s = jax.lax.psum(c, "x")
            g = jax.lax.all_gather(c, "x", tiled=True)
            c = jax.lax.cond(g.sum() > 0, lambda: c + s, lambda: c - s)
            return c, jax.lax.all_gather(a, "x", tiled=True).sum() + g.sum()
        return jax.lax.scan(step, a, None, length=4)

    run = lambda fn: jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x"),
                                           out_specs=(P("x"), P(None)), check_vma=False))
    xs = shard(x, mesh, P("x"))
    for got, want in zip(run(ours)(xs), run(ref)(xs)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_multiprocess_same_shape_gathers_are_never_mixed_up():
    out = run_multiprocess(csw.same_shape_gathers, args=(10, 8, 1234), timeout_s=100,
                           env={"JAX_SYMM_TIMEOUT_S": "20"})
    for p in out:
        assert p["wrong"] == 0, out


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_multiprocess_threads_running_different_programs():
    """Two threads per process run different programs. JAX runs a process's
    jax_symm programs one after another (the order token), in the order the
    threads happened to dispatch them, which may differ between processes: then
    the processes wait for each other and time out with an error that says
    why. Never a wrong result, never a hang."""
    out = run_multiprocess(csw.threads_run_different_programs, args=(30,), timeout_s=130,
                           env={"JAX_SYMM_TIMEOUT_S": "5"})
    for p in out:
        assert not p["hung"], out
        assert p["wrong"] == {"gather": 0, "psum": 0}, out
        for err in p["errors"]:
            assert "jax_symm" in err and ("same order" in err or "out of step" in err), err


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_multiprocess_large_all_reduce_shares():
    out = run_multiprocess(csw.large_all_reduces, args=((2047, 4096, 70001), 7), timeout_s=100,
                           env={"JAX_SYMM_TIMEOUT_S": "20"})
    for p in out:
        assert p["bad"] == [], out


_DIVERGENT_COND = """
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import jax_symm
mesh = Mesh(np.array(jax.devices()), ("x",))
f = jax.jit(jax.shard_map(
    lambda v: jax.lax.cond(jax.lax.axis_index("x") < 4, lambda u: jax_symm.psum(u, "x"),
                           lambda u: jax_symm.psum(2 * u, "x"), v),
    mesh=mesh, in_specs=P("x"), out_specs=P("x"), check_vma=False))
try:
    f(np.arange(16.0)).block_until_ready()
    print("RETURNED")
except Exception as e:
    print("RAISED", e)
"""


@pytest.mark.timeout(120)
def test_collectives_in_divergent_branches_fail_with_the_cause(tmp_path):
    """Devices that take different branches of a cond meet different call
    sites: they must fail after the timeout, saying why, never hang or pair
    unrelated calls (README limits)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_SYMM_TIMEOUT_S="2", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", _DIVERGENT_COND], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=100)
    assert "RAISED" in out.stdout, (out.stdout[-2000:], out.stderr[-2000:])
    assert "different branches" in out.stdout and "timed out" in out.stdout, out.stdout
    # Who arrived, and, since the missing ranks are this process's own, the
    # other cause of such a wait: XLA:CPU's pool filled by queued executions.
    assert "; arrived: rank " in out.stdout and "never here before" in out.stdout, out.stdout
    assert "XLA:CPU" in out.stdout and "block_until_ready" in out.stdout, out.stdout


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_multiprocess_rebuild_after_clear_caches():
    """A process that lowers anew while the old window's name still exists
    must not reopen the old segment while its creator makes a new one (were
    the name only a function of the job's secret and the call site, both
    would wait until the timeout): every (re)creation is a generation of its
    own, in the name and the fingerprint."""
    out = run_multiprocess(csw.rebuilt_after_clear_caches, args=(6,), timeout_s=120,
                           env={"JAX_SYMM_TIMEOUT_S": "20",
                                "JAX_SYMM_BOOTSTRAP_TIMEOUT_S": "20"})
    assert [p["wrong"] for p in out] == [0, 0], out


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_multiprocess_per_process_constant_before_a_collective():
    """psum(v * (1 + process_index)) gives lax's sum: values that do not
    change the collective's shape must not split its call site (were the
    preceding constants' values hashed into it, the processes would name it
    differently and wait for each other's window until the bootstrap
    timeout)."""
    out = run_multiprocess(csw.per_process_constant, args=(5,), timeout_s=120,
                           env={"JAX_SYMM_TIMEOUT_S": "20",
                                "JAX_SYMM_BOOTSTRAP_TIMEOUT_S": "20"})
    assert [p["wrong"] for p in out] == [0, 0], out
