"""Did XLA capture the collectives into command buffers? (optimized HLO text)"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")

# How each implementation's collective shows in optimized HLO.
MARKERS = {
    "jax_symm": ("jax_symm_nccl", "jax_symm_host"),
    "lax": ("all-gather", "reduce-scatter", "all-reduce"),
}


def computations(text: str) -> dict[str, str]:
    """name -> body text of every computation in an HLO module's text."""
    out: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            m = _HEADER.match(line)
            name = m.group(1) if m else None
            if name:
                out.setdefault(name, [])
            continue
        if name:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def command_buffer_report(text: str, impl: str) -> dict:
    comps = computations(text)
    markers = MARKERS.get(impl, ())
    cmdbuf = {k: v for k, v in comps.items() if "command_buffer" in k}
    count = lambda body: sum(body.count(mk) for mk in markers)
    inside = sum(count(v) for v in cmdbuf.values())
    total = sum(count(v) for v in comps.values())
    return {"command_buffer_computations": len(cmdbuf),
            "collectives_in_command_buffers": inside,
            "collectives_total": total,
            # Newer XLA may form command buffers from thunks, after HLO: then
            # the HLO shows none and capture is unknown (compare [nocmdbuf]).
            "captured": bool(inside) if cmdbuf else "unknown (no command_buffer computation in optimized HLO)"}
