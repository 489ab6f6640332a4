"""jax-symm-demo: jax_symm's collectives next to their jax.lax twins, checked and timed.

    jax-symm-demo                 # 8 virtual CPU devices unless GPUs are present
    jax-symm-demo --devices 4

For each case it checks jax_symm's result against jax.lax's on random data,
then times both the way `jax-symm-bench` does: jitted programs of K = 1, 5, 10
dependent calls, wall clock until the result is ready, several repeats; the
time per op is the slope of time against K (dispatch and launch drop out),
with p10/p90 from a bootstrap over repeats. It prints what it measured and
the ratio, and says so plainly where jax_symm is slower on this machine;
where the two [p10, p90] ranges overlap it calls the difference unresolved,
neither faster nor slower. A fuller sweep: `jax-symm-bench`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# (op, dtype, bytes per rank) measured per platform. On CPU: one small and one
# large size per op from the README's measured range (1 KiB to 1 MiB per rank);
# at the large one the host sums of reduce-scatter and all-reduce were slower
# than XLA:CPU's when this was written, and the demo shows it if they still are.
CASES = {
    "cpu": [("all_gather", "float32", 4 << 10), ("all_gather", "float32", 256 << 10),
            ("reduce_scatter", "float32", 4 << 10), ("reduce_scatter", "float32", 256 << 10),
            ("all_reduce", "float32", 4 << 10), ("all_reduce", "float32", 256 << 10)],
    "gpu": [("all_gather", "bfloat16", 64 << 10), ("all_gather", "bfloat16", 1 << 20),
            ("reduce_scatter", "bfloat16", 64 << 10), ("all_reduce", "bfloat16", 64 << 10)],
}


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jax-symm-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=8,
                   help="virtual CPU devices when no GPU is present (default 8)")
    p.add_argument("--k", type=int, default=10, help="longest chain of calls (default 10)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (default 7)")
    return p.parse_args(argv)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def _fmt_ratio(ratio: float) -> str:
    """Two decimals, rounded down, so the printed figure stays on the same side
    of 1 as the verdict (0.996 rounded to nearest would print "1.00x, SLOWER")."""
    return f"{math.floor(ratio * 100) / 100:.2f}"


def main(argv: list[str] | None = None) -> None:
    args = _parse(sys.argv[1:] if argv is None else argv)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"

    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jax_symm
    from jax_symm.bench.ops import OPS, tolerance
    from jax_symm.bench.timing import chain_fn, chain_lengths, estimate, time_chains

    start = time.perf_counter()
    devices = jax.devices()
    n = len(devices)
    backend = jax.default_backend()
    print(f"jax_symm {jax_symm.__version__}, jax {jax.__version__}: {n} {backend} device(s) "
          f"({devices[0].device_kind}), {os.cpu_count()} host cores")
    if n == 1:
        print("one device: a collective over one device moves no data (XLA drops lax's, "
              "jax_symm emits no call), so there is nothing to compare. Run on several "
              "devices, e.g. without GPUs: jax-symm-demo --devices 8")
        print("ok")
        return
    ks = chain_lengths(args.k)
    print(f"method: one jitted shard_map program per chain of K = {', '.join(map(str, ks))} "
          "dependent calls; wall clock until the result is ready")
    print(f"estimator: time per op = least-squares slope of time vs K (dispatch and launch "
          f"drop out), [p10, p90] by bootstrap over {args.repeats} repeats; "
          "a speedup > 1 means jax_symm is faster")
    mesh = Mesh(np.array(devices), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    rng = np.random.default_rng(0)
    all_ok, slower, faster, unresolved = True, [], [], []
    for op_name, dtype, nbytes in CASES.get(backend, CASES["gpu"]):
        op = OPS[op_name]
        elems = nbytes // jnp.dtype(dtype).itemsize
        data = rng.standard_normal(n * op.in_elems(elems, n)).astype(np.float32)
        x = jax.device_put(jnp.asarray(data, dtype), sharding)
        what = f"{op_name:14s} {dtype:8s} {_fmt_bytes(nbytes):>7s}/rank x {n} devices"
        results, ests = {}, {}
        for name, fn in (("jax_symm", op.symm), ("lax", op.lax)):
            fns = {k: chain_fn(fn, op.feedback, k, mesh, "x", n) for k in ks}
            results[name] = np.asarray(fns[1](x).astype(jnp.float32))
            ests[name] = estimate(*time_chains(fns, x, args.repeats, warmup=1))
        err = float(np.max(np.abs(results["jax_symm"] - results["lax"])))
        limit = 0.0 if op.exact else tolerance(dtype, n) * float(np.max(np.abs(results["lax"])))
        ok = math.isfinite(err) and err <= limit
        all_ok &= ok
        check = f"check vs lax: max|diff| {err:.3g} (limit {limit:.3g}) {'ok' if ok else 'FAILED'}"
        s, l = ests["jax_symm"], ests["lax"]
        if not (s.resolved and l.resolved):
            unresolved.append(what)
            verdict = "not resolvable above timing noise on this machine (no ratio)"
            times = "  ".join(f"{k} {e.time_us:.1f} us" if e.resolved else f"{k} -"
                              for k, e in ests.items())
        else:
            ratio = l.time_us / s.time_us
            times = (f"jax_symm {s.time_us:7.1f} us [{s.p10_us:.1f}, {s.p90_us:.1f}]  "
                     f"lax {l.time_us:7.1f} us [{l.p10_us:.1f}, {l.p90_us:.1f}]")
            # A verdict only where the measurement tells the two apart: their
            # [p10, p90] ranges do not overlap. Otherwise the ratio is noise's.
            if s.p90_us < l.p10_us:
                faster.append(what)
                verdict = f"speedup {_fmt_ratio(ratio)}x: jax_symm is faster"
            elif l.p90_us < s.p10_us:
                slower.append(what)
                verdict = f"speedup {_fmt_ratio(ratio)}x: jax_symm is SLOWER than lax here"
            else:
                unresolved.append(what)
                verdict = (f"speedup {_fmt_ratio(ratio)}x: difference not resolved (the "
                           "[p10, p90] ranges overlap: a tie within this measurement's noise)")
        print(f"{what}  {times}  {verdict};  {check}", flush=True)
    print(f"summary: jax_symm faster in {len(faster)}, slower in {len(slower)}, "
          f"unresolved in {len(unresolved)} of {len(faster) + len(slower) + len(unresolved)} "
          f"cases on this machine ({time.perf_counter() - start:.0f} s)")
    if slower:
        print("where jax_symm is slower:", "; ".join(" ".join(w.split()) for w in slower))
    if not all_ok:
        print("FAILED: jax_symm's results differ from lax's")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
