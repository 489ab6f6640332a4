"""The build serves every admitted jax (its pin to the floor's FFI headers is
checked in test_first_contact.py), and an import fails at once, saying what
to do, where XLA would refuse the handlers."""

from __future__ import annotations

import pytest

from jax_symm import _native


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
