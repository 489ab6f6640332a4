"""`info()` / `jax-symm-info` read from XLA whether it holds jax_symm's FFI
handlers: a handler XLA refused, or one that never reached
it, is reported as not registered, with a non-zero exit status, instead of a
normal-looking report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import jax_symm
from jax_symm import _child_environment, _kinds

NAMES = sorted(f"jax_symm_host_{op}" for op in _kinds.KINDS)


def test_info_reports_the_cpu_handlers_registered():
    st = jax_symm.info()["ffi_handlers"]["cpu"]
    assert st == {"registered": True, "missing": [], "error": ""}


# Runs `python -m jax_symm.info` after `prelude` replaced jax's registration.
def _info_with(tmp_path, prelude: str):
    code = textwrap.dedent(prelude) + textwrap.dedent("""
        import runpy
        runpy.run_module("jax_symm.info", run_name="__main__")
    """)
    env = dict(os.environ, **_child_environment.changes(os.environ, platform="cpu"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, json.loads(proc.stdout)["ffi_handlers"]["cpu"]


@pytest.mark.timeout(150)
def test_handlers_that_never_reach_xla_are_reported(tmp_path):
    """Registration that raises nothing but leaves XLA without the targets:
    the report reads XLA's registry, so it says which are missing."""
    proc, st = _info_with(tmp_path, """
        import jax.ffi
        jax.ffi.register_ffi_target = lambda *a, **k: None  # drops every target
    """)
    assert proc.returncode == 1, proc.stderr
    assert st["registered"] is False and st["missing"] == NAMES and st["error"] == ""
    assert "does not hold jax_symm's cpu FFI handlers" in proc.stderr
    assert "jax_symm_host_all_gather" in proc.stderr


@pytest.mark.timeout(150)
def test_handlers_xla_refuses_are_reported_with_its_error(tmp_path):
    """A handler refused for its FFI API version: XLA's message is in the report."""
    proc, st = _info_with(tmp_path, """
        import jax.ffi
        from jax._src.lib import xla_client
        real = jax.ffi.register_ffi_target
        def refuse(name, *args, **kwargs):
            if name.startswith("jax_symm"):
                raise xla_client.XlaRuntimeError(
                    f"INVALID_ARGUMENT: XLA FFI handler registration for {name} failed "
                    "because the handler's API version (0.5) is incompatible with the "
                    "framework's API version (0.4).")
            return real(name, *args, **kwargs)
        jax.ffi.register_ffi_target = refuse
    """)
    assert proc.returncode == 1, proc.stderr
    assert st["registered"] is False and st["missing"] == NAMES
    assert "API version (0.5) is incompatible" in st["error"]
    assert "API version (0.5) is incompatible" in proc.stderr
