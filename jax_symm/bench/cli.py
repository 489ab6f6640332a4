"""jax-symm-bench (python -m jax_symm.bench): jax_symm vs jax.lax collectives.

Measures all-gather, reduce-scatter, all-reduce and all-to-all (--ops) for per-rank
message sizes from --min-bytes to --max-bytes and dtypes (--dtypes), with each
method. The default sweep is short (float32, every 16th power of two: about a
minute on CPU); --full sweeps every dtype and every power of two:

  jax_symm            jax_symm's custom calls (GPU: NCCL symmetric windows;
                      CPU: shared memory between the devices)
  jax_symm_window     jax_symm forced onto its window path at every size; listed
                      only when the installed jax_symm has a size-based dispatch
                      setting (JAX_SYMM_CROSSOVER_BYTES)
  jax_symm_xla        jax_symm on XLA's communicator and collective memory (no
                      copies; jaxlib >= 0.12.1), window path       GPU only
  jax_symm_own        jax_symm on its own communicators and arenas (a copy
                      in and out per call), window path             GPU only
  lax                 jax.lax collectives, XLA's default flags
  lax_symm            jax.lax with XLA's own NCCL symmetric-buffer path
                      (--xla_gpu_experimental_enable_nccl_symmetric_buffers,
                      --xla_gpu_enable_nccl_user_buffers)            GPU only
  nccl_raw            raw NCCL on jax_symm's symmetric windows, no JAX,
                      CUDA events (jax_symm.diagnostics)          GPU only
  <m>[nocmdbuf]       with --cmdbuf-variants: <m> with XLA command buffers
                      (CUDA graphs) off                              GPU only

Methods needing other XLA flags or settings run in worker processes (flags are
per process), one group at a time, so each has the devices to itself.
--processes N runs each group as N processes x --devices-per-process M through
jax.distributed (jax_symm.testing.run_multiprocess; CPU, gloo for lax), as
multi-process jobs run; process 0's timings are reported.

Timing (jax_symm.bench.timing): jitted programs of K = 1, k/2, k dependent
calls (--k); each repeat runs each once (wall clock until the result is
ready), for every method of a worker group side by side, their order
rotating, so drift slows them alike; the time per op is the least-squares
slope of time against K, so dispatch and launch drop out; p10/p90 from a bootstrap over repeats. A case
whose p10 is not above zero is "below resolution" (no figure). On GPU a
second pass takes the device time the same way from JAX's profiler (kernel
timestamps; --device-time), the "device" columns, as nccl-tests reports it.
Every method's result is checked once per size (not timed) against jax.lax
in the same process; lax itself against numpy while the arrays are small
(--host-check-bytes). A failed check reports no figure. Bandwidths as
nccl-tests: algbw = data / t (all-gather: output size, reduce-scatter: input
size, all-reduce: size), busbw = algbw * (world - 1) / world (x2 for
all-reduce); speedup = t(lax) / t(method).

Subcommands: `jax-symm-bench overhead` (per-call cost at world size 1) and
`jax-symm-bench nccl-log` (runs each op so NCCL's log shows windows and
kernels); see `jax-symm-bench overhead --help`.

Writes to --out: results.csv, table.txt, bench.png, env.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

from .. import _child_environment
from . import deps, envinfo, methods as methods_mod, report, units
from .ops import DTYPES, OPS

_COLLECTIVE_MEM = "XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB"
# Subcommands: name -> module of this package with main(argv).
SUBCOMMANDS = {"overhead": "overhead", "nccl-log": "nccl_log"}


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jax-symm-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=_csv_list, default=list(OPS),
                   help=f"comma-separated ops (default: {','.join(OPS)})")
    p.add_argument("--full", action="store_true",
                   help="the full sweep: every dtype and every power of two from --min-bytes "
                        "to --max-bytes (CPU: 264 cases, about 6 minutes on 2 busy cores). "
                        "Without it: float32 and every 16th power of two from 4KiB (CPU: "
                        "36 cases, about a minute); --dtypes, --min-bytes, --max-bytes, "
                        "--size-step still apply")
    p.add_argument("--dtypes", type=_csv_list, default=None,
                   help=f"comma-separated dtypes (default: float32; with --full: "
                        f"{','.join(DTYPES)})")
    p.add_argument("--size-step", type=int, default=None,
                   help="factor between sizes (default 16; with --full 2); the largest "
                        "size is always measured")
    p.add_argument("--methods", type=_csv_list, default=list(methods_mod.METHODS),
                   help="comma-separated methods (default: all; GPU-only ones are skipped "
                        f"on CPU): {','.join(methods_mod.METHODS)}")
    p.add_argument("--cmdbuf-variants", action="store_true",
                   help="GPU: also run jax_symm, lax, lax_symm with XLA command buffers off "
                        "(--xla_gpu_enable_command_buffer=), as '<method>[nocmdbuf]'")
    p.add_argument("--min-bytes", type=units.parse_bytes, default=None,
                   help="smallest message PER RANK, e.g. 1KiB (default 4KiB; with --full 1KiB)")
    p.add_argument("--max-bytes", type=units.parse_bytes, default=None,
                   help="largest message PER RANK, e.g. 256MiB (default: 256MiB on GPU, "
                        "1MiB on CPU)")
    p.add_argument("--k", type=int, default=None,
                   help="dependent calls per timed program (default: 20 on GPU, 10 on CPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per case (default: 20 on GPU, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs first (default: 3 on GPU, 1 on CPU)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices in the mesh (default: all; on CPU 8 virtual devices are "
                        "created unless XLA_FLAGS sets a count)")
    p.add_argument("--platform", choices=("auto", "cpu", "gpu"), default="auto",
                   help="JAX platform of the workers (default auto: GPU if present)")
    p.add_argument("--processes", type=int, default=1,
                   help="processes per method group, through jax.distributed (default 1: "
                        "one process with all devices)")
    p.add_argument("--devices-per-process", type=int, default=None,
                   help="with --processes > 1: devices per process (default 2 on CPU, "
                        "1 with --platform gpu)")
    p.add_argument("--device-time", choices=("auto", "on", "off"), default="auto",
                   help="device time from JAX's profiler beside wall clock (default auto: "
                        "on GPU; on: also elsewhere, where it finds no device events)")
    p.add_argument("--seed", type=int, default=0, help="random inputs' seed (default 0)")
    p.add_argument("--host-check-bytes", type=units.parse_bytes, default=128 << 20,
                   help="check lax against numpy while input + output (global) fit in "
                        "this (default 128MiB)")
    p.add_argument("--collective-mem-mb", type=int, default=None,
                   help=f"lax_symm: {_COLLECTIVE_MEM} (default: enough for the largest "
                        "size, at least 256, or the environment's value)")
    p.add_argument("--out", default="bench_out", help="output directory (default bench_out/)")
    p.add_argument("--worker-timeout", type=float, default=3600,
                   help="seconds before a worker process is killed (default 3600)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="tracebacks of failed cases")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [o for o in args.ops if o not in OPS]
    if bad:
        p.error(f"unknown op(s) {bad}; known: {list(OPS)}")
    if args.dtypes is not None and not args.dtypes:
        p.error("--dtypes is empty")
    bad = [d for d in args.dtypes or () if d not in DTYPES]
    if bad:
        p.error(f"unknown dtype(s) {bad}; known: {list(DTYPES)}")
    if args.size_step is not None and args.size_step < 2:
        p.error("--size-step must be >= 2")
    for name in ("k", "repeats", "processes", "devices_per_process"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.processes > 1:
        if args.devices is not None:
            p.error("--devices is for one process; use --devices-per-process with --processes")
        if args.platform == "gpu" and not _launcher_has_platform():
            p.error("--processes on GPU needs jax_symm.testing.run_multiprocess(platform=...), "
                    "which this jax_symm lacks; the multi-process bench runs on CPU")
        # CPU: several virtual devices per process; GPU: one GPU per process, as jobs run.
        args.devices_per_process = args.devices_per_process or (1 if args.platform == "gpu" else 2)
    elif args.devices_per_process is not None:
        p.error("--devices-per-process needs --processes > 1")
    return args


def _launcher_has_platform() -> bool:
    import inspect

    from jax_symm.testing import run_multiprocess
    return "platform" in inspect.signature(run_multiprocess).parameters


def _child_env(args, group: list, world: int | None, max_bytes: int | None) -> tuple[dict, dict]:
    """(the worker's environment, what differs from ours)."""
    env = dict(os.environ)
    changes: dict[str, str] = {}
    # Ours only: a device count the user set in XLA_FLAGS is kept (--devices
    # then picks a subset); the launcher of --processes replaces it with its own.
    flags = env.get("XLA_FLAGS", "")
    if not _child_environment.has_device_count(flags):
        flags = _child_environment.with_device_count(flags, args.devices or 8)
    # Ours only: the method group's XLA flags and settings, the reason it has a worker.
    for flag in group[0].xla_flags:
        flags += f" {flag}"
    changes["XLA_FLAGS"] = flags.strip()
    changes.update(dict(group[0].env))
    if group[0].collective_mem:
        need = 256
        if world and max_bytes:
            need = max(need, math.ceil(4 * world * max_bytes / (1 << 20)) + 64)
        mb = args.collective_mem_mb or max(need, int(env.get(_COLLECTIVE_MEM, "0") or 0))
        changes[_COLLECTIVE_MEM] = str(mb)
    # Last: what every child needs wins over a method group's settings.
    platform = None if args.platform == "auto" else args.platform
    changes.update(_child_environment.changes(env, platform=platform))
    env.update(changes)
    return env, changes


def _spec(args, group: list, label: str, cfg: dict | None) -> dict:
    spec = {"ops": args.ops, "dtypes": args.dtypes, "full": args.full,
            "size_step": args.size_step, "min_bytes": args.min_bytes,
            "max_bytes": args.max_bytes, "k": args.k, "repeats": args.repeats,
            "warmup": args.warmup, "devices": args.devices, "seed": args.seed,
            "host_check_bytes": args.host_check_bytes, "label": label,
            "progress": not args.no_progress, "verbose": args.verbose,
            "device_time": {"auto": None, "on": True, "off": False}[args.device_time],
            "methods": [{"label": m.label, "impl": m.impl, "gpu_only": m.gpu_only}
                        for m in group]}
    if cfg:  # later workers: the first worker's resolved settings
        for key in ("min_bytes", "max_bytes", "size_step", "dtypes", "k", "repeats", "warmup"):
            spec[key] = cfg[key]
    return spec


def _run_distributed(args, group, label, cfg, facts, env_changes) -> dict:
    """The group in --processes processes (jax.distributed, the shared launcher)."""
    from jax_symm.testing import MultiProcessError, run_multiprocess

    from . import worker

    spec = _spec(args, group, label, cfg)
    spec["progress"] = False  # workers' output is a log file, not a terminal
    kwargs = {}
    if args.platform == "gpu":  # only when the launcher can (checked in parse)
        kwargs["platform"] = "gpu"
    start = time.perf_counter()
    info = {"label": label, "methods": [m.label for m in group], "env_changes": env_changes}
    try:
        results = run_multiprocess(worker.run_distributed, num_processes=args.processes,
                                   devices_per_process=args.devices_per_process,
                                   args=(spec,), timeout_s=args.worker_timeout,
                                   env=env_changes, **kwargs)
    except MultiProcessError as e:
        info.update(returncode=e.returncodes, wall_s=round(time.perf_counter() - start, 2))
        print(str(e)[-4000:], file=sys.stderr)
        return info
    info.update(returncode=0, wall_s=round(time.perf_counter() - start, 2))
    info.update(results[0])  # process 0 collects: its records are the report's
    info["per_process_time_us"] = [[r["time_us"] for r in res["records"]] for res in results]
    return info


def _run_worker(args, group, label, cfg, facts, tmp) -> dict:
    world = facts["world"] if facts else None
    env, changes = _child_env(args, group, world, cfg["max_bytes"] if cfg else None)
    if args.processes > 1:
        return _run_distributed(args, group, label, cfg, facts, changes)
    spec_path = os.path.join(tmp, f"{label}.spec.json")
    result_path = os.path.join(tmp, f"{label}.result.json")
    with open(spec_path, "w") as f:
        json.dump(_spec(args, group, label, cfg), f)
    cmd = [sys.executable, "-m", "jax_symm.bench", "--worker", spec_path, result_path]
    start = time.perf_counter()
    try:
        # cwd: not the caller's directory, where `python -m` could import an
        # uncompiled source checkout instead of the installed package.
        rc = subprocess.run(cmd, env=env, timeout=args.worker_timeout, cwd=tmp).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    info = {"label": label, "methods": [m.label for m in group], "env_changes": changes,
            "returncode": rc, "wall_s": round(time.perf_counter() - start, 2)}
    if rc == 0 and os.path.exists(result_path):
        with open(result_path) as f:
            info.update(json.load(f))
    return info


def _failed_records(group, cfg, facts, why: str) -> list[dict]:
    from .worker import _record
    out = []
    for op in cfg["ops"]:
        for dtype in cfg["dtypes"]:
            for b in cfg["sizes"]:
                for m in group:
                    r = _record(op, dtype, b, facts["world"],
                                {"label": m.label, "impl": m.impl}, cfg,
                                facts.get("processes", 1))
                    r["status"], r["error"] = "error", why
                    out.append(r)
    return out


def _title(facts: dict, host: dict) -> str:
    """One line: backend, world (and processes), device kind once, jax, date."""
    kind = facts["device_kind"]
    devices = f"{facts['world']} {kind}" if kind.lower() != facts["backend"] else \
        f"{facts['world']} devices"
    procs = facts.get("processes", 1)
    if procs > 1:
        devices += f" ({procs} processes x {facts['devices_per_process']})"
    return (f"jax_symm.bench: {facts['backend'].upper()}, {devices}, jax {facts['jax']}, "
            f"{host['cpus']} host cores, {host['date'][:10]}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib
        importlib.import_module(f".{SUBCOMMANDS[argv[0]]}", __package__).main(argv[1:])
        return
    args = parse(argv)
    if args.worker:
        from . import worker
        worker.main(*args.worker)
        return
    deps.check_all()
    wall = time.perf_counter()
    chosen = methods_mod.select(args.methods, args.cmdbuf_variants)
    groups = methods_mod.groups(chosen)
    default = [m for m in groups[0] if not m.xla_flags and not m.collective_mem]
    later = [g for g in groups if g is not groups[0] or not default]
    out = report.ensure_dir(args.out)
    host = envinfo.host_facts()
    print("jax_symm.bench", " ".join(sys.argv[1:]))
    for line in envinfo.summary_lines(host, None):
        print(line)
    sys.stdout.flush()

    workers, records, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="jax_symm_bench_") as tmp:
        first = _run_worker(args, default, "default", None, None, tmp)
        workers.append(first)
        if "records" not in first:
            raise SystemExit(f"jax_symm.bench: the first worker failed (rc={first['returncode']})")
        cfg, facts = first["config"], first["facts"]
        for line in envinfo.summary_lines(host, facts)[2:]:
            print(line)
        sys.stdout.flush()
        records += first["records"]
        for i, group in enumerate(later):
            labels = [m.label for m in group]
            if facts["backend"] != "gpu" and all(m.gpu_only for m in group):
                notes.append(f"{', '.join(labels)}: GPU only, skipped on {facts['backend']}")
                continue
            label = f"w{i + 1}"
            env_s = " ".join(f"{k}={v}" for k, v in group[0].env)
            print(f"worker {label}: {', '.join(labels)}  flags "
                  f"{' '.join(group[0].xla_flags)} {env_s}".rstrip())
            sys.stdout.flush()
            info = _run_worker(args, group, label, cfg, facts, tmp)
            workers.append(info)
            if "records" in info:
                records += info["records"]
            else:
                why = f"worker {label} failed (rc={info['returncode']})"
                notes.append(why)
                records += _failed_records(group, cfg, facts, why)

    if facts["world"] == 1:
        notes.append("world=1: XLA drops lax collectives over one device (lax figures are "
                     "noise); jax_symm keeps its calls only with JAX_SYMM_SINGLETON_CALLS=1")
    gpu_only_skipped = sorted({m for w in workers for m in w.get("skipped", [])})
    if gpu_only_skipped:
        notes.append(f"{', '.join(gpu_only_skipped)}: GPU only, skipped on {facts['backend']}")
    notes += sorted({n for w in workers for n in w.get("device_notes", [])})
    if facts.get("processes", 1) > 1:
        notes.append(f"{facts['processes']} processes x {facts['devices_per_process']} devices "
                     "(jax.distributed): timings of process 0; every process's in env.json")
    report.add_speedups(records)

    header = envinfo.summary_lines(host, facts)
    for w in workers[1:]:
        header.append(f"worker {w['label']} ({', '.join(w['methods'])}): "
                      f"XLA_FLAGS {w['env_changes'].get('XLA_FLAGS', '')!r}")
    from .timing import chain_lengths
    header.append(f"timing: chains of K={','.join(map(str, chain_lengths(cfg['k'])))} dependent "
                  f"calls, {cfg['repeats']} repeats, {cfg['warmup']} warm-up; per op = "
                  "least-squares slope of time vs K, [p10, p90] by bootstrap over repeats")
    cmdbuf = {label: rep for w in workers for label, rep in (w.get("cmdbuf") or {}).items()}
    for label, rep in cmdbuf.items():
        header.append(f"command buffers ({label}): {rep}")
    text = "\n".join(header + notes + ["", report.tables(records)])

    paths = {name: os.path.join(out, name)
             for name in ("results.csv", "table.txt", "bench.png", "env.json")}
    report.write_csv(records, paths["results.csv"])
    with open(paths["table.txt"], "w") as f:
        f.write(text + "\n")
    title = _title(facts, host)
    report.plot(records, paths["bench.png"], title=title)
    report.write_json({"host": host, "config": cfg, "notes": notes, "command_buffers": cmdbuf,
                       "workers": [{k: v for k, v in w.items() if k != "records"}
                                   for w in workers]}, paths["env.json"])
    print()
    print("\n".join(notes + ["", report.tables(records)]))
    print(f"\nwrote {', '.join(paths.values())}  ({time.perf_counter() - wall:.1f} s)")
    if any(r["status"] in ("check_failed", "error") for r in records):
        sys.exit(1)
