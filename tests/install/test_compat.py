"""jax_symm/_compat.py against the installed jax: every private name it uses
exists, version-gated names fail loudly, and its patches are listed."""

import ast
import importlib
import inspect

import pytest
import jax

import jax_symm
from jax_symm import _compat


def _private_uses():
    """(module, attribute) for every `alias.attr` in _compat where alias is a
    jax._src module it imports (at the top or inside a function), and every
    name it imports from a jax._src module."""
    tree = ast.parse(inspect.getsource(_compat))
    modules, uses = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax._src"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                try:
                    modules[alias.asname or alias.name] = importlib.import_module(full)
                except ImportError:  # a name, not a module
                    uses.append((importlib.import_module(node.module), alias.name))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            uses.append((modules[node.value.id], node.attr))
    return uses


def test_every_private_jax_name_exists():
    uses = _private_uses()
    assert len(uses) > 30  # the walk found _compat's uses (it can fail)
    missing = sorted({f"{m.__name__}.{a}" for m, a in uses if not hasattr(m, a)})
    assert not missing, f"jax {jax.__version__} lacks {missing}"


def test_the_walk_sees_a_missing_name(monkeypatch):
    from jax._src.lax import parallel

    monkeypatch.delattr(parallel, "_get_from")
    uses = _private_uses()
    assert any(m is parallel and a == "_get_from" and not hasattr(m, a) for m, a in uses)


def test_version_gated_names_fail_loudly(monkeypatch):
    from jax._src.lax import parallel

    assert _compat.since((99, 0), parallel, "no_such_name") is None
    assert _compat.since((0, 1), parallel, "psum_p") is parallel.psum_p
    with pytest.raises(AttributeError, match="needs updating for this jax"):
        _compat.since((0, 1), parallel, "no_such_name")


def test_patches_are_listed_by_info(mesh):
    import numpy as np
    from jax.sharding import PartitionSpec as P

    with jax_symm.use_symmetric_memory():
        jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "x"), mesh=mesh, in_specs=P("x"),
                              out_specs=P())).lower(np.ones(8, np.float32))
    listed = jax_symm.info()["jax_patches"]
    assert set(listed) == set(_compat.PATCHES) == {"lax_collective_binds",
                                                   "module_function_cache"}
    assert all(p["needed"] and p["applied"] and p["what"] for p in listed.values())
