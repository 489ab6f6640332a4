"""One worker process's sweep: fresh inputs, one check per size, timings.

    python -m jax_symm.bench --worker SPEC.json RESULT.json

SPEC names the methods of one group (all run under this process's XLA flags);
RESULT gets {"config", "facts", "records", "cmdbuf"} as JSON.
"""

from __future__ import annotations

import json
import math
import sys
import traceback

import numpy as np

from . import deps, envinfo, hlo, units
from .ops import NCCL_DTYPES, OPS, tolerance
from .timing import chain_fn, time_chain

AXIS = "x"

# Defaults by backend; an option given on the command line wins.
DEFAULTS = {
    "cpu": dict(min_bytes=1 << 10, max_bytes=1 << 20, k=10, repeats=5, warmup=1),
    "gpu": dict(min_bytes=1 << 10, max_bytes=256 << 20, k=20, repeats=20, warmup=3),
}


def resolve(spec: dict, backend: str) -> dict:
    cfg = dict(spec)
    for key, value in DEFAULTS.get(backend, DEFAULTS["cpu"]).items():
        if cfg.get(key) is None:
            cfg[key] = value
    cfg["sizes"] = units.sizes(cfg["min_bytes"], cfg["max_bytes"])
    return cfg


def _record(op, dtype, nbytes, world, method, cfg) -> dict:
    return {"op": op, "dtype": dtype, "bytes_per_rank": nbytes, "world": world,
            "method": method["label"], "impl": method["impl"], "k": cfg["k"],
            "repeats": cfg["repeats"], "time_us": math.nan, "p10_us": math.nan,
            "p90_us": math.nan, "algbw_GBps": math.nan, "busbw_GBps": math.nan,
            "check": "", "status": "", "error": ""}


def _fill_times(rec: dict, st, op, nbytes: int, world: int) -> None:
    if not (st.median_us > 0 and math.isfinite(st.median_us)):
        rec["status"] = "noise"
        rec["error"] = f"median per-op time {st.median_us:.3g} us is not positive: t(K) <= t(1)"
        return
    rec.update(time_us=st.median_us, p10_us=st.p10_us, p90_us=st.p90_us)
    algbw = op.algbw_bytes(nbytes, world) / (st.median_us * 1e-6) / 1e9
    rec.update(algbw_GBps=algbw, busbw_GBps=algbw * op.busbw_factor(world), status="ok")


class Sweep:
    def __init__(self, cfg: dict, devices):
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        self.jax, self.jnp = jax, jnp
        self.cfg = cfg
        self.devices = devices
        self.world = len(devices)
        self.backend = jax.default_backend()
        self.mesh = Mesh(np.array(devices), (AXIS,))
        self.sharding = NamedSharding(self.mesh, P(AXIS))
        self.key = jax.random.key(cfg["seed"])
        self.cmdbuf: dict[str, dict] = {}

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

    def host_check(self, y, x, op, dtype: str) -> tuple[bool, str]:
        expected = op.reference(np.asarray(x).astype(np.float64), self.world)
        got = np.asarray(y).astype(np.float64)
        if got.shape != expected.shape:
            return False, f"shape {got.shape} vs {expected.shape}"
        err = float(np.max(np.abs(got - expected)))
        limit = 0.0 if op.exact else tolerance(dtype, self.world) * float(np.max(np.abs(expected)))
        return (math.isfinite(err) and err <= limit), f"numpy: max|diff|={err:.3g} (limit {limit:.3g})"

    # --- one (op, dtype, size, method) -------------------------------------
    def run_jax(self, rec: dict, method: dict, op, dtype: str, nbytes: int, x, ref_box: dict):
        cfg, world = self.cfg, self.world
        fn = op.symm if method["impl"] == "jax_symm" else op.lax
        f_1 = chain_fn(fn, op.feedback, 1, self.mesh, AXIS, world)
        y = f_1(x)
        y.block_until_ready()
        if method["impl"] == "lax":
            ref_box.setdefault("lax", y)
            out_bytes = y.size * y.dtype.itemsize
            if out_bytes + x.size * x.dtype.itemsize <= cfg["host_check_bytes"]:
                ok, msg = self.host_check(y, x, op, dtype)
            else:
                ok, msg = None, "lax is the reference; too large for the numpy check"
        else:
            if "lax" not in ref_box:
                f_ref = chain_fn(op.lax, op.feedback, 1, self.mesh, AXIS, world)
                ref_box["lax"] = f_ref(x)
            ok, msg = self.compare(y, ref_box["lax"], op, dtype)
        rec["check"] = {True: "pass", False: "FAIL", None: "unchecked"}[ok]
        if ok is False:
            rec["status"], rec["error"] = "check_failed", msg
            return
        rec["error"] = "" if ok else msg
        f_k = chain_fn(fn, op.feedback, cfg["k"], self.mesh, AXIS, world) if cfg["k"] > 1 else f_1
        if self.backend == "gpu" and method["label"] not in self.cmdbuf:
            try:
                text = f_k.lower(x).compile().as_text()
                self.cmdbuf[method["label"]] = hlo.command_buffer_report(text, method["impl"])
            except Exception as e:  # optional report
                self.cmdbuf[method["label"]] = {"error": repr(e)}
        st = time_chain(f_k, f_1, x, cfg["k"], cfg["repeats"], cfg["warmup"])
        _fill_times(rec, st, op, nbytes, world)

    def run_raw(self, rec: dict, op, dtype: str, nbytes: int):
        from jax_symm import _nccl
        from jax_symm._native import ext
        from .timing import stats

        if op.nccl_kind is None or dtype not in NCCL_DTYPES:
            rec["status"], rec["error"] = "skipped", "no raw NCCL timing for this op/dtype"
            return
        if not _nccl.usable():
            rec["status"], rec["error"] = "skipped", "NCCL has no symmetric windows"
            return
        members = [d.id for d in self.devices]
        groups = np.array([members])
        _nccl.ensure_groups(groups)
        _nccl.ensure_arenas(groups, self.world * nbytes)
        us = ext.nccl_time_raw(members, op.nccl_kind, nbytes, NCCL_DTYPES[dtype],
                               self.cfg["k"], self.cfg["repeats"])
        rec["check"] = "n/a"
        rec["error"] = "raw NCCL: timed, not checked (no JAX output)"
        _fill_times(rec, stats([u * 1e-6 for u in us]), op, nbytes, self.world)


def run(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import jax_symm  # noqa: F401  (registers the lowerings)

    all_devices = jax.devices()
    devices = all_devices[: spec["devices"]] if spec.get("devices") else all_devices
    backend = jax.default_backend()
    cfg = resolve(spec, backend)
    sweep = Sweep(cfg, devices)
    world = len(devices)
    methods = cfg["methods"]
    tasks = [(o, d, b) for o in cfg["ops"] for d in cfg["dtypes"] for b in cfg["sizes"]]
    tqdm = deps.require("tqdm").tqdm
    bar = tqdm(total=len(tasks) * len(methods), desc=cfg.get("label", "bench"),
               unit="case", file=sys.stderr, disable=not cfg.get("progress", True),
               dynamic_ncols=True, leave=True)
    records = []
    for index, (op_name, dtype, nbytes) in enumerate(tasks):
        op = OPS[op_name]
        itemsize = jnp.dtype(dtype).itemsize
        n = nbytes // itemsize
        x, ref_box = None, {}
        for method in methods:
            bar.set_postfix_str(f"{op_name} {dtype} {units.format_bytes(nbytes)} {method['label']}")
            rec = _record(op_name, dtype, nbytes, world, method, cfg)
            try:
                if method.get("gpu_only") and backend != "gpu":
                    rec["status"], rec["error"] = "skipped", "GPU only"
                elif n * itemsize != nbytes or n == 0:
                    rec["status"], rec["error"] = "skipped", f"{nbytes} B is not whole {dtype} elements"
                elif method["impl"] == "nccl_raw":
                    sweep.run_raw(rec, op, dtype, nbytes)
                else:
                    if x is None:
                        x = sweep.make_input(index, op.in_elems(n, world), dtype)
                    sweep.run_jax(rec, method, op, dtype, nbytes, x, ref_box)
            except Exception as e:  # recorded; the sweep goes on
                rec["status"] = "error"
                rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                rec.update(time_us=math.nan, p10_us=math.nan, p90_us=math.nan,
                           algbw_GBps=math.nan, busbw_GBps=math.nan)
                if cfg.get("verbose"):
                    traceback.print_exc()
            records.append(rec)
            bar.update()
        del x, ref_box
    bar.close()
    return {"config": cfg, "facts": envinfo.process_facts(devices), "records": records,
            "cmdbuf": sweep.cmdbuf}


def main(spec_path: str, result_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(spec)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1, default=str)
