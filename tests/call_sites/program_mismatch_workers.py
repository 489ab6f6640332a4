"""Workers for tests/call_sites/test_program_mismatch.py (2 processes x 2 CPU devices).

Each mismatch worker runs a program that differs between the processes in
one way and reports what it raised and how long after its call; then it
stays in the job until every process has tried (a real job would go on with
its next step, and a peer that left would be reported as gone instead).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import global_array as _put, mesh_1d as _mesh


def _mesh_2d():
    """('a', 'b') = (2, 2): 'a' spans the processes, 'b' the devices of one."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))


def _smap(body, mesh, spec):
    import jax
    from jax.sharding import PartitionSpec as P

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=P(),
                                 check_vma=False))


def _stay_until_all_tried(tag: str) -> None:
    from jax_symm import _compat

    _compat.distributed_client().wait_at_barrier(tag, 100_000)


def _program(kind: str, p: int):
    """(jitted program, its input) for process `p` of a job whose processes
    differ in `kind`; the calls they share are traced from the same lines."""
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    import jax_symm

    if kind in ("axis", "axis_local"):
        mesh = _mesh_2d()
        n = mesh.devices.size
        # axis: process 0 sums over both axes (one group of 4), process 1 over
        # 'a' only (groups [0, 2], [1, 3]). axis_local: process 0 over 'a',
        # process 1 over 'b', whose groups lie within each process.
        axes = {("axis", 0): ("a", "b"), ("axis", 1): "a",
                ("axis_local", 0): "a", ("axis_local", 1): "b"}[(kind, p)]

        def step(v):
            return jax_symm.psum(v, axes)

        return _smap(step, mesh, P(("a", "b"))), _put(np.arange(n * 4, dtype=np.float32), mesh,
                                                      P(("a", "b")))
    mesh = _mesh()
    n = mesh.devices.size
    per = 8 if (kind == "shape" and p == 1) else 4
    dtype = np.int32 if (kind == "dtype" and p == 1) else np.float32

    def step(v):
        if kind == "before":  # alike collectives, after different operations
            v = v * 2.0 if p == 0 else v + v
        if kind == "op":
            return jax_symm.all_gather(v, "x", tiled=True) if p == 1 else jax_symm.psum(v, "x")
        a = jax_symm.psum(v, "x")
        if (kind == "extra_in_1" and p == 1) or (kind == "extra_in_0" and p == 0):
            a = jax_symm.psum(a * 2, "x") + jnp.ones_like(a)
        return a

    return _smap(step, mesh, P("x")), _put(np.arange(n * per).astype(dtype), mesh, P("x"))


# Values a stranger who reaches the coordinator could plant among process 0's
# published calls (tests/test_program_mismatch.py: they are ignored).
GARBAGE = ["not json", "[1, 2]", "{}", '{"t": "call"}', "x" * 20000,
           '{"t": "call", "m": "jit_step", "d": "4 devices 0", "i": true, "k": 1, "s": 1}',
           '{"t": "done", "m": "jit_step", "d": "' + "d" * 100 + '", "i": 1, "n": 0}',
           '{"t": "call", "m": "jit_step\u0007", "d": "x", "i": 1, "k": 1, "s": -5, '
           '"op": "rm -rf", "a": "", "r": "", "x": [], "g": [[0]], "w": "", "n": []}',
           # Nested deeper than the JSON parser recurses (RecursionError, not ValueError).
           "[" * 10000, '{"t": "call", "g": ' + "[" * 6000 + "]" * 6000 + "}"]


def mismatch(kind: str, plant: bool = False) -> dict:
    """Lowers and runs this process's variant; returns what it raised (or
    None) and the seconds from the call to its end. plant: process 1 first
    writes malformed entries among process 0's published calls."""
    import jax

    from jax_symm import _compat

    p = jax.process_index()
    if plant and p == 1:
        client = _compat.distributed_client()
        for i, value in enumerate(GARBAGE):
            client.key_value_set(f"jax_symm/sites/0/9{i:08d}", value)
        client.key_value_set("jax_symm/sites/0/not-a-number", GARBAGE[-1])
    f, x = _program(kind, p)
    start = time.monotonic()
    try:
        jax.block_until_ready(f(x))
        error = None
    except Exception as e:  # noqa: BLE001  (reported to the test)
        error = f"{type(e).__name__}: {e}"
    elapsed = time.monotonic() - start
    _stay_until_all_tried(f"mismatch-{kind}")
    return dict(error=error, elapsed=elapsed)


# ---- legitimate programs: they must run, however long a process lingers ----


def _psum_step(mesh, scale=1.0):
    from jax.sharding import PartitionSpec as P

    import jax_symm

    def step(v):
        return jax_symm.psum(v * scale, "x")

    return _smap(step, mesh, P("x"))


def late_process(late: int, delay_s: float, steps: int) -> dict:
    """Process `late` first compiles and runs unrelated programs (no
    collective, and a jax_symm psum over its own devices only, under the same
    module name as the shared program) for `delay_s` seconds; the other
    lowers and runs the shared program at once, waiting for it. Then both
    run it `steps` times with a per-process constant before the psum."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    p = jax.process_index()
    mesh = _mesh()
    n = mesh.devices.size
    if p == late:
        start = time.monotonic()
        local = Mesh(np.array(jax.local_devices()), ("x",))
        own = _psum_step(local)  # module 'jit_step', groups within this process
        k = 0
        while time.monotonic() - start < delay_s:
            k += 1
            jax.block_until_ready(jax.jit(lambda v, k=k: jnp.sin(v) * k)(np.ones(8, np.float32)))
            jax.block_until_ready(own(np.arange(len(jax.local_devices()) * 2, dtype=np.float32)))
            time.sleep(0.2)
    f = _psum_step(mesh, 1.0 + p)
    wrong = 0
    for s in range(steps):
        data = np.arange(n * 3, dtype=np.float32) + s
        got = np.asarray(f(_put(data, mesh, P("x"))).addressable_shards[0].data)
        scale = np.repeat(1.0 + np.arange(2), n // 2)[:, None]
        wrong += int(not np.allclose(got, (data.reshape(n, 3) * scale).sum(0)))
    return {"wrong": wrong}


def late_rebuilds(rounds: int, delay_s: float) -> dict:
    """Each round builds a program of a new shape under one module name, runs
    it and drops it (jax.clear_caches()); one process starts each odd round
    `delay_s` late, alternately process 0 and 1."""
    import gc

    import jax
    from jax.sharding import PartitionSpec as P

    p = jax.process_index()
    mesh = _mesh()
    n = mesh.devices.size
    wrong = 0
    for r in range(rounds):
        if r % 2 == 1 and p == (r // 2) % 2:
            time.sleep(delay_s)
        f = _psum_step(mesh)
        data = np.arange(n * (2 + r), dtype=np.float32)
        got = np.asarray(f(_put(data, mesh, P("x"))).addressable_shards[0].data)
        wrong += int(not np.array_equal(got, data.reshape(n, -1).sum(0)))
        del f
        jax.clear_caches()
        gc.collect()
    return {"wrong": wrong}


def threads_late(delay_s: float, same_name: bool) -> dict:
    """Two threads per process lower one program each; process 0 lowers A,
    waits `delay_s`, then lowers B, while process 1 lowers B first (so it
    waits for B's window beyond the grace). same_name: both programs are
    'jit_step' with one psum of one shape (they differ in the operations
    before it); else they differ in name and call. Then every process runs
    A and B, in that order (a process runs its programs one after another:
    run from two threads, they may meet in different orders)."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh()
    n = mesh.devices.size
    if same_name:
        def make(before):
            def step(v):
                return jax_symm.psum(before(v), "x")
            return _smap(step, mesh, P("x"))
        progs = [make(lambda v: v * 2.0), make(lambda v: v + v + v)]
        want = [lambda x: 2.0 * x.reshape(n, -1).sum(0), lambda x: 3.0 * x.reshape(n, -1).sum(0)]
    else:
        def gather_step(v):
            return jax_symm.all_gather(v, "x", tiled=True)

        def sum_step(v):
            return jax_symm.psum(v, "x")
        progs = [_smap(gather_step, mesh, P("x")), _smap(sum_step, mesh, P("x"))]
        want = [lambda x: x, lambda x: x.reshape(n, -1).sum(0)]
    x = np.arange(n * 4, dtype=np.float32)
    xs = _put(x, mesh, P("x"))
    p = jax.process_index()
    first_done = threading.Event()
    compiled, errors = [None, None], []

    def lower(i):
        try:
            if p == 0 and i == 1 or p == 1 and i == 0:
                first_done.wait(100)
                if p == 0:
                    time.sleep(delay_s)
            compiled[i] = progs[i].lower(xs).compile()
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        first_done.set()

    threads = [threading.Thread(target=lower, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    results = []
    if not errors and all(c is not None for c in compiled):
        for i in range(2):
            got = np.asarray(compiled[i](xs).addressable_shards[0].data)
            results.append(bool(np.allclose(got, want[i](x))))
    return {"results": results, "errors": errors,
            "hung": any(t.is_alive() for t in threads)}
