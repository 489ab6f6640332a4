"""The build serves every admitted jax: pinned to the floor's FFI headers,
and an import that fails at once, saying what to do, where XLA would refuse
the handlers."""

from __future__ import annotations

import os
import re

import pytest

from jax_symm import _compat, _native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_pins_the_floor_jaxlib():
    """pyproject.toml's build pins jaxlib to _compat.MIN_JAX, the floor: the
    headers of any newer jaxlib would make handlers older jaxlibs refuse."""
    text = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    requires = re.search(r"^requires = \[(.*)\]", text, re.M).group(1)
    pins = re.findall(r'"jaxlib==([\d.]+)"', requires)
    assert pins == [".".join(map(str, _compat.MIN_JAX))], requires
    assert '"jax' not in requires.replace('"jaxlib==', ""), requires  # headers only: no jax


def test_build_info_names_headers_and_api():
    info = _native.ext.build_info()
    assert info["ffi_headers"]
    major, minor = info["ffi_api"]
    assert major == 0 and minor >= 1


def test_this_build_is_accepted_by_the_running_jaxlib():
    running = _native.running_ffi_api()
    assert running is not None  # the running jaxlib ships its headers
    assert _native.build_mismatch() is None
    assert tuple(_native.ext.build_info()["ffi_api"]) <= running


def test_a_newer_build_is_refused_at_import_with_what_to_do():
    major, minor = _native.ext.build_info()["ffi_api"]
    if minor == 0:
        pytest.skip("no older FFI API to pretend to run")
    why = _native.build_mismatch(running=(major, minor - 1))
    assert why is not None
    assert _native.ext.build_info()["ffi_headers"] in why
    assert f"FFI API {major}.{minor - 1}" in why and "pip install" in why
    assert _native.build_mismatch(running=(major, minor)) is None
    assert _native.build_mismatch(running=(major, minor + 1)) is None
