"""jax_symm across processes: 2 JAX processes x 2 CPU devices, via jax_symm.testing.

The worker functions live in tests/multiprocess/mp_workers.py; the tests pass the function
objects, and the launcher puts their directory on the workers' sys.path.
"""

import os
import time

import numpy as np
import pytest

from jax_symm.testing import MultiProcessError, free_port, run_multiprocess

import mp_workers
from _mp_util import alive as _alive

SEED = int(np.random.SeedSequence().entropy % 2**31)  # fresh data every run

# Gathers move bits; sums may associate differently (errors vs an exact
# float64/int64 reference summed from the same inputs, values ~N(0, 1)).
SUM_ATOL = {"float32": 1e-5, "bfloat16": 0.1, "int32": 0.0}


def _check(out: list, n_processes: int = 2, n_devices: int = 2) -> None:
    assert len(out) == n_processes
    print(f"data seed: {SEED}")
    for pid, res in enumerate(out):
        ctx = res["context"]
        assert ctx == dict(process_index=pid, process_count=n_processes,
                           device_count=n_processes * n_devices,
                           local_device_count=n_devices), ctx
        assert res["results"], "no cases ran"
        for name, r in res["results"].items():
            dtype = name.split()[-1]
            assert r["n_shards"] == n_devices, (pid, name, r)
            assert r["dtype"] == dtype, (pid, name, r)
            if "gather" in name:
                assert r["err_lax"] == 0 and r["err_np"] == 0, (pid, name, r)
            else:
                assert r["err_lax"] <= SUM_ATOL[dtype], (pid, name, r)
                assert r["err_np"] <= SUM_ATOL[dtype], (pid, name, r)
    # Both processes ran the same cases with the same global shapes.
    shapes = [{k: v["shape"] for k, v in res["results"].items()} for res in out]
    assert shapes[0] == shapes[1]


@pytest.mark.multiprocess
@pytest.mark.timeout(90)
def test_1d_mesh_matches_lax_and_numpy():
    out = run_multiprocess(mp_workers.check_1d, args=(SEED,), timeout_s=75)
    _check(out)
    r = out[0]["results"]
    assert r["all_gather tiled float32"]["shape"] == (4 * 12, 5)
    assert r["all_gather tiled float32"]["shard_shapes"] == [(12, 5)]
    assert r["psum_scatter tiled int32"]["shard_shapes"] == [(2, 5)]


@pytest.mark.multiprocess
@pytest.mark.timeout(90)
def test_2d_mesh_each_axis_and_both():
    out = run_multiprocess(mp_workers.check_2d, args=(SEED,), timeout_s=75)
    _check(out)
    names = set(out[0]["results"])
    for axes in ("p", "d", "('p', 'd')"):
        assert f"all_gather {axes} bfloat16" in names
        assert f"psum_scatter {axes} int32" in names


@pytest.mark.multiprocess
@pytest.mark.timeout(60)
def test_worker_exception_is_reported():
    with pytest.raises(MultiProcessError) as info:
        run_multiprocess("mp_workers:raise_on", args=(1, "boom from process one"),
                         timeout_s=45, env={"PYTHONPATH": os.path.dirname(__file__)})
    msg = str(info.value)
    assert "ValueError: boom from process one" in msg
    assert "process 1" in msg and "exit status 1" in msg
    assert not info.value.timed_out
    for pid in info.value.pids:
        assert not _alive(pid)


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_hanging_worker_times_out_and_is_killed(tmp_path):
    start = time.monotonic()
    with pytest.raises(MultiProcessError) as info:
        run_multiprocess(mp_workers.hang, args=(str(tmp_path),), timeout_s=10)
    elapsed = time.monotonic() - start
    assert info.value.timed_out
    assert "timed out after 10 s" in str(info.value)
    assert 10 <= elapsed < 30, elapsed
    assert len(info.value.pids) == 2
    pids = list(info.value.pids)
    for f in tmp_path.glob("*.pids"):  # the workers' own subprocesses, too
        pids += [int(p) for p in f.read_text().split()]
    assert len(pids) == 6, "both workers should have started their grandchild"
    for pid in pids:
        assert not _alive(pid), pid


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
