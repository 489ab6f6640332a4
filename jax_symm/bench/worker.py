"""One worker process's sweep: fresh inputs, one check per size, timings.

    python -m jax_symm.bench --worker SPEC.json RESULT.json     (one process)
    run_distributed(spec)       (each process of a multi-process run, through
                                 jax_symm.testing.run_multiprocess)

SPEC names the methods of one group (all run under this process's XLA flags);
the result is {"config", "facts", "records", "cmdbuf", "skipped"}. In a
multi-process run every process runs the same sweep over the global mesh, in
the same order (lowering is a collective point), and times its own wall
clock; the parent reports process 0's records.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback

import numpy as np

from . import deps, devtime, envinfo, hlo, units
from .methods import form as method_form
from .ops import DTYPES, OPS, tolerance
from .timing import chain_fn, chain_lengths, estimate, time_side_by_side

AXIS = "x"

# Defaults by backend (the full sweep, --full); an option given on the
# command line wins.
DEFAULTS = {
    "cpu": dict(min_bytes=1 << 10, max_bytes=1 << 20, k=10, repeats=5, warmup=1,
                size_step=2, dtypes=list(DTYPES)),
    "gpu": dict(min_bytes=1 << 10, max_bytes=256 << 20, k=20, repeats=20, warmup=3,
                size_step=2, dtypes=list(DTYPES)),
}
# Without --full, what differs: a sweep that answers within about a minute on
# a loaded 2-core machine (the full one took 6 minutes there, 264 cases): one
# dtype and every 16th power of two, from small (latency) to the largest size
# (bandwidth) the full sweep has; 36 cases on CPU, with more repeats than the
# full sweep's (steadier ratios; the sweep took 23-34 s at load 3-4).
QUICK = {
    "cpu": dict(min_bytes=4 << 10, size_step=16, dtypes=["float32"], repeats=9),
    "gpu": dict(min_bytes=4 << 10, size_step=16, dtypes=["float32"]),
}
# Device time (profiler) where the backend has device timestamps.
DEVICE_TIME_BACKENDS = ("gpu",)
DEVICE_TIME_REPEATS = 5


def resolve(spec: dict, backend: str) -> dict:
    cfg = dict(spec)
    defaults = dict(DEFAULTS.get(backend, DEFAULTS["cpu"]))
    if not cfg.get("full"):
        defaults.update(QUICK.get(backend, QUICK["cpu"]))
    for key, value in defaults.items():
        if cfg.get(key) is None:
            cfg[key] = value
    cfg["sizes"] = units.sizes(cfg["min_bytes"], cfg["max_bytes"], cfg["size_step"])
    return cfg


def _record(op, dtype, nbytes, world, method, cfg, processes: int = 1) -> dict:
    return {"op": op, "dtype": dtype, "bytes_per_rank": nbytes, "world": world,
            "processes": processes, "devices_per_process": world // max(processes, 1),
            "method": method["label"], "impl": method["impl"], "k": cfg["k"],
            "repeats": cfg["repeats"], "time_us": math.nan, "p10_us": math.nan,
            "p90_us": math.nan, "algbw_GBps": math.nan, "busbw_GBps": math.nan,
            "device_us": math.nan, "device_p10_us": math.nan, "device_p90_us": math.nan,
            "check": "", "status": "", "error": ""}


def _note(rec: dict, text: str) -> None:
    rec["error"] = f"{rec['error']}; {text}" if rec["error"] else text


def _fill_times(rec: dict, est, op, nbytes: int, world: int) -> None:
    if not est.resolved:
        rec["status"] = "below_resolution"
        _note(rec, est.note)
        return
    rec.update(time_us=est.time_us, p10_us=est.p10_us, p90_us=est.p90_us)
    algbw = op.algbw_bytes(nbytes, world) / (est.time_us * 1e-6) / 1e9
    rec.update(algbw_GBps=algbw, busbw_GBps=algbw * op.busbw_factor(world), status="ok")
    if est.note:
        _note(rec, est.note)


def _fill_device(rec: dict, est) -> None:
    if est.resolved:
        rec.update(device_us=est.time_us, device_p10_us=est.p10_us, device_p90_us=est.p90_us)
    else:
        _note(rec, "device " + est.note)


class Progress:
    """tqdm on a terminal; in a redirected log one short line per (op, dtype) and
    at most every 30 s, instead of tqdm's carriage returns on one endless line."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.done = total, label, 0
        self.enabled = enabled and total > 0
        self.tty = self.enabled and sys.stderr.isatty()
        self.bar = None
        self.start = self.last = time.monotonic()
        self.panel = None
        if self.tty:
            tqdm = deps.require("tqdm").tqdm
            self.bar = tqdm(total=total, desc=label, unit="case", file=sys.stderr,
                            dynamic_ncols=True, leave=True)

    def step(self, what: str, panel) -> None:
        """Called before each case."""
        if self.bar is not None:
            self.bar.set_postfix_str(what)
        elif self.enabled:
            now = time.monotonic()
            if panel != self.panel or now - self.last >= 30:
                print(f"[{self.label}] {self.done}/{self.total} cases  {what}  "
                      f"({now - self.start:.0f} s)", file=sys.stderr, flush=True)
                self.panel, self.last = panel, now

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(f"[{self.label}] {self.done}/{self.total} cases done "
                  f"({time.monotonic() - self.start:.0f} s)", file=sys.stderr, flush=True)


class Sweep:
    def __init__(self, cfg: dict, devices):
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        self.jax, self.jnp = jax, jnp
        self.cfg = cfg
        self.devices = devices
        self.world = len(devices)
        self.processes = jax.process_count()
        self.backend = jax.default_backend()
        self.mesh = Mesh(np.array(devices), (AXIS,))
        self.sharding = NamedSharding(self.mesh, P(AXIS))
        self.key = jax.random.key(cfg["seed"])
        self.cmdbuf: dict[str, dict] = {}
        self.device_notes: set[str] = set()

        def diff(a, b):
            a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
            return jnp.max(jnp.abs(a32 - b32)), jnp.max(jnp.abs(b32))
        self._diff = jax.jit(diff)

    # --- inputs and checks -------------------------------------------------
    def make_input(self, index: int, elems: int, dtype: str):
        jax, jnp = self.jax, self.jnp
        key = jax.random.fold_in(self.key, index)
        shape = (elems * self.world,)
        make = jax.jit(lambda k: jax.random.normal(k, shape, jnp.dtype(dtype)),
                       out_shardings=self.sharding)
        return make(key)

    def compare(self, y, ref, op, dtype: str) -> tuple[bool, str]:
        if y.shape != ref.shape or y.dtype != ref.dtype:
            return False, f"shape/dtype {y.shape}/{y.dtype} vs {ref.shape}/{ref.dtype}"
        err, scale = (float(v) for v in self._diff(y, ref))
        limit = 0.0 if op.exact else tolerance(dtype, self.world) * scale
        ok = math.isfinite(err) and err <= limit and math.isfinite(scale) and scale > 0
        return ok, f"max|diff|={err:.3g} (limit {limit:.3g})"

    def _to_host(self, a) -> np.ndarray:
        if self.processes > 1:  # a global array: every process gets all of it
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    def host_check(self, y, x, op, dtype: str) -> tuple[bool, str]:
        expected = op.reference(self._to_host(x).astype(np.float64), self.world)
        got = self._to_host(y).astype(np.float64)
        if got.shape != expected.shape:
            return False, f"shape {got.shape} vs {expected.shape}"
        err = float(np.max(np.abs(got - expected)))
        limit = 0.0 if op.exact else tolerance(dtype, self.world) * float(np.max(np.abs(expected)))
        return (math.isfinite(err) and err <= limit), f"numpy: max|diff|={err:.3g} (limit {limit:.3g})"

    # --- one (op, dtype, size, method) -------------------------------------
    def prepare_jax(self, rec: dict, method: dict, op, dtype: str, x, ref_box: dict):
        """Checks the method's result once and returns its chains (chain
        length -> jitted fn) to be timed, or None when the check failed."""
        cfg, world = self.cfg, self.world
        fn = op.symm if method["impl"] == "jax_symm" else op.lax
        form = method_form(method["label"])
        f_1 = chain_fn(fn, op.feedback, 1, self.mesh, AXIS, world, form)
        y = f_1(x)
        y.block_until_ready()
        if method["impl"] == "lax":
            ref_box.setdefault("lax", y)
            out_bytes = y.size * y.dtype.itemsize
            if out_bytes + x.size * x.dtype.itemsize <= cfg["host_check_bytes"]:
                ok, msg = self.host_check(y, x, op, dtype)
            else:
                ok, msg = None, "lax is the reference; too large for the numpy check"
        elif y.size * y.dtype.itemsize + x.size * x.dtype.itemsize <= cfg["host_check_bytes"]:
            # Small enough: every method against numpy, so that a wrong lax
            # result cannot make a right one look wrong (or the reverse).
            ok, msg = self.host_check(y, x, op, dtype)
        else:
            if "lax" not in ref_box:
                f_ref = chain_fn(op.lax, op.feedback, 1, self.mesh, AXIS, world)
                ref_box["lax"] = f_ref(x)
            ok, msg = self.compare(y, ref_box["lax"], op, dtype)
        rec["check"] = {True: "pass", False: "FAIL", None: "unchecked"}[ok]
        if ok is False:
            rec["status"], rec["error"] = "check_failed", msg
            return None
        rec["error"] = "" if ok else msg
        fns = {k: f_1 if k == 1 else chain_fn(fn, op.feedback, k, self.mesh, AXIS, world, form)
               for k in chain_lengths(cfg["k"])}
        f_k = fns[max(fns)]
        if self.backend == "gpu" and method["label"] not in self.cmdbuf:
            try:
                text = f_k.lower(x).compile().as_text()
                self.cmdbuf[method["label"]] = hlo.command_buffer_report(text, method["impl"])
            except Exception as e:  # optional report
                self.cmdbuf[method["label"]] = {"error": repr(e)}
        return fns

    def time_jax(self, prepared: dict, op, nbytes: int, x) -> None:
        """Times the prepared methods of one case side by side and fills in
        their records. `prepared`: label -> (record, chains)."""
        cfg = self.cfg
        ks, seconds = time_side_by_side({label: fns for label, (_, fns) in prepared.items()},
                                        x, cfg["repeats"], cfg["warmup"])
        for label, (rec, fns) in prepared.items():
            _fill_times(rec, estimate(ks, seconds[label], seed=cfg["seed"]), op, nbytes,
                        self.world)
            if cfg.get("device_time"):  # None (auto) was resolved in run()
                # A separate pass: the profiler's own overhead stays out of the wall figures.
                # Device spans vary far less than wall clock: a few repeats are enough,
                # and each repeat costs profiler time.
                dev, why = devtime.measure(fns, x, min(cfg["repeats"], DEVICE_TIME_REPEATS))
                if dev is None:
                    _note(rec, why)
                    self.device_notes.add(why)
                else:
                    _fill_device(rec, estimate(ks, dev, seed=cfg["seed"]))

    def run_raw(self, rec: dict, op, dtype: str, nbytes: int):
        from jax_symm import diagnostics

        ok, why = diagnostics.nccl_available()
        if not op.raw_nccl or not ok:
            rec["status"] = "skipped"
            rec["error"] = why or "no raw NCCL timing for this op"
            return
        us = diagnostics.nccl_raw_time(self.devices, op.name, nbytes, dtype,
                                       iters=self.cfg["k"], repeats=self.cfg["repeats"])
        rec["check"] = "n/a"
        rec["error"] = "raw NCCL: timed with CUDA events, not checked (no JAX output)"
        # CUDA events are device time already; the per-repeat figures are per call.
        per_call = np.asarray(us, dtype=np.float64)[:, None] * 1e-6
        est = estimate([1], per_call)
        est.note = ""
        _fill_times(rec, est, op, nbytes, self.world)
        if est.resolved:
            rec.update(device_us=est.time_us, device_p10_us=est.p10_us,
                       device_p90_us=est.p90_us)


def run(spec: dict) -> dict:
    """This process's sweep (all processes of a multi-process run call it alike)."""
    import jax
    import jax.numpy as jnp
    import jax_symm  # noqa: F401  (registers the lowerings)

    all_devices = jax.devices()
    devices = all_devices[: spec["devices"]] if spec.get("devices") else all_devices
    backend = jax.default_backend()
    cfg = resolve(spec, backend)
    if cfg.get("device_time") is None:
        cfg["device_time"] = backend in DEVICE_TIME_BACKENDS
    sweep = Sweep(cfg, devices)
    world, processes = len(devices), sweep.processes
    # GPU-only methods are not cases here: neither run nor counted.
    methods = [m for m in cfg["methods"] if backend == "gpu" or not m.get("gpu_only")]
    skipped = [m["label"] for m in cfg["methods"] if m not in methods]
    tasks = [(o, d, b) for o in cfg["ops"] for d in cfg["dtypes"] for b in cfg["sizes"]]
    progress = Progress(len(tasks) * len(methods), cfg.get("label", "bench"),
                        cfg.get("progress", True) and jax.process_index() == 0)
    records = []
    for index, (op_name, dtype, nbytes) in enumerate(tasks):
        op = OPS[op_name]
        itemsize = jnp.dtype(dtype).itemsize
        n = nbytes // itemsize
        x, ref_box = None, {}
        # The methods whose results checked out, timed together afterwards:
        # label -> (record, chains).
        prepared: dict = {}

        def failed(rec: dict, e: Exception) -> None:  # recorded; the sweep goes on
            rec["status"] = "error"
            rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            rec.update(time_us=math.nan, p10_us=math.nan, p90_us=math.nan,
                       algbw_GBps=math.nan, busbw_GBps=math.nan)
            if cfg.get("verbose"):
                traceback.print_exc()

        for method in methods:
            progress.step(f"{op_name} {dtype} {units.format_bytes(nbytes)} {method['label']}",
                          (op_name, dtype))
            rec = _record(op_name, dtype, nbytes, world, method, cfg, processes)
            records.append(rec)
            try:
                if n * itemsize != nbytes or n == 0:
                    rec["status"], rec["error"] = "skipped", f"{nbytes} B is not whole {dtype} elements"
                elif method["impl"] == "nccl_raw":
                    sweep.run_raw(rec, op, dtype, nbytes)
                else:
                    if x is None:
                        x = sweep.make_input(index, op.in_elems(n, world), dtype)
                    fns = sweep.prepare_jax(rec, method, op, dtype, x, ref_box)
                    if fns is not None:
                        prepared[method["label"]] = (rec, fns)
            except Exception as e:
                failed(rec, e)
            progress.advance()
        if prepared:
            try:
                sweep.time_jax(prepared, op, nbytes, x)
            except Exception:
                # One method failed while timing: time each alone, so that the
                # others keep their figures and the failure its own record.
                for label, (rec, fns) in prepared.items():
                    try:
                        sweep.time_jax({label: (rec, fns)}, op, nbytes, x)
                    except Exception as e:
                        failed(rec, e)
        del x, ref_box, prepared
    progress.close()
    facts = envinfo.process_facts(devices)
    facts.update(processes=processes, devices_per_process=world // processes,
                 process_index=jax.process_index())
    return {"config": cfg, "facts": facts, "records": records, "cmdbuf": sweep.cmdbuf,
            "skipped": skipped, "device_notes": sorted(sweep.device_notes)}


def run_distributed(spec: dict) -> dict:
    """Entry of each process of a multi-process run (jax.distributed is up)."""
    return run(spec)


def main(spec_path: str, result_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(spec)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
