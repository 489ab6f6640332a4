"""Worker for tests/ops/test_all_to_all.py: all-to-all in a jax.distributed CPU
job of 2 processes x 2 devices (run by jax_symm.testing.run_multiprocess)."""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import _a2a_ref
from _mp_util import global_array

DTYPES = ("float32", "bfloat16", "int8", "bool", "complex64")


def _random(rs, shape, name):
    import ml_dtypes

    if name == "bool":
        return rs.rand(*shape) < 0.5
    if name == "int8":
        return rs.randint(-100, 101, size=shape).astype(np.int8)
    if name == "complex64":
        return (rs.standard_normal(shape) + 1j * rs.standard_normal(shape)).astype(np.complex64)
    dtype = ml_dtypes.bfloat16 if name == "bfloat16" else np.float32
    return rs.standard_normal(shape).astype(np.float32).astype(dtype)


def _same(out, expected) -> bool:
    for s in out.addressable_shards:
        got = np.asarray(s.data)
        want = expected[s.index]
        if got.shape != want.shape or not np.array_equal(got.view(np.uint8),
                                                          np.ascontiguousarray(want).view(np.uint8)):
            return False
    return True


def check(seed: int) -> dict:
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

    import jax_symm

    rs = np.random.RandomState(seed)  # the same in every process: the same global data
    devices = np.array(jax.devices())
    meshes = {"1d": Mesh(devices.reshape(4), ("x",)),
              "2d": Mesh(devices.reshape(2, 2), ("p", "d"))}
    plans = [("1d", ("x",)), ("2d", ("p",)), ("2d", ("d",)), ("2d", ("p", "d"))]
    cases = {}
    for (mesh_name, axes), dt in itertools.product(plans, DTYPES):
        mesh = meshes[mesh_name]
        spec = P(tuple(mesh.axis_names))
        world = int(np.prod([mesh.shape[a] for a in axes]))
        pairs = [(1, 0, True), (0, 1, False), (1, 1, True)] if dt == "float32" or axes == (
            "x",) else [(1, 0, True)]
        for s, c, tiled in pairs:
            local = [3, 5]
            local[s] = world * (2 if tiled else 1)
            data = _random(rs, (local[0] * mesh.devices.size, local[1]), dt)
            x = global_array(data, mesh, spec)

            def run(op):
                f = jax.jit(jax.shard_map(lambda a: op(a, axes, s, c, tiled=tiled), mesh=mesh,
                                          in_specs=spec, out_specs=spec))
                return f, jax.block_until_ready(f(x))

            f, ours = run(jax_symm.all_to_all)
            expected = _a2a_ref.on_mesh(data, mesh, axes, s, c, tiled)
            # lax's all-to-all (gloo), device by device.
            _, ref = run(jax.lax.all_to_all)
            by_device = {r.device: np.asarray(r.data) for r in ref.addressable_shards}
            equal_lax = all(np.array_equal(np.asarray(o.data), by_device[o.device])
                            for o in ours.addressable_shards)
            cases[f"{mesh_name} {axes} {s}->{c} tiled={tiled} {dt}"] = dict(
                custom_call="custom_call @jax_symm_host_all_to_all" in f.lower(x).as_text(),
                equal_numpy=_same(ours, expected), equal_lax=equal_lax)
    return dict(process_index=jax.process_index(), device_count=jax.device_count(),
                cases=cases)
