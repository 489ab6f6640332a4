"""Device time of the timed chains, from JAX's profiler (GPU), beside wall clock.

nccl-tests reports time on the device (CUDA events around its calls). A jitted
JAX program cannot take CUDA events on XLA's stream, but JAX's own profiler
(``jax.profiler.trace``, CUPTI on GPU; no extra package) records every kernel
and copy with device timestamps on the host's clock. Each run of a chain is
wrapped in a ``TraceAnnotation`` on the host; the run's device span is the
time from its first device event's start to its last one's end among the
device events that fall inside that annotation. The per-op device time is the
slope of span against K (timing.estimate), as for wall clock: launch latency
and host dispatch are left out, gaps between kernels on the device are in.

Optional: where the profiler is unavailable or records no device events (CPU,
a CUPTI that is busy or missing), the figure is left empty with a note.
"""

from __future__ import annotations

import glob
import math
import os
import tempfile
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

PREFIX = "jax_symm_bench_run:"  # annotation names: PREFIX + "<repeat>:<k>"
DEVICE_PLANE_PREFIX = "/device:"


def run_name(repeat: int, k: int) -> str:
    return f"{PREFIX}{repeat}:{k}"


def device_spans(windows: Iterable[tuple[str, float, float]],
                 events: Iterable[tuple[float, float]]) -> dict[str, float]:
    """name -> device span (ns) of the events whose midpoint lies in the window.

    `windows`: (name, start_ns, end_ns) of host annotations; `events`:
    (start_ns, end_ns) of device events, on the same clock. A window without
    device events is left out. Midpoints, not whole intervals, tolerate the
    small skew between host and device timestamps.
    """
    ev = np.asarray(sorted(events), dtype=np.float64).reshape(-1, 2)
    mids = (ev[:, 0] + ev[:, 1]) / 2 if ev.size else np.empty(0)
    out = {}
    for name, start, end in windows:
        inside = ev[(mids >= start) & (mids <= end)] if ev.size else ev
        if inside.size:
            out[name] = float(inside[:, 1].max() - inside[:, 0].min())
    return out


def spans_matrix(spans: Mapping[str, float], repeats: int,
                 ks: Sequence[int]) -> np.ndarray | None:
    """seconds[repeat][j] from `spans` (ns by run_name), or None if any run lacks one."""
    out = np.empty((repeats, len(ks)))
    for r in range(repeats):
        for j, k in enumerate(ks):
            ns = spans.get(run_name(r, k))
            if ns is None or not math.isfinite(ns):
                return None
            out[r, j] = ns * 1e-9
    return out


def _read_profile(log_dir: str):
    """(annotation windows, device events) from the trace under `log_dir`."""
    import jax

    paths = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError("the profiler wrote no .xplane.pb")
    windows, events = [], []
    for path in paths:  # one per host; normally one
        data = jax.profiler.ProfileData.from_file(path)
        for plane in data.planes:
            device = plane.name.startswith(DEVICE_PLANE_PREFIX)
            for line in plane.lines:
                for e in line.events:
                    if device:
                        events.append((e.start_ns, e.start_ns + e.duration_ns))
                    elif e.name.startswith(PREFIX):
                        windows.append((e.name, e.start_ns, e.start_ns + e.duration_ns))
    return windows, events


def measure(fns: Mapping[int, Callable], x, repeats: int) -> tuple[np.ndarray | None, str]:
    """(device seconds[repeat][j] for ks = sorted(fns), or None; a note when None)."""
    import jax

    ks = sorted(fns)
    try:
        with tempfile.TemporaryDirectory(prefix="jax_symm_bench_prof_") as log_dir:
            with jax.profiler.trace(log_dir):
                for r in range(repeats):
                    for k in ks:
                        with jax.profiler.TraceAnnotation(run_name(r, k)):
                            fns[k](x).block_until_ready()
            windows, events = _read_profile(log_dir)
    except Exception as e:  # optional figure: say why it is missing
        return None, f"device time: profiler failed ({type(e).__name__}: {e})"[:300]
    if not events:
        return None, "device time: the profiler recorded no device events"
    mat = spans_matrix(device_spans(windows, events), repeats, ks)
    if mat is None:
        return None, "device time: some runs had no device events"
    return mat, ""
