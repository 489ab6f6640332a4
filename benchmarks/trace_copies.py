"""Device-side copies per jax_symm call, counted in a profiler trace.

A chain of gather/scatter pairs (two jax_symm calls per pair), compiled once
and run after a warm-up, is traced with jax.profiler (perfetto JSON). The
memcpy and NCCL kernel activities on the GPU are counted for 2 and for 8 pairs,
so the per-call figure (their difference over the 12 extra calls) leaves out
the copies at the program's edges. The same chain with jax.lax is counted
beside it. This process's NCCL path (JAX_SYMM_NCCL_PATH) serves; run it once
per path. Prints TRACE lines. Used by benchmarks/device_paths.sh (part
`trace`), with JAX_SYMM_SINGLETON_CALLS=1 so that one GPU keeps its calls.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys
import tempfile

import numpy as np
import jax
from jax.sharding import Mesh, PartitionSpec as P

import jax_symm
from jax_symm import _nccl, _nccl_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from _mp_util import captured_chain  # noqa: E402

REPS = 3


def gpu_activities(trace_dir: str) -> collections.Counter:
    """Names of the complete events on the trace's GPU timelines, counted."""
    [path] = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    gpu_pids = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") ==
                "process_name" and "GPU" in str(e.get("args", {}).get("name", ""))}
    return collections.Counter(e["name"] for e in events
                               if e.get("ph") == "X" and e.get("pid") in gpu_pids)


def count(f, x) -> dict:
    f(x).block_until_ready()  # compile, warm up, let XLA capture its graphs
    f(x).block_until_ready()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(REPS):
                f(x).block_until_ready()
        names = gpu_activities(d)
    memcpy = sum(n for k, n in names.items() if "memcpy" in k.lower())
    nccl = sum(n for k, n in names.items() if "nccl" in k.lower())
    return dict(memcpy=memcpy / REPS, nccl=nccl / REPS, names=names)


def main() -> None:
    mesh = Mesh(np.array(jax.devices()), ("x",))
    x = jax.device_put(np.random.default_rng().standard_normal(mesh.size * 4096)
                       .astype(np.float32))
    path = _nccl_path.choice().path
    version = _nccl.version_string(_nccl.load()["version"])
    rows = {}
    for lib in ("jax_symm", "lax"):
        mod = jax_symm if lib == "jax_symm" else jax.lax
        with jax_symm.settings.force_window(True):
            for steps in (2, 8):
                f = captured_chain(mod.all_gather, mod.psum_scatter, mesh, steps=steps)
                rows[lib, steps] = count(f, x)
        print(f"TRACE {lib:8s} path={path} nccl={version} jax={jax.__version__} "
              f"2 pairs: memcpy {rows[lib, 2]['memcpy']:.1f} nccl {rows[lib, 2]['nccl']:.1f}; "
              f"8 pairs: memcpy {rows[lib, 8]['memcpy']:.1f} nccl {rows[lib, 8]['nccl']:.1f}; "
              f"per call: memcpy "
              f"{(rows[lib, 8]['memcpy'] - rows[lib, 2]['memcpy']) / 12:.2f}", flush=True)
    top = rows["jax_symm", 8]["names"].most_common(12)
    print("TRACE jax_symm 8 pairs, GPU activities (per", REPS, "runs):",
          "; ".join(f"{k[:60]} x{n}" for k, n in top), flush=True)


if __name__ == "__main__":
    main()
