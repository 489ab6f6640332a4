"""Workers for tests/call_sites/test_call_sites.py (2 processes x 2 CPU devices)."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import global_array as _put, local_copy as _gathered, mesh_1d as _mesh


def same_shape_gathers(k: int, rounds: int, seed: int) -> dict:
    """k independent all-gathers of one shape in one shard_map body, `rounds`
    times with fresh data; returns how many gathered outputs were wrong."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh()
    n = mesh.shape["x"]
    f = jax.jit(jax.shard_map(
        lambda *xs: tuple(jax_symm.all_gather(x, "x", tiled=True) for x in xs),
        mesh=mesh, in_specs=(P("x"),) * k, out_specs=(P(None),) * k, check_vma=False))
    rng = np.random.default_rng(seed)  # the same seed in every process: same data
    wrong = 0
    for _ in range(rounds):
        data = [rng.standard_normal(n * 16).astype(np.float32) for _ in range(k)]
        outs = f(*[_put(d, mesh, P("x")) for d in data])
        wrong += sum(not np.array_equal(_gathered(o), d) for o, d in zip(outs, data))
    return dict(wrong=wrong, total=k * rounds)


def threads_run_different_programs(rounds: int) -> dict:
    """Two threads per process, each calling its own program (a gather and a
    psum of different sizes) concurrently; returns the wrong results seen."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh()
    n = mesh.shape["x"]
    gather = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "x", tiled=True),
                                   mesh=mesh, in_specs=P("x"), out_specs=P(None),
                                   check_vma=False))
    total = jax.jit(jax.shard_map(lambda a: jax_symm.psum(a, "x"), mesh=mesh,
                                  in_specs=P("x"), out_specs=P(None), check_vma=False))
    a = np.arange(n * 8, dtype=np.float32)
    b = np.arange(n * 4, dtype=np.float32) * 3 + 1
    want_total = b.reshape(n, 4).sum(axis=0)
    # Lower both first, in the same order in every process (lowering is a
    # collective point); the threads only run them.
    xa, xb = _put(a, mesh, P("x")), _put(b, mesh, P("x"))
    gather(xa).block_until_ready()
    total(xb).block_until_ready()
    wrong = {"gather": 0, "psum": 0}
    errors: list[str] = []

    def loop(name, fn, x, want):
        try:
            for _ in range(rounds):
                if not np.array_equal(_gathered(fn(x)), want):
                    wrong[name] += 1
        except Exception as e:  # noqa: BLE001  (reported to the test)
            errors.append(f"{name}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=loop, args=("gather", gather, xa, a)),
               threading.Thread(target=loop, args=("psum", total, xb, want_total))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return dict(wrong=wrong, errors=errors, hung=any(t.is_alive() for t in threads))


def large_all_reduces(counts: tuple, seed: int) -> dict:
    """psum of float32 / int32 arrays of each count per device, against numpy;
    from 8 KiB the ranks split the sum into shares across processes."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh()
    n = mesh.shape["x"]
    rng = np.random.default_rng(seed)  # the same data in every process
    bad = []
    for count in counts:
        for dtype in (np.float32, np.int32):
            data = (rng.standard_normal(n * count) * 50).astype(dtype)
            f = jax.jit(jax.shard_map(lambda a: jax_symm.psum(a, "x"), mesh=mesh,
                                      in_specs=P("x"), out_specs=P(None), check_vma=False))
            for _ in range(3):  # consecutive calls alternate the window's buffers
                got = _gathered(f(_put(data, mesh, P("x"))))
                want = data.reshape(n, count).sum(axis=0, dtype=dtype)
                if not np.allclose(got, want, rtol=1e-5, atol=1e-3):
                    bad.append((count, np.dtype(dtype).name))
    return dict(bad=bad)


def _psum_program(mesh, scale):
    """jit(shard_map) of psum(v * scale) over 'x'."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    return jax.jit(jax.shard_map(lambda v: jax_symm.psum(v * scale, "x"), mesh=mesh,
                                 in_specs=P("x"), out_specs=P()))


def rebuilt_after_clear_caches(rounds: int) -> dict:
    """The program is built, run, dropped with jax.clear_caches() and built
    again, `rounds` times. Process 0 makes the windows
    (it serves rank 0); it drops its program late in every other round, so
    that process 1 lowers anew while the old window's name still exists."""
    import gc
    import time

    import jax
    from jax.sharding import PartitionSpec as P

    mesh = _mesh()
    n = mesh.devices.size
    wrong = 0
    for r in range(rounds):
        f = _psum_program(mesh, 1.0)
        data = np.arange(n * 3, dtype=np.float32) + r
        got = _gathered(f(_put(data, mesh, P("x"))))
        wrong += int(not np.array_equal(got, data.reshape(n, 3).sum(0)))
        if jax.process_index() == 0 and r % 2 == 0:
            time.sleep(1.0)
        del f
        jax.clear_caches()
        # The old executable (and so its windows) goes when Python's collector
        # frees it; collected now, every process drops it before lowering anew
        # (README: a rebuild pairs once the old executables are gone).
        gc.collect()
    return {"wrong": wrong}


def per_process_constant(steps: int) -> dict:
    """psum(v * (1 + process_index)): a constant that differs between the
    processes but not the collective's shape."""
    import jax
    from jax.sharding import PartitionSpec as P

    mesh = _mesh()
    n = mesh.devices.size
    per_device = len(jax.local_devices())
    f = _psum_program(mesh, 1.0 + jax.process_index())
    wrong = 0
    for s in range(steps):
        data = np.arange(n * 3, dtype=np.float32) + s
        got = _gathered(f(_put(data, mesh, P("x"))))
        # Each process scales its own devices' rows by 1 + its index.
        scale = np.repeat(1.0 + np.arange(n // per_device), per_device)[:, None]
        want = (data.reshape(n, 3) * scale).sum(0)
        wrong += int(not np.allclose(got, want))
    return {"wrong": wrong}
