"""Results -> terminal table, CSV, PNG plot, environment JSON."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import OrderedDict

from . import deps
from .units import format_bytes

COLUMNS = ["op", "dtype", "bytes_per_rank", "size", "world", "processes",
           "devices_per_process", "method", "impl", "k", "repeats", "time_us", "p10_us",
           "p90_us", "algbw_GBps", "busbw_GBps", "speedup_vs_lax", "device_us",
           "device_p10_us", "device_p90_us", "check", "status", "error"]


def _baseline(method: str, baseline: str) -> str:
    """lax in the same program form as `method` (a scan loop against lax's)."""
    from .methods import form

    return baseline if form(method) == "chain" else f"{baseline}_{form(method)}"


def add_speedups(records: list[dict], baseline: str = "lax") -> None:
    """speedup_vs_lax = t(lax) / t(method), same op, dtype, size and program
    form (chain or scan loop) (>1: faster)."""
    base = {(r["op"], r["dtype"], r["bytes_per_rank"], r["method"]): r["time_us"]
            for r in records if r["status"] == "ok"}
    for r in records:
        key = (r["op"], r["dtype"], r["bytes_per_rank"], _baseline(r["method"], baseline))
        t_lax = base.get(key, math.nan)
        ok = r["status"] == "ok" and math.isfinite(t_lax)
        r["speedup_vs_lax"] = t_lax / r["time_us"] if ok else math.nan
        r["size"] = format_bytes(r["bytes_per_rank"])


def write_csv(records: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def write_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)


def _methods(records):
    return list(OrderedDict.fromkeys(r["method"] for r in records))


def _panels(records):
    return list(OrderedDict.fromkeys((r["op"], r["dtype"]) for r in records))


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r["status"] == "ok":
        sp = r.get("speedup_vs_lax", math.nan)
        sp_s = f" x{sp:.2f}" if math.isfinite(sp) and r["impl"] != "lax" else ""
        flag = "" if r["check"] in ("pass", "n/a") else f" [{r['check']}]"
        dev = r.get("device_us", math.nan)
        dev_s = f" dev {dev:.1f}" if isinstance(dev, float) and math.isfinite(dev) else ""
        return f"{r['time_us']:.1f} ({r['busbw_GBps']:.3g}){sp_s}{dev_s}{flag}"
    return {"check_failed": "CHECK FAILED", "error": "ERROR", "below_resolution": "<res",
            "skipped": "-"}.get(r["status"], r["status"])


def tables(records: list[dict]) -> str:
    """One table per (op, dtype): rows = sizes, one column per method."""
    tabulate = deps.require("tabulate").tabulate
    methods = _methods(records)
    by = {(r["op"], r["dtype"], r["bytes_per_rank"], r["method"]): r for r in records}
    out = []
    for op, dtype in _panels(records):
        sizes = sorted({r["bytes_per_rank"] for r in records if (r["op"], r["dtype"]) == (op, dtype)})
        rows = [[format_bytes(b)] + [_cell(by.get((op, dtype, b, m))) for m in methods]
                for b in sizes]
        first = next(r for r in records if (r["op"], r["dtype"]) == (op, dtype))
        out.append(f"{op}  {dtype}  world={first['world']} ({first.get('processes', 1)} "
                   f"process(es) x {first.get('devices_per_process', first['world'])})   "
                   f"cell: us per op (busbw GB/s) x speedup vs lax in the same form [dev: device us]; "
                   f"<res: below resolution")
        out.append(tabulate(rows, headers=["size/rank"] + methods, tablefmt="github",
                            disable_numparse=True))
        out.append("")
    unresolved = [r for r in records if r["status"] == "below_resolution"]
    if unresolved:
        out.append("BELOW RESOLUTION (the op's cost did not stand out of the timing noise):")
        for r in unresolved:
            out.append(f"  {r['op']} {r['dtype']} {format_bytes(r['bytes_per_rank'])} "
                       f"{r['method']}: {r['error']}")
    problems = [r for r in records if r["status"] in ("check_failed", "error")]
    if problems:
        out.append("PROBLEMS (no figure reported for these):")
        for r in problems:
            out.append(f"  {r['op']} {r['dtype']} {format_bytes(r['bytes_per_rank'])} "
                       f"{r['method']}: {r['status']}: {r['error']}")
    return "\n".join(out)


def plot(records: list[dict], path: str, title: str = "") -> None:
    """Latency and bus bandwidth vs size, one line per method, one row per (op, dtype)."""
    deps.require("matplotlib").use("Agg")  # before pyplot: no display needed
    import matplotlib.pyplot as plt

    fig = figure(records, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure(records: list[dict], title: str = ""):
    """The plot's matplotlib figure (see plot)."""
    matplotlib = deps.require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(records)
    methods = _methods(records)
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 3.8 * len(panels)), squeeze=False)
    for row, (op, dtype) in enumerate(panels):
        ax_t, ax_b = axes[row]
        for m in methods:
            rows = sorted((r for r in records
                           if (r["op"], r["dtype"], r["method"]) == (op, dtype, m)
                           and r["status"] == "ok"), key=lambda r: r["bytes_per_rank"])
            if not rows:
                continue
            xs = [r["bytes_per_rank"] for r in rows]
            style = dict(marker="o", markersize=3, label=m,
                         linestyle="--" if "[" in m else "-")
            line, = ax_t.plot(xs, [r["time_us"] for r in rows], **style)
            ax_b.plot(xs, [r["busbw_GBps"] for r in rows], **style)
            dev = [(r["bytes_per_rank"], r.get("device_us", math.nan)) for r in rows]
            dev = [(b, t) for b, t in dev if isinstance(t, float) and math.isfinite(t)]
            if dev and m != "nccl_raw":  # nccl_raw's time is device time already
                ax_t.plot([d[0] for d in dev], [d[1] for d in dev], marker=".", markersize=3,
                          linestyle=":", color=line.get_color(), label=f"{m} (device)")
        for ax, ylabel in ((ax_t, "latency per op (us)"), (ax_b, "bus bandwidth (GB/s)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("bytes per rank")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{op} {dtype}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    if title:
        # Room reserved above the subplots (rect), so the title never overlaps theirs.
        fig.suptitle(title, fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    else:
        fig.tight_layout()
    return fig


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
