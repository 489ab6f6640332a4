"""Environment facts: versions, devices, flags in force, date."""

from __future__ import annotations

import datetime
import importlib.metadata as md
import os
import platform
import socket
import sys

_ENV_PREFIXES = ("XLA_", "JAX_", "NCCL_", "TF_CPP")


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def host_facts() -> dict:
    """What the parent knows without starting a JAX backend."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "numpy": _version("numpy"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def process_facts(devices) -> dict:
    """What a worker sees: its backend, devices, NCCL, flags and env."""
    import jax
    import jaxlib
    import jax_symm

    info = jax_symm.info()
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jax_symm": info.get("jax_symm"),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "world": len(devices),
        "nccl": info.get("nccl"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(_ENV_PREFIXES) and k != "XLA_FLAGS"},
    }


def summary_lines(host: dict, proc: dict | None) -> list[str]:
    lines = [f"date {host['date']}  host {host['host']}  python {host['python']}  "
             f"cpus {host['cpus']}",
             f"jax {host['jax']}  jaxlib {host['jaxlib']}  numpy {host['numpy']}"]
    if proc:
        nccl = proc.get("nccl") or {}
        nccl_s = (f"NCCL {nccl.get('version')} (symmetric windows: "
                  f"{nccl.get('symmetric_windows')}; path {nccl.get('nccl_path')})"
                  if nccl.get("version")
                  else ("NCCL: " + str(nccl.get("error")) if nccl else "NCCL: n/a (CPU)"))
        lines.append(f"backend {proc['backend']}: {proc['world']} x {proc['device_kind']}  "
                     f"jax_symm {proc['jax_symm']}  {nccl_s}")
        lines.append(f"devices {', '.join(proc['devices'])}")
        lines.append(f"XLA_FLAGS (default-flags worker) {proc['XLA_FLAGS'].strip()!r}")
    else:
        lines.append(f"XLA_FLAGS {host['XLA_FLAGS'].strip()!r}")
    return lines
