"""What a jax_symm sum returns, exactly (README, "Sums").

float16 and bfloat16 sums accumulate in float32, in rank order, and round once
(as NCCL's symmetric kernels do); XLA:CPU sums in the element type. So on CPU a
half-precision sum equals the float32 sum of the inputs rounded to the element
type, bit for bit, and stays finite where only partial sums overflow. Signed
zeros follow lax: a sum of -0.0s is +0.0.
"""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm

from _util import cpu_mesh, shard

N = 8


@pytest.fixture
def mesh():
    return cpu_mesh((N,), ("x",))


def _run(mesh, fn, x):
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    return np.asarray(f(shard(x, mesh, P("x"))))


def _f32_reference(x: np.ndarray, dtype) -> np.ndarray:
    """Per-rank rows (N, ...) summed in float32 in rank order, rounded once."""
    acc = np.zeros(x.shape[1:], np.float32)
    for r in range(N):
        acc = acc + x[r].astype(np.float32)
    return acc.astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_sums_are_float32_sums_rounded_once(dtype):
    mesh = cpu_mesh((N,), ("x",))
    rng = np.random.default_rng()
    rows = (rng.standard_normal((N, 64)) * 100).astype(np.float32).astype(dtype)
    want = _f32_reference(rows, dtype)
    psum = _run(mesh, lambda a: jax_symm.psum(a, "x"), rows.reshape(-1))
    for r in range(N):
        np.testing.assert_array_equal(psum[r * 64:(r + 1) * 64].view(np.uint16),
                                      want.view(np.uint16))
    scattered = _run(mesh, lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
                     rows.reshape(-1))
    np.testing.assert_array_equal(scattered.view(np.uint16), want.view(np.uint16))


def test_float16_partial_overflow_stays_finite(mesh):
    # +60000, +60000, -60000, -60000, ...: every prefix of two overflows
    # float16 (max 65504), the total is 0.
    rows = np.array([60000, 60000, -60000, -60000] * 2, np.float16).reshape(N, 1)
    rows = np.repeat(rows, 4, axis=1)
    got = _run(mesh, lambda a: jax_symm.psum(a, "x"), rows.reshape(-1))
    assert np.all(np.isfinite(got)), got
    np.testing.assert_array_equal(got, np.zeros_like(got))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64,
                                   jnp.complex64])
def test_sum_of_negative_zeros_is_positive_zero_as_in_lax(mesh, dtype):
    x = np.full((N * N * 2,), -0.0, dtype=dtype)
    for ours, ref in ((lambda a: jax_symm.psum(a, "x"), lambda a: jax.lax.psum(a, "x")),
                      (lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
                       lambda a: jax.lax.psum_scatter(a, "x", tiled=True))):
        got, want = _run(mesh, ours, x), _run(mesh, ref, x)
        parts = (got.real, got.imag) if np.iscomplexobj(got) else (got,)
        wparts = (want.real, want.imag) if np.iscomplexobj(want) else (want,)
        for g, w in zip(parts, wparts):
            np.testing.assert_array_equal(np.signbit(g.astype(np.float32)),
                                          np.signbit(w.astype(np.float32)))
            assert not np.any(np.signbit(g.astype(np.float32)))


@pytest.mark.parametrize("count", [2047, 2048, 3001, 65537])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.complex64])
def test_large_all_reduce_split_into_shares_matches_lax(mesh, count, dtype):
    """From 8 KiB a rank sums only its share of the elements, written into
    every rank's output (ffi/host_window.cc, PartitionedAllReduce): odd sizes,
    shares that end mid-way, and a last rank with little or nothing to sum."""
    from _util import assert_same, random_array

    x = random_array(np.random.default_rng(), (N * count,), dtype)
    got = _run(mesh, lambda a: jax_symm.psum(a, "x"), x)
    want = _run(mesh, lambda a: jax.lax.psum(a, "x"), x)
    assert_same(got, want, dtype, world=N)


@pytest.mark.parametrize("count", [3001, 65537, 300007])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.complex64])
def test_large_reduce_scatter_split_into_tasks_is_the_rank_order_sum(mesh, count, dtype):
    """In one process the ranks share a call's work out in blocks of about
    256 KiB read (ffi/host_exchange.cc, SharedWork): each output is summed by
    whichever ranks run, block by block, with a short last block. Every block
    must still be the rank-order sum, bit for bit, of its own elements."""
    from _util import random_array

    rows = random_array(np.random.default_rng(), (N, N * count), dtype)
    scatter = lambda a: jax_symm.psum_scatter(a, "x", tiled=True)
    f = jax.jit(jax.shard_map(scatter, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    text = f.lower(shard(rows.reshape(-1), mesh, P("x"))).as_text()
    assert "custom_call @jax_symm_host_reduce_scatter" in text
    got = _run(mesh, scatter, rows.reshape(-1))
    acc_type = {np.dtype(jnp.int32): np.int32, np.dtype(jnp.complex64): np.complex64}
    acc = np.zeros(N * count, acc_type.get(np.dtype(dtype), np.float32))
    for r in range(N):  # rank order, in float32 (or the integer type), rounded once
        acc = acc + rows[r].astype(acc.dtype)
    want = acc.astype(dtype)
    assert np.array_equal(np.asarray(got).view(np.uint8), want.view(np.uint8))


_MORE_RANKS_THAN_ONE_PASS = r'''
import numpy as np, jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax_symm
W = 12  # sums take up to 8 sources per pass: 12 ranks need a second pass
mesh = Mesh(np.array(jax.devices()[:W]), ("x",))
rng = np.random.default_rng()
def run(fn, x):
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    return np.asarray(f(jax.device_put(x, NamedSharding(mesh, P("x")))))
for dtype in (np.float32, jnp.bfloat16, np.int32):
    for per_rank in (W * 8, W * 1024):  # below and above the split all-reduce
        if np.dtype(dtype) == np.int32:
            rows = rng.integers(-1000, 1000, (W, per_rank)).astype(dtype)
        else:
            rows = (rng.standard_normal((W, per_rank)) * 10).astype(np.float32).astype(dtype)
        acc = np.zeros(per_rank, np.int32 if np.dtype(dtype) == np.int32 else np.float32)
        for r in range(W):  # rank order, in float32 (or int32), rounded once
            acc = acc + rows[r].astype(acc.dtype)
        want = acc.astype(dtype)
        got = run(lambda a: jax_symm.psum(a, "x"), rows.reshape(-1)).reshape(W, -1)
        for r in range(W):
            assert np.array_equal(got[r].view(np.uint8), want.view(np.uint8)), (dtype, per_rank, r)
        got = run(lambda a: jax_symm.psum_scatter(a, "x", tiled=True), rows.reshape(-1))
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (dtype, per_rank)
print("ok")
'''


def test_more_ranks_than_one_summing_pass_takes(tmp_path):
    """Host sums add up to eight ranks per pass over a block (host_reduce.cc);
    a group of 12 needs a second pass, still in rank order, bit for bit."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=12",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _MORE_RANKS_THAN_ONE_PASS], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
