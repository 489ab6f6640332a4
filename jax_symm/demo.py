"""The main job: all-gather and reduce-scatter on whatever devices exist.

    python -m jax_symm.demo            # 8 virtual CPU devices unless GPUs are present
    python -m jax_symm.demo --devices 4

Runs each jax_symm op next to its jax.lax twin on fresh random data, prints
both results' agreement and a rough per-call time.
"""

from __future__ import annotations

import argparse
import os
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=8,
                   help="virtual CPU devices when no GPU is present (default 8)")
    p.add_argument("--size", type=int, default=1 << 16,
                   help="float32 elements per device (default 65536)")
    p.add_argument("--iters", type=int, default=20, help="timed calls per op")
    return p.parse_args()


def main() -> None:
    args = _parse()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"

    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jax_symm

    devices = jax.devices()
    n = len(devices)
    print(f"jax {jax.__version__} on {n} {devices[0].platform} device(s): "
          f"{devices[0].device_kind}")
    mesh = Mesh(np.array(devices), ("x",))
    rng = np.random.default_rng()
    x = rng.standard_normal((n * args.size,), dtype=np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, P("x")))

    cases = {
        "all_gather": (jax_symm.all_gather, jax.lax.all_gather, dict(tiled=True)),
        "reduce_scatter": (jax_symm.psum_scatter, jax.lax.psum_scatter, dict(tiled=True)),
    }
    for name, (ours, ref, kw) in cases.items():
        if name == "reduce_scatter" and args.size % n:
            print(f"{name}: skipped ({args.size} elements per device do not split {n} ways)")
            continue
        results, times = [], []
        for op in (ours, ref):
            f = jax.jit(jax.shard_map(lambda a, op=op: op(a, "x", **kw), mesh=mesh,
                                      in_specs=P("x"), out_specs=P("x")))
            out = f(xs).block_until_ready()
            start = time.perf_counter()
            for _ in range(args.iters):
                out = f(xs)
            out.block_until_ready()
            times.append((time.perf_counter() - start) / args.iters * 1e6)
            results.append(np.asarray(out))
        err = float(np.max(np.abs(results[0] - results[1])))
        print(f"{name:15s} out {results[0].shape}  max |jax_symm - lax| = {err:.3g}  "
              f"jax_symm {times[0]:8.1f} us/call  lax {times[1]:8.1f} us/call")
    print("ok")


if __name__ == "__main__":
    main()
