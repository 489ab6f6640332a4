"""Range checks of every JAX_SYMM_* setting. Nonsense values do harm when
let through: a nan timeout never expires, an inf patience makes calls 32x
slower (and its conversion to a time point is undefined behaviour in C++), a
nan bootstrap timeout raises a bare ValueError. Each must be refused with an
error that names the variable, the value and the range, in Python and where
the value enters C++."""

from __future__ import annotations

import math

import pytest

from jax_symm import settings

# (variable, reader, values refused, (value, what the reader returns) accepted)
_CASES = [
    ("JAX_SYMM_TIMEOUT_S", settings.timeout_s, ["nan", "inf", "-inf", "-1", "0", "x"],
     [("0.001", 0.001), ("300", 300.0)]),
    ("JAX_SYMM_GPU_TIMEOUT_S", settings.gpu_timeout_s, ["nan", "inf", "-1"],
     [("0", 0.0), ("2.5", 2.5)]),
    ("JAX_SYMM_BOOTSTRAP_TIMEOUT_S", settings.bootstrap_timeout_s,
     ["nan", "inf", "-5", "0"], [("120", 120.0)]),
    ("JAX_SYMM_SPINS", settings.spins, ["nan", "inf", "-2", "1.5", "1e12"],
     [("-1", -1), ("0", 0), ("2000", 2000)]),
    ("JAX_SYMM_PATIENCE_US", settings.patience_s, ["nan", "inf", "-1", "1e12"],
     [("0", 0.0), ("250", 250e-6)]),
    ("JAX_SYMM_ARENA_MB", settings.arena_bytes, ["nan", "inf", "-1", "0", "1e300"],
     [("64", 64 << 20), ("0.5", 1 << 19)]),
]


@pytest.mark.parametrize("name,read,bad,good", _CASES, ids=[c[0] for c in _CASES])
def test_each_setting_refuses_nonsense_and_says_what_it_accepts(monkeypatch, name, read,
                                                                bad, good):
    for text in bad:
        monkeypatch.setenv(name, text)
        with pytest.raises(ValueError) as err:
            read()
        message = str(err.value)
        # The variable, the value as given, and the range.
        assert name in message and repr(text) in message, message
        assert "out of range" in message and ("[" in message or "(" in message), message
    for text, want in good:
        monkeypatch.setenv(name, text)
        assert read() == pytest.approx(want), (name, text)
    monkeypatch.delenv(name)
    assert math.isfinite(read())  # the default


def test_crossover_option_refuses_values_below_minus_one():
    from jax_symm import _dispatch

    with settings.crossover_bytes(-2):
        with pytest.raises(ValueError, match=r"jax_symm_crossover_bytes.*-2.*\[-1"):
            _dispatch.crossover_bytes("all_gather", 2)
    with settings.crossover_bytes(4096):
        assert _dispatch.crossover_bytes("all_gather", 2) == 4096


@pytest.mark.parametrize("field,args", [
    ("JAX_SYMM_TIMEOUT_S", dict(timeout_s=math.nan)),
    ("JAX_SYMM_TIMEOUT_S", dict(timeout_s=math.inf)),
    ("JAX_SYMM_TIMEOUT_S", dict(timeout_s=0.0)),
    ("JAX_SYMM_BOOTSTRAP_TIMEOUT_S", dict(open_timeout_s=math.nan)),
    ("JAX_SYMM_PATIENCE_US", dict(patience_s=math.inf)),
    ("JAX_SYMM_PATIENCE_US", dict(patience_s=-1e-3)),
    ("JAX_SYMM_SPINS", dict(spins=-7)),
])
def test_the_native_side_refuses_what_python_would(field, args):
    # C++ must not trust its caller: these reach the time-point arithmetic of
    # every barrier. A refused value leaves the configuration as it was.
    from jax_symm._native import ext

    call = dict(timeout_s=300.0, poll_s=0.05, open_timeout_s=120.0, single_process=True,
                spins=-1, patience_s=5e-3)
    call.update(args)
    with pytest.raises(RuntimeError, match=field):
        ext.set_host_config(**call)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_the_native_stall_bound_refuses_nonsense(value):
    from jax_symm._native import ext

    with pytest.raises(RuntimeError, match="JAX_SYMM_GPU_TIMEOUT_S"):
        ext.nccl_set_stall_timeout(value)


# (variable, reader, values refused, (value, what the reader returns) accepted)
_CHOICES = [
    ("JAX_SYMM_NCCL_PATH", settings.nccl_path, ["XLA2", "1", "none"],
     [("", "auto"), ("XLA", "xla"), ("own", "own")]),
    ("JAX_SYMM_NCCL_ALL_TO_ALL", settings.nccl_all_to_all, ["sendrecv", "1", "alltoall"],
     [("", "auto"), ("send_recv", "send_recv"), (" AUTO ", "auto")]),
    ("JAX_SYMM_NCCL_XLA_CAPTURE", settings.nccl_xla_capture, ["yes", "2", "true"],
     [("", True), ("0", False), ("1", True)]),
]


@pytest.mark.parametrize("name,read,bad,good", _CHOICES, ids=[c[0] for c in _CHOICES])
def test_each_choice_refuses_what_it_does_not_know(monkeypatch, name, read, bad, good):
    for text in bad:
        monkeypatch.setenv(name, text)
        with pytest.raises(ValueError, match=name) as err:
            read()
        assert repr(text.strip().lower()) in str(err.value) or repr(text) in str(err.value)
    for text, want in good:
        monkeypatch.setenv(name, text)
        assert read() == want, (name, text)
