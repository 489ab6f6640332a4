"""jax-symm-bench overhead: the per-call cost of a jax_symm custom call at world size 1.

A chain of N dependent calls in one jitted program (unrolled, not a loop) on
one device, with JAX_SYMM_SINGLETON_CALLS=1 so that jax_symm keeps its custom
call for a group of one; the per-call cost is the least-squares slope of
time against N over --calls (timing.estimate; a bootstrap gives p10/p90).
On GPU the figure includes the copies into and out of the symmetric window
and NCCL's 1-rank call; run it with and without XLA command buffers:

    jax-symm-bench overhead
    XLA_FLAGS=--xla_gpu_enable_command_buffer= jax-symm-bench overhead

Also times an all-gather along axis 1 of a 3-D array next to one along axis 0
(same bytes), and one small XLA kernel per call as the floor of any call.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jax-symm-bench overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default="20,160,300",
                   help="chain lengths to fit over (default 20,160,300)")
    p.add_argument("--repeats", type=int, default=30, help="runs per chain length (default 30)")
    p.add_argument("--elems", type=int, default=1024,
                   help="float32 elements of the input (default 1024)")
    return p.parse_args(argv)


def cases(jax_symm) -> dict:
    """name -> (per-call function, input shape) for the chains."""
    import jax

    return {
        "jax_symm.all_gather": (lambda a: jax_symm.all_gather(a, "x", tiled=True), None),
        "jax_symm.all_gather axis=1 (3-D)": (
            lambda a: jax_symm.all_gather(a, "x", axis=1, tiled=True), "3d"),
        "jax_symm.psum_scatter": (lambda a: jax_symm.psum_scatter(a, "x", tiled=True), None),
        "jax_symm.psum": (lambda a: jax_symm.psum(a, "x"), None),
        # The floor of any call: one small XLA kernel. The barrier keeps XLA from
        # fusing the chain into one kernel (which made the old reference ~0).
        "XLA kernel a*1.0001 (reference)": (
            lambda a: jax.lax.optimization_barrier(a * 1.0001), None),
    }


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    if jax.default_backend() != "gpu":
        # Only NCCL has a call at world size 1; the CPU transport pairs 2+ ranks.
        sys.exit(f"jax-symm-bench overhead needs a GPU: it times jax_symm's custom call "
                 f"at world size 1, which only the NCCL transport has (a 1-rank "
                 f"communicator); here JAX's backend is {jax.default_backend()!r}. On CPU "
                 f"the smallest jax_symm call pairs 2 devices: jax-symm-bench --devices 2")
    import jax_symm
    # Keep the custom call for a group of one device, unless the caller said no.
    if "JAX_SYMM_SINGLETON_CALLS" not in os.environ:
        jax.config.update("jax_symm_singleton_calls", True)
    from .timing import estimate, time_chains

    calls = sorted({int(c) for c in args.calls.split(",")})
    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    rng = np.random.default_rng(0)
    flat = jnp.asarray(rng.standard_normal(args.elems), jnp.float32)
    shapes = {None: (args.elems,), "3d": (4, args.elems // 16, 4)}
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, "
          f"jax_symm_singleton_calls={jax_symm.settings.singleton_calls.value}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"chains of {','.join(map(str, calls))} calls, {args.repeats} repeats; "
          "us per call = slope of time vs chain length [p10, p90 by bootstrap]")
    for name, (op, shape_key) in cases(jax_symm).items():
        shape = shapes[shape_key]
        spec = P(None, "x") if shape_key == "3d" else P("x")
        x = jax.device_put(flat[: int(np.prod(shape))].reshape(shape), NamedSharding(mesh, spec))

        def chain(n, op=op, spec=spec):
            def f(a):
                for _ in range(n):
                    a = op(a)
                return a
            return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec))

        ks, seconds = time_chains({n: chain(n) for n in calls}, x, args.repeats, warmup=1)
        est = estimate(ks, seconds)
        figure = (f"{est.time_us:7.2f} us/call [{est.p10_us:.2f}, {est.p90_us:.2f}]"
                  if est.resolved else est.note)
        longest = float(np.median(seconds[:, -1])) * 1e3
        print(f"{name:36s} {figure}  (chain {ks[-1]}: {longest:.2f} ms)", flush=True)
