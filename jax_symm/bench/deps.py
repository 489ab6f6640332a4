"""The bench's optional dependencies, imported only when needed."""

from __future__ import annotations

import importlib

_HINT = "pip install 'jax_symm[bench]'  (tqdm, tabulate, matplotlib)"


def require(module: str):
    """Imports `module` or raises an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"jax_symm.bench needs `{module}`: {_HINT}") from e


def check_all() -> None:
    """Fails early (before any sweep) when an optional dependency is missing."""
    missing = []
    for name in ("tqdm", "tabulate", "matplotlib"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"jax_symm.bench needs {', '.join(missing)}: {_HINT}")
