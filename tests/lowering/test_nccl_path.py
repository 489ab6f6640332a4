"""The NCCL transport's two paths, decided on CPU: which path a process takes
(and why), which of a call's buffers the XLA path puts in XLA's collective
memory and windows, and what its custom call carries, from a program exported
for CUDA (jax.export lowers for a platform it does not run)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import jax_symm
from jax_symm import _compat, _dispatch, _nccl, _nccl_path
from jax_symm._native import ext

FLOORS = ext.nccl_version_floors()
OLD_NCCL, NEW_NCCL = 22809, 23203  # the GPU image's 2.28.9; a fresh install's 2.32.3


def test_floors_are_the_documented_versions():
    assert FLOORS == {"symmetric_windows": 22703, "all_to_all": 22803, "half_window": 22902,
                      "multi_node_symmetric": 22900, "pdl_fixed": 23007,
                      "win_coll_symmetric": 1}


@pytest.mark.parametrize("requested", ["auto", "xla"])
def test_the_xla_path_when_the_extension_has_windows(requested):
    got = _nccl_path.decide(requested, (0, 3), memory_spaces=True)
    assert got.path == "xla" and "0.3" in got.why


@pytest.mark.parametrize("extension,memory_spaces,missing", [
    (None, True, "no FFI collectives extension"),
    ((0, 1), True, "without windows"),
    ((1, 0), True, "without windows"),
    ((0, 3), False, "collective memory"),
])
def test_auto_takes_the_own_path_and_says_why(extension, memory_spaces, missing):
    got = _nccl_path.decide("auto", extension, memory_spaces)
    assert got.path == "own" and missing in got.why
    with pytest.raises(RuntimeError, match=f"JAX_SYMM_NCCL_PATH=xla, but .*{missing}"):
        _nccl_path.decide("xla", extension, memory_spaces)


def test_own_is_taken_when_asked_whatever_jaxlib_offers():
    assert _nccl_path.decide("own", (0, 3), True).path == "own"


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv("JAX_SYMM_NCCL_PATH", "XLA ")
    assert jax_symm.settings.nccl_path() == "xla"
    monkeypatch.setenv("JAX_SYMM_NCCL_PATH", "fast")
    with pytest.raises(ValueError, match="JAX_SYMM_NCCL_PATH='fast' is not one of auto, xla, own"):
        jax_symm.settings.nccl_path()
    monkeypatch.setenv("JAX_SYMM_NCCL_XLA_CAPTURE", "yes")
    with pytest.raises(ValueError, match="must be 0 or 1"):
        jax_symm.settings.nccl_xla_capture()


def test_extension_version_read_from_a_header(tmp_path):
    api = tmp_path / "xla" / "ffi" / "api"
    api.mkdir(parents=True)
    assert _nccl_path.collectives_extension(str(tmp_path)) is None
    (api / "collectives_c_api.h").write_text(
        "#define XLA_FFI_Extension_Collectives_MajorVersion 0\n"
        "#define XLA_FFI_Extension_Collectives_MinorVersion 5\n")
    assert _nccl_path.collectives_extension(str(tmp_path)) == (0, 5)


def test_the_running_jaxlibs_extension_matches_its_release():
    """jaxlib 0.12.1 ships minor 3 (windows), 0.11.2 minor 1, 0.10 none."""
    found = _nccl_path.collectives_extension()
    version = _compat.version_tuple(jax.__version__)
    if version >= (0, 12, 1):
        assert found is not None and found[0] == 0 and found[1] >= _nccl_path.WINDOWS_MINOR
    elif version < (0, 11):
        assert found is None


@pytest.mark.parametrize("kind,old,new", [
    ("all_gather", 3, _nccl_path.WINDOW_RESULT),
    ("reduce_scatter", 3, _nccl_path.WINDOW_OPERAND),
    ("all_reduce", 3, 3),
    ("all_to_all", 3, 3),
])
def test_window_buffers_by_kind_and_nccl(kind, old, new):
    """NCCL 2.28 wants both buffers in windows; from 2.29.2 the all-gather's
    receive and the reduce-scatter's send buffer suffice; all-reduce both; the
    all-to-all (no symmetric kernel) both."""
    assert _nccl_path.window_buffers(kind, OLD_NCCL) == old
    assert _nccl_path.window_buffers(kind, NEW_NCCL) == new
    assert _nccl_path.window_buffers(kind, FLOORS["half_window"]) == new
    assert _nccl_path.window_buffers(kind, FLOORS["half_window"] - 1) == old


def test_pdl_fence_below_2_30_7():
    assert _nccl_path.needs_pdl_fence(OLD_NCCL)
    assert _nccl_path.needs_pdl_fence(FLOORS["pdl_fixed"] - 1)
    assert not _nccl_path.needs_pdl_fence(FLOORS["pdl_fixed"])


def test_the_xla_path_has_no_crossover():
    """It copies nothing, so the cost model serves every size on it; the own
    path keeps the model's crossover; the setting overrides both."""
    assert _dispatch.crossover_bytes("all_gather", 8, copies=False) == _dispatch.NO_CROSSOVER
    assert _dispatch.crossover_bytes("all_gather", 8) == _dispatch.model_crossover_bytes("all_gather", 8)
    with jax_symm.settings.crossover_bytes(4096):
        assert _dispatch.crossover_bytes("all_gather", 8, copies=False) == 4096


# ---- what the XLA path's lowering emits ----

@pytest.fixture
def xla_path(monkeypatch):
    """The XLA path, with NCCL 2.28.9 loaded: answered without a GPU."""
    if _compat.COLLECTIVE_MEMORY_SPACE is None:
        pytest.skip(f"jax {jax.__version__} cannot place custom-call buffers in collective memory")
    monkeypatch.setattr(_nccl, "load", lambda: {"version": OLD_NCCL, "symmetric_windows": True,
                                                "path": ""})
    monkeypatch.setattr(_nccl_path, "choice", lambda: _nccl_path.PathChoice("xla", "test"))

    def no_own_setup(*args):
        raise AssertionError("the XLA path sets up no communicator or arena of its own")

    monkeypatch.setattr(_nccl, "ensure_groups", no_own_setup)
    monkeypatch.setattr(_nccl, "ensure_arenas", no_own_setup)
    _nccl.xla_targets.cache_clear()


def _cuda_text(fn, x) -> str:
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x", None, "y"), out_specs=P(),
                              check_vma=False))
    names = list(_nccl.xla_targets().values())
    checks = [jax.export.DisabledSafetyCheck.custom_call(n) for n in names]
    return jax.export.export(f, platforms=["cuda"], disabled_checks=checks)(x).mlir_module()


def _custom_calls(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.custom_call @jax_symm_nccl" in line]


def test_xla_path_custom_calls(xla_path):
    x = jnp.ones((16, 4, 6), jnp.float32)  # per device (4, 4, 3): 192 bytes

    def fn(v):
        g = jax_symm.all_gather(v, "x", tiled=True)
        s = jax_symm.psum_scatter(v, "x", tiled=True)
        return (g.sum() + s.sum() + jax_symm.psum(v, ("x", "y")).sum()
                + jax_symm.all_to_all(v, "x", 1, 0, tiled=True).sum())

    calls = _custom_calls(_cuda_text(fn, x))
    names = _nccl.xla_targets()
    assert [re.search(r"@(\w+)", c).group(1) for c in calls] == [
        names["all_gather"], names["reduce_scatter"], names["all_reduce"], names["all_to_all"]]
    assert all(n.startswith("jax_symm_nccl_xla_captured_") for n in names.values())  # default
    for call in calls:
        # NCCL 2.28: both buffers in collective memory (space 7) and windows
        assert 'operands_memory_spaces = "{0:7}"' in call, call
        assert 'results_memory_spaces = "{0:7}"' in call, call
        assert "windows = 3 : i64" in call and "pdl_fence = 1 : i64" in call, call
        assert f"communication_id = {_nccl.XLA_COMMUNICATION_ID} : i64" in call, call
        assert "window_flags = 1 : i64" in call and "arena_bytes" not in call, call
    assert "output_operand_aliases" not in calls[0] and "output_operand_aliases" not in calls[1]
    assert "output_operand_aliases" in calls[2]  # the all-reduce's one buffer
    assert "output_operand_aliases" not in calls[3]  # NCCL never runs an all-to-all in place


def test_xla_path_windows_only_what_newer_nccl_needs(xla_path, monkeypatch):
    monkeypatch.setattr(_nccl, "load", lambda: {"version": NEW_NCCL, "symmetric_windows": True,
                                                "path": ""})
    x = jnp.ones((16, 4, 6), jnp.float32)
    calls = _custom_calls(_cuda_text(
        lambda v: jax_symm.all_gather(v, "x").sum() + jax_symm.psum_scatter(v, "x").sum(), x))
    gather, scatter = calls
    assert "results_memory_spaces" in gather and "operands_memory_spaces" not in gather
    assert "operands_memory_spaces" in scatter and "results_memory_spaces" not in scatter
    assert "pdl_fence = 0 : i64" in gather and "windows = 2 : i64" in gather
    assert "windows = 1 : i64" in scatter


def test_groups_over_several_nccl_hosts(xla_path, monkeypatch):
    """Groups over several NCCL hosts have no symmetric memory (from NCCL 2.29
    XLA's window registration fails there): XLA's own collective serves them,
    and when forced, jax_symm's call keeps its buffers out of windows."""
    monkeypatch.setattr(_nccl, "groups_span_nccl_hosts", lambda groups: True)
    x = jnp.ones((16, 4, 6), jnp.float32)
    fn = lambda v: jax_symm.all_gather(v, "x").sum()  # noqa: E731
    assert _custom_calls(_cuda_text(fn, x)) == []
    with jax_symm.settings.force_window(True):
        (call,) = _custom_calls(_cuda_text(fn, x))
    assert "windows = 0 : i64" in call and "memory_spaces" not in call, call


def test_the_option_picks_a_path_per_program(monkeypatch):
    """jax_symm_program_nccl_path names the path of programs lowered under it."""
    monkeypatch.setattr(_nccl_path, "choice", lambda: _nccl_path.PathChoice("own", "test"))
    assert _nccl_path.current().path == "own"
    with jax_symm.settings.program_nccl_path("own"):
        assert _nccl_path.current().path == "own"
    if _nccl_path._decide("auto").path == "xla":
        with jax_symm.settings.program_nccl_path("xla"):
            assert _nccl_path.current().path == "xla"
    else:
        with jax_symm.settings.program_nccl_path("xla"), pytest.raises(RuntimeError):
            _nccl_path.current()


def test_windowed_bytes_count_an_aliased_buffer_once():
    W = _nccl_path.WINDOW_OPERAND | _nccl_path.WINDOW_RESULT
    assert _nccl_path.windowed_bytes("all_gather", W, 100, 4) == 500
    assert _nccl_path.windowed_bytes("all_gather", _nccl_path.WINDOW_RESULT, 100, 4) == 400
    assert _nccl_path.windowed_bytes("reduce_scatter", _nccl_path.WINDOW_OPERAND, 100, 4) == 400
    assert _nccl_path.windowed_bytes("all_reduce", W, 100, 4) == 100
    assert _nccl_path.windowed_bytes("all_gather", 0, 100, 4) == 0


def test_a_fixed_collective_pool_too_small_for_a_call_is_named(monkeypatch):
    monkeypatch.delenv(_nccl_path.COLLECTIVE_MEM_ENV, raising=False)
    assert _nccl_path.collective_memory_reason(1 << 40) is None  # XLA grows its pool
    monkeypatch.setenv(_nccl_path.COLLECTIVE_MEM_ENV, "64")
    assert _nccl_path.collective_memory_reason(64 << 20) is None
    why = _nccl_path.collective_memory_reason((64 << 20) + 1)
    assert "XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB=64" in why and "at least 65" in why


def test_lowering_refuses_a_call_the_fixed_pool_cannot_hold(xla_path, monkeypatch):
    monkeypatch.setenv(_nccl_path.COLLECTIVE_MEM_ENV, "0.0001")  # about 100 bytes
    x = jnp.ones((16, 4, 6), jnp.float32)
    with pytest.raises(ValueError, match="XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB=0.0001"):
        _cuda_text(lambda v: jax_symm.all_gather(v, "x").sum(), x)
