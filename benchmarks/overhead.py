"""Per-call overhead of a jax_symm custom call at world size 1.

A chain of N dependent calls in one jitted program (unrolled, not a loop);
the per-call cost is (t(N_long) - t(N_short)) / (N_long - N_short), median
over repeats. Run with and without XLA command buffers (CUDA graphs):

    JAX_SYMM_SINGLETON_CALLS=1 python benchmarks/overhead.py
    XLA_FLAGS=--xla_gpu_enable_command_buffer= JAX_SYMM_SINGLETON_CALLS=1 python benchmarks/overhead.py
"""

import os
import statistics
import time

os.environ.setdefault("JAX_SYMM_SINGLETON_CALLS", "1")

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jax_symm


def chain_time(op, n_calls, x, mesh, repeats=30):
    def f(a):
        for _ in range(n_calls):
            a = op(a)
        return a
    g = jax.jit(jax.shard_map(f, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    g(x).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        g(x).block_until_ready()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    x = jax.device_put(jnp.asarray(np.random.default_rng().standard_normal(1024), jnp.float32),
                       NamedSharding(mesh, P("x")))
    ops = {
        "jax_symm.all_gather": lambda a: jax_symm.all_gather(a, "x", tiled=True),
        "jax_symm.psum_scatter": lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
        "jax_symm.psum": lambda a: jax_symm.psum(a, "x"),
        "elementwise a*1.0001 (reference)": lambda a: a * 1.0001,
    }
    short, long = 20, 300
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for name, op in ops.items():
        t_short = chain_time(op, short, x, mesh)
        t_long = chain_time(op, long, x, mesh)
        print(f"{name:36s} {(t_long - t_short) / (long - short) * 1e6:7.2f} us/call "
              f"(chain {long}: {t_long * 1e3:.2f} ms, chain {short}: {t_short * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
