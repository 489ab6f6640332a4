"""Whether XLA holds jax_symm's FFI handlers, read from XLA, not assumed.

A handler XLA refuses (say, one compiled against a newer FFI API than the
running jaxlib's) leaves jax_symm importable while every call of it fails
or falls back; `info()` must say so instead of reporting a normal state.
"""

from __future__ import annotations

from typing import Any

import jax


def _register(platform: str) -> tuple[list[str], str]:
    """(the FFI target names jax_symm registers for `platform`, the error
    that registering them raised, or "")."""
    from .._native import ext

    if platform == "cpu":
        names = [name for name, _ in ext.host_targets().values()]
        from .. import _host
        register = _host.targets
    else:
        names = [name for name, _ in ext.nccl_targets().values()]
        from .. import _nccl
        register = _nccl.load
    try:
        jax.devices(platform)  # the backend must exist for XLA to take (or refuse) them
        register()
    except Exception as e:  # noqa: BLE001 (the report carries it)
        return names, f"{type(e).__name__}: {e}"
    return names, ""


def status(platform: str) -> dict[str, Any]:
    """{"registered": every target is in XLA's registry (None: this jaxlib
    cannot list it), "missing": the names it lacks, "error": what
    registering raised ("" if nothing)}."""
    from .. import _compat

    names, error = _register(platform)
    held = _compat.registered_ffi_targets(platform)
    if held is None:
        return {"registered": None if not error else False, "missing": [],
                "error": error or "this jaxlib cannot list XLA's custom-call targets"}
    missing = sorted(n for n in names if n not in held)
    return {"registered": not missing and not error, "missing": missing, "error": error}


def problem(report: dict[str, Any]) -> str:
    """One line for a person when a platform's handlers are not registered ("" if fine)."""
    lines = []
    for platform, st in report.items():
        if st.get("registered") is False:
            what = f"missing {', '.join(st['missing'])}" if st["missing"] else "refused"
            lines.append(f"jax_symm: XLA does not hold jax_symm's {platform} FFI handlers "
                         f"({what}): every jax_symm call on {platform} would fail. "
                         f"{st['error']}".strip())
    return "\n".join(lines)
