"""Helpers shared by the multi-process tests and their workers.

Worker modules run inside processes that jax_symm.testing has configured
before JAX starts, so nothing here imports JAX at module level.
"""

from __future__ import annotations

import json
import os

import numpy as np


def write_json(path: str, obj) -> None:
    """Writes a report atomically: readers never see half of it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def mesh_1d():
    """Every device of the job on one axis 'x'."""
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()).reshape(-1), ("x",))


def global_array(data: np.ndarray, mesh, spec):
    """`data` (the same in every process) placed with `spec` over `mesh`."""
    import jax
    from jax.sharding import NamedSharding

    return jax.make_array_from_callback(data.shape, NamedSharding(mesh, spec),
                                        lambda idx: data[idx])


def local_copy(out) -> np.ndarray:
    """This process's copy of a replicated output."""
    return np.asarray(out.addressable_shards[0].data)


def gather_scatter_fn(mesh):
    """x (4*n*k,) sharded over 'x' -> (all_gather(x) tiled, psum_scatter(x) tiled)."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    def body(a):
        return (jax_symm.all_gather(a, "x", tiled=True),
                jax_symm.psum_scatter(a, "x", tiled=True))

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"),
                                 out_specs=(P("x"), P("x"))))


def check_gather_scatter(out, data: np.ndarray, n: int) -> None:
    gathered, scattered = out
    for s in gathered.addressable_shards:  # every device holds the whole array
        np.testing.assert_array_equal(np.asarray(s.data), data)
    total = data.reshape(n, -1).sum(0)
    for s in scattered.addressable_shards:
        np.testing.assert_array_equal(np.asarray(s.data), total[s.index])


def keep_windows_until_every_process_looked(tag: str, timeout_ms: int = 60_000) -> None:
    """Waits at a job-wide barrier named `tag`. Windows go with their
    executables, and the process that made a window removes its name from
    /dev/shm when it frees them (at the latest when its worker returns), so a
    worker that inspects window files must keep its programs alive until every
    peer has looked too: call this after looking, before returning."""
    from jax_symm import _compat

    _compat.distributed_client().wait_at_barrier(tag, timeout_ms)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shm_names(prefix: str = "jax_symm-") -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith(prefix)}


def captured_chain(gather, scatter, mesh, steps: int = 8):
    """jit(shard_map) of `steps` gather-then-scatter pairs over axis 'x': many
    calls in one program, so XLA may capture them into a CUDA graph. Shared
    by the one-process and the multi-rank GPU tests."""
    import jax
    from jax.sharding import PartitionSpec as P

    def f(a):
        for i in range(steps):
            a = scatter(gather(a, "x", tiled=True) * (1.0 + i / steps), "x", tiled=True)
        return a

    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
