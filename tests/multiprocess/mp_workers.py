"""Worker functions for tests/multiprocess/test_multiprocess.py, run by jax_symm.testing.

Each runs inside one process of a jax.distributed CPU job (the launcher has
already initialised it). They are top-level functions of this module so that
a fresh interpreter can import them: tests/ has no __init__.py, and the
launcher puts this file's directory on the workers' sys.path because the test
passes the function objects themselves.

Checks return plain, picklable summaries (shapes and max abs errors per case);
the parent asserts on them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import global_array as _global_array

DTYPES = ("float32", "bfloat16", "int32")


def _np_dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _random(rs: np.random.RandomState, shape, dtype_name: str) -> np.ndarray:
    if dtype_name == "int32":
        return rs.randint(-100, 101, size=shape).astype(np.int32)
    return rs.standard_normal(shape).astype(np.float32).astype(_np_dtype(dtype_name))


def _run(fn, mesh, in_spec, out_spec, x):
    import jax

    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_spec, out_specs=out_spec))(x)


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _compare(ours, ref, expected: np.ndarray) -> dict:
    """Shard-wise: ours vs the lax result on the same device, and vs numpy."""
    assert ours.shape == ref.shape == expected.shape, (ours.shape, ref.shape, expected.shape)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    ref_by_device = {s.device: np.asarray(s.data) for s in ref.addressable_shards}
    err_lax = err_np = 0.0
    shard_shapes = set()
    for s in ours.addressable_shards:
        got = np.asarray(s.data)
        shard_shapes.add(got.shape)
        err_lax = max(err_lax, _max_err(got, ref_by_device[s.device]))
        err_np = max(err_np, _max_err(got, expected[s.index]))
    return dict(shape=tuple(ours.shape), shard_shapes=sorted(shard_shapes),
                dtype=str(ours.dtype), err_lax=err_lax, err_np=err_np,
                n_shards=len(ours.addressable_shards))


def _case(results: dict, name: str, ours_fn, lax_fn, mesh, in_spec, out_spec, x, expected):
    import jax

    # Finish ours before starting lax: an error in ours then surfaces here
    # instead of as a collective timeout in the lax computation.
    ours = jax.block_until_ready(_run(ours_fn, mesh, in_spec, out_spec, x))
    ref = _run(lax_fn, mesh, in_spec, out_spec, x)
    results[name] = _compare(ours, ref, expected)


def _context() -> dict:
    import jax

    return dict(process_index=jax.process_index(), process_count=jax.process_count(),
                device_count=jax.device_count(), local_device_count=jax.local_device_count())


def check_1d(seed: int) -> dict:
    """all_gather / psum_scatter over a 4-device mesh ('x',) spanning both processes."""
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    import jax_symm

    mesh = Mesh(np.array(jax.devices()).reshape(-1), ("x",))
    n = mesh.shape["x"]
    rs = np.random.RandomState(seed)  # same seed everywhere: same global data
    results: dict = {}
    for dt in DTYPES:
        acc = np.float64 if dt != "int32" else np.int64
        # all_gather, tiled: every device ends with the whole array.
        data = _random(rs, (n * 3, 5), dt)
        x = _global_array(data, mesh, P("x"))
        _case(results, f"all_gather tiled {dt}",
              lambda a: jax_symm.all_gather(a, "x", tiled=True),
              lambda a: jax.lax.all_gather(a, "x", tiled=True),
              mesh, P("x"), P("x"), x, np.concatenate([data] * n))
        # all_gather, stacked (untiled).
        _case(results, f"all_gather stacked {dt}",
              lambda a: jax_symm.all_gather(a, "x"),
              lambda a: jax.lax.all_gather(a, "x"),
              mesh, P("x"), P("x"), x, np.concatenate([data.reshape(n, 3, 5)] * n))
        # all_gather along axis 1, invarying result: out_specs=P().
        _case(results, f"all_gather axis=1 invarying {dt}",
              lambda a: jax_symm.all_gather(a, "x", axis=1, tiled=True, to="invarying"),
              lambda a: jax.lax.all_gather(a, "x", axis=1, tiled=True, to="invarying"),
              mesh, P("x"), P(), x,
              np.concatenate(np.split(data, n, axis=0), axis=1))
        # psum_scatter, tiled: the sum of the n local blocks, scattered by rows.
        data = _random(rs, (n * n * 2, 5), dt)
        x = _global_array(data, mesh, P("x"))
        total = data.astype(acc).reshape(n, n * 2, 5).sum(0)
        _case(results, f"psum_scatter tiled {dt}",
              lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
              lambda a: jax.lax.psum_scatter(a, "x", tiled=True),
              mesh, P("x"), P("x"), x, total)
        # psum_scatter, untiled, along dimension 1.
        data = _random(rs, (n * 3, n), dt)
        x = _global_array(data, mesh, P("x"))
        total = data.astype(acc).reshape(n, 3, n).sum(0)  # (3, n): device i gets column i
        _case(results, f"reduce_scatter dim=1 {dt}",
              lambda a: jax_symm.reduce_scatter(a, "x", scatter_dimension=1),
              lambda a: jax.lax.psum_scatter(a, "x", scatter_dimension=1),
              mesh, P("x"), P("x"), x, total.T.reshape(-1))
    return dict(context=_context(), results=results)


def check_2d(seed: int) -> dict:
    """Collectives over 'p', over 'd' and over both of a 2x2 mesh ('p', 'd')."""
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    import jax_symm

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("p", "d"))
    rs = np.random.RandomState(seed)
    results: dict = {}
    rows, cols = 3, 4
    for dt in DTYPES:
        acc = np.float64 if dt != "int32" else np.int64
        # Rows split 4 ways over ('p', 'd'): device (p, d) holds block b = 2p + d.
        data = _random(rs, (4 * rows, cols), dt)
        blocks = data.reshape(2, 2, rows, cols)  # [p, d]
        x = _global_array(data, mesh, P(("p", "d")))
        for axes, out_spec, expected in [
            # over 'p': device (p, d) gets blocks (0, d), (1, d); laid out by d.
            ("p", P("d"), blocks.transpose(1, 0, 2, 3).reshape(4 * rows, cols)),
            # over 'd': device (p, d) gets blocks (p, 0), (p, 1): rows in order.
            ("d", P("p"), data),
            (("p", "d"), P(), data),
        ]:
            _case(results, f"all_gather {axes} {dt}",
                  lambda a, ax=axes: jax_symm.all_gather(a, ax, tiled=True, to="invarying"),
                  lambda a, ax=axes: jax.lax.all_gather(a, ax, tiled=True, to="invarying"),
                  mesh, P(("p", "d")), out_spec, x, expected)
        # A 2-D sharded operand, gathered (varying) over 'p' along dim 0.
        data2 = _random(rs, (2 * rows, 2 * cols), dt)
        x2 = _global_array(data2, mesh, P("p", "d"))
        _case(results, f"all_gather p of P('p','d') {dt}",
              lambda a: jax_symm.all_gather(a, "p", tiled=True),
              lambda a: jax.lax.all_gather(a, "p", tiled=True),
              mesh, P("p", "d"), P("p", "d"), x2, np.concatenate([data2] * 2))

        # psum_scatter: rows split 4 ways; every local block has 4 * rows rows.
        data = _random(rs, (4 * 4 * rows, cols), dt)
        blocks = data.astype(acc).reshape(2, 2, 4 * rows, cols)  # [p, d]
        x = _global_array(data, mesh, P(("p", "d")))
        for axes, out_spec, expected in [
            # over 'p': device (p, d) gets half p of S_d = sum_p' block(p', d).
            ("p", P(("d", "p")), blocks.sum(0).reshape(-1, cols)),
            # over 'd': device (p, d) gets half d of T_p = sum_d' block(p, d').
            ("d", P(("p", "d")), blocks.sum(1).reshape(-1, cols)),
            # over both: quarter 2p + d of the sum of all four blocks.
            (("p", "d"), P(("p", "d")), blocks.sum((0, 1))),
        ]:
            _case(results, f"psum_scatter {axes} {dt}",
                  lambda a, ax=axes: jax_symm.psum_scatter(a, ax, tiled=True),
                  lambda a, ax=axes: jax.lax.psum_scatter(a, ax, tiled=True),
                  mesh, P(("p", "d")), out_spec, x, expected)
    return dict(context=_context(), results=results)


def raise_on(process_id: int, message: str) -> int:
    """Raises ValueError(message) in process `process_id`; the others return."""
    import jax

    if jax.process_index() == process_id:
        raise ValueError(message)
    return jax.process_index()


def hang(pid_dir: str) -> None:
    """Starts a grandchild, records both pids under `pid_dir`, then sleeps forever."""
    import jax

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(os.path.join(pid_dir, f"{jax.process_index()}.pids"), "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    while True:
        time.sleep(1)
