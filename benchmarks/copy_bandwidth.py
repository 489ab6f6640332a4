"""This machine's memory-copy bandwidth, the bound on the CPU transport's large calls.

    python benchmarks/copy_bandwidth.py [--procs 1,2] [--mib 1,4,16]

Each of --procs processes copies --mib MiB arrays round-robin between two
sources and four destinations (a working set of 6 x MiB per process), as a
collective's copies do: in cache while every process's working set fits the
last-level cache, from memory once it does not. Prints the aggregate GB/s
(bytes copied by all processes / the slowest one's time). A CPU collective
that moves B bytes through memcpy takes at least B / that figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np


def _copy(mib: float, repeats: int, start, out) -> None:
    n = int(mib * (1 << 20)) // 8
    srcs = [np.random.rand(n) for _ in range(2)]
    dsts = [np.ones(n) for _ in range(4)]  # touched: no page faults in the timing
    start.wait()
    t = time.perf_counter()
    for i in range(repeats):
        np.copyto(dsts[i % 4], srcs[i % 2])
    out.put(time.perf_counter() - t)


def measure(mib: float, procs: int, repeats: int) -> float:
    """Aggregate copy bandwidth in GB/s of `procs` processes copying `mib` MiB at a time."""
    start, out = mp.Barrier(procs), mp.Queue()
    ps = [mp.Process(target=_copy, args=(mib, repeats, start, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    times = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return procs * repeats * mib * (1 << 20) / max(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2", help="process counts (default 1,2)")
    p.add_argument("--mib", default="1,4,16", help="MiB per copy (default 1,4,16)")
    p.add_argument("--repeats", type=int, default=200, help="copies per process (default 200)")
    args = p.parse_args()
    for mib in (float(m) for m in args.mib.split(",")):
        for procs in (int(n) for n in args.procs.split(",")):
            gbs = measure(mib, procs, args.repeats)
            print(f"{mib:g} MiB copies, {procs} process(es), working set {6 * mib * procs:g} MiB "
                  f"in all: {gbs:.1f} GB/s")


if __name__ == "__main__":
    main()
