"""Workers for tests/call_sites/test_order.py (2 processes x 2 CPU devices)."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import global_array as _put, local_copy as _local, mesh_1d as _mesh


def _programs(mesh):
    """Two different programs with the same collectives in the same place
    (one module name, one call each, same kind and shape): only what they are
    tells their call sites apart. They differ in their operations (2a as a
    product, 3a as two sums), not merely in a constant's value: constants'
    values are not part of a call site, and programs
    that differ only there, run concurrently, pair wrongly with lax (gloo) as
    with jax_symm (README, "Supported, and not")."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    def make(before):
        body = lambda a: jax_symm.all_gather(before(a), "x", tiled=True)
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P(None),
                                     check_vma=False))
    return make(lambda a: a * 2.0), make(lambda a: a + a + a)


def opposite_lowering_order(rounds: int) -> dict:
    """Two threads per process each lower and run their own program; process
    0 lowers program A first, process 1 program B first. Returns the wrong
    results and errors seen."""
    import jax

    mesh = _mesh()
    n = mesh.shape["x"]
    progs = _programs(mesh)
    x = np.arange(n * 8, dtype=np.float32)
    xs = _put(x, mesh, jax.sharding.PartitionSpec("x"))
    wrong, errors = [0, 0], []
    first = threading.Event()

    def loop(i):
        try:
            if (i == 0) != (jax.process_index() == 0):
                first.wait(60)  # lower the other program first
            lowered = progs[i].lower(xs).compile()
            first.set()
            for _ in range(rounds):
                if not np.array_equal(_local(lowered(xs)), x * (2.0 + i)):
                    wrong[i] += 1
        except Exception as e:  # noqa: BLE001  (reported to the test)
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    return dict(wrong=wrong, errors=errors, hung=any(t.is_alive() for t in threads))


def concurrent_first_lowerings(k: int) -> dict:
    """k threads make the process's first jax_symm lowerings at once."""
    import jax

    mesh = _mesh()
    n = mesh.shape["x"]
    import jax_symm
    from jax.sharding import PartitionSpec as P

    fns = [jax.jit(jax.shard_map(lambda a, s=s: jax_symm.psum(a * s, "x"), mesh=mesh,
                                 in_specs=P("x"), out_specs=P(None), check_vma=False))
           for s in range(1, k + 1)]
    x = np.arange(n * 4, dtype=np.float32)
    xs = _put(x, mesh, P("x"))
    compiled, errors = [None] * k, []

    def lower(i):
        try:
            compiled[i] = fns[i].lower(xs).compile()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=lower, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    wrong = 0
    if not errors:  # run them one after another, in one order everywhere
        want = x.reshape(n, 4).sum(axis=0)
        for i, c in enumerate(compiled):
            wrong += not np.allclose(_local(c(xs)), want * (i + 1))
    return dict(wrong=wrong, errors=errors)


def cached_program(cache_dir: str, with_lax: bool = True) -> dict:
    """A jax_symm program through the persistent compilation cache: returns
    its values (next to lax's, `with_lax`) and this process's part of the
    cache key that names its devices (see test_persistent_cache_two_processes)."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    mesh = _mesh()
    n = mesh.shape["x"]
    x = np.arange(n * 6, dtype=np.float32) - 7
    xs = _put(x, mesh, P("x"))
    outs = []
    ops = [(jax_symm.all_gather, jax_symm.psum, jax_symm.psum_scatter)]
    if with_lax:
        ops.append((jax.lax.all_gather, jax.lax.psum, jax.lax.psum_scatter))
    for ag, ps, rs in ops:
        body = lambda a: (ag(a, "x", tiled=True), ps(a, "x"),
                          ag(rs(ag(a, "x", tiled=True), "x", tiled=True), "x", tiled=True))
        f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"),
                                  out_specs=(P(None), P(None), P(None)), check_vma=False))
        outs.append([_local(o).tolist() for o in f(xs)])
    return dict(outs=outs, devices_key=_devices_cache_key(mesh))


def _devices_cache_key(mesh) -> str:
    """The part of jax's persistent-cache key that names the devices, as this
    process computes it (jax._src.cache_key, private: read by this test only)."""
    import hashlib

    from jax._src import cache_key

    h = hashlib.sha256()
    cache_key._hash_accelerator_config(h, mesh.devices)
    return h.hexdigest()
