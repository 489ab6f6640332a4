"""Byte sizes: '1KiB', '256MiB', '4096' -> int, and back."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
          "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_bytes(text: str) -> int:
    """'1KiB' / '1k' / '1024' -> 1024 (binary units throughout)."""
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a byte size: {text!r} (e.g. 1024, 1KiB, 4MiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def sizes(min_bytes: int, max_bytes: int, step: int = 2) -> list[int]:
    """min_bytes, then `step` times the last, up to max_bytes; max_bytes itself
    last where the steps jump over it (a sparse sweep still ends at the
    largest size asked for)."""
    if min_bytes <= 0 or max_bytes < min_bytes:
        raise ValueError(f"need 0 < min-bytes <= max-bytes, got {min_bytes}, {max_bytes}")
    if step < 2:
        raise ValueError(f"need a size step >= 2, got {step}")
    out, n = [], min_bytes
    while n <= max_bytes:
        out.append(n)
        n *= step
    if step > 2 and out[-1] != max_bytes:
        out.append(max_bytes)
    return out
