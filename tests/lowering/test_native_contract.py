"""The contract between the Python slices and the C++ module: kinds and FFI
target names come from C++, and the attributes each slice emits are exactly
what its handler decodes. Runs on CPU: the NCCL handler's attribute decoding
is checked by registering its capsule on the CPU platform, where XLA decodes
everything it can and reports each operand it cannot (the CUDA stream)."""

import dataclasses
import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import mlir

import jax_symm  # noqa: F401  (loads the extension)
from jax_symm import _nccl, _nccl_path
from jax_symm._native import ext


def test_kinds_and_targets_come_from_cpp():
    kinds = ext.collective_kinds()
    assert kinds == ("all_gather", "reduce_scatter", "all_reduce", "all_to_all")
    host, nccl = ext.host_targets(), ext.nccl_targets()
    assert tuple(host) == kinds and tuple(nccl) == kinds
    names = [n for t in (host, nccl) for n, _ in t.values()]
    assert len(set(names)) == len(names)
    assert _nccl.NCCL_TARGETS == {op: n for op, (n, _) in nccl.items()}


def test_arena_rule():
    assert _nccl.arena_bytes_needed("all_gather", 96, 4) == 384
    assert _nccl.arena_bytes_needed("reduce_scatter", 96, 4) == 384
    assert _nccl.arena_bytes_needed("all_reduce", 96, 4) == 96


@pytest.mark.parametrize("version, gather_in_place, scatter_in_place", [
    (22703, False, False),  # 2.27.3: the first with windows; both buffers in them
    (22809, False, False),  # 2.28.9: the device image's
    (22901, False, False),  # 2.29.1: still both buffers in windows
    (22902, False, True),   # 2.29.2: the scatter's receive may leave the window...
    (23006, False, True),   # ...but the gather's send waits for the PDL fix
    (23007, True, True),    # 2.30.7: cudaGridDependencySynchronize is back
    (23203, True, True),    # 2.32.3: what pip brings today
])
def test_nccl_copy_rules_follow_the_pdl_floor(version, gather_in_place, scatter_in_place):
    """The version floors of README "NCCL versions", decided in C++
    (ffi/nccl_versions.h): below 2.30.7 a memcpy always precedes NCCL's
    kernel, so the missing grid-dependency sync cannot bite."""
    rules = ext.nccl_copy_rules(version)
    assert rules == {"gather_sends_in_place": gather_in_place,
                     "scatter_receives_in_place": scatter_in_place}


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the no-NCCL reason")
def test_unusable_reason_without_nccl():
    why = _nccl.unusable_reason("reduce_scatter", np.float32)
    assert why is not None and "\n" not in why
    assert "jax_symm.reduce_scatter" in why and "XLA's own collective" in why


_prim = Primitive("jax_symm_test_nccl_all_gather")
_prim.def_abstract_eval(
    lambda x, *, world: jax.core.ShapedArray((world * x.shape[0],), x.dtype))


def _lower_through_nccl_slice(ctx, x, *, world):
    groups = np.arange(world, dtype=np.int64).reshape(1, world)
    return _nccl.lower("all_gather", ctx, x, groups=groups,
                       chunk_bytes=ctx.avals_in[0].shape[0] * 4)


mlir.register_lowering(_prim, _lower_through_nccl_slice, platform="cpu")


def test_nccl_handler_decodes_what_lower_emits(monkeypatch):
    """`_nccl.lower`'s attributes decode in the NCCL handler: only operand 0
    (the CUDA stream, absent on CPU) fails. An extra attribute makes the
    attributes fail too, so the check can fail."""
    targets = {}
    for op, (name, capsule) in ext.nccl_targets().items():
        targets[op] = "test_cpu_" + name
        jax.ffi.register_ffi_target(targets[op], capsule, platform="cpu")
    monkeypatch.setattr(_nccl, "NCCL_TARGETS", targets)
    monkeypatch.setattr(_nccl_path, "current", lambda: _nccl_path.PathChoice("own", "test"))
    monkeypatch.setattr(_nccl, "ensure_groups", lambda groups: None)
    monkeypatch.setattr(_nccl, "ensure_arenas",
                        lambda groups, nbytes: np.full(groups.shape[0], nbytes, np.int64))
    f = jax.jit(lambda x: _prim.bind(x, world=2))
    on_cpu = jax.device_put(jnp.ones(4, jnp.float32), jax.devices("cpu")[0])
    with pytest.raises(Exception, match=re.escape("bad operands at: 0)")) as err:
        f(on_cpu)
    assert "platform stream" in str(err.value)


_PROBE = """
import numpy as np, jax, jax.numpy as jnp
from jax._src import core
from jax._src.interpreters import mlir
from jax_symm._native import ext

name, capsule = ext.nccl_targets()["all_gather"]
jax.ffi.register_ffi_target("probe_" + name, capsule, platform="cpu")
rule = jax.ffi.ffi_lowering("probe_" + name)

def extra_attr(ctx, x, *, world):
    return rule(ctx, x, groups=np.arange(world, dtype=np.int64), group_size=np.int64(world),
                chunk_bytes=np.int64(16),
                arena_bytes=np.zeros(1, np.int64), site=np.int64(1))

probe = core.Primitive("jax_symm_test_nccl_probe")
probe.def_abstract_eval(lambda x, *, world: core.ShapedArray((world * x.shape[0],), x.dtype))
mlir.register_lowering(probe, extra_attr, platform="cpu")
on_cpu = jax.device_put(jnp.ones(4, jnp.float32), jax.devices("cpu")[0])
try:
    jax.jit(lambda x: probe.bind(x, world=2))(on_cpu).block_until_ready()
    print("ACCEPTED")
except Exception as e:
    print("REFUSED", e)
"""


@pytest.mark.timeout(120)
def test_an_extra_attribute_is_refused(tmp_path):
    """The decoding check above can fail: one attribute more than the handler
    binds is refused. In a subprocess: jaxlib 0.11.2 (seen on the GPU image)
    crashes in XLA's attribute decoding instead of raising, which also counts
    as refused but must not take the test run down with it."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=100, cwd=tmp_path)
    assert "ACCEPTED" not in out.stdout, out.stdout
    assert out.returncode != 0 or "Wrong number of attributes" in out.stdout, (
        out.returncode, out.stdout[-2000:], out.stderr[-2000:])


# ---- the table of kinds (jax_symm/_kinds.py) against C++ ----

from jax_symm import _dispatch, _eligibility, _host, _kinds  # noqa: E402


def test_kind_layouts_come_from_cpp():
    """The handlers check buffers with C++'s layouts; Python sizes windows,
    arenas and copies from its table: the two agree, kind by kind."""
    layouts = {k: tuple(v) for k, v in ext.collective_layouts().items()}
    assert layouts == {"all_gather": ("one", "world"), "reduce_scatter": ("world", "one"),
                       "all_reduce": ("one", "one"), "all_to_all": ("world", "world")}
    assert tuple(_kinds.KINDS) == ext.collective_kinds()
    assert ext.collective_sums() == {k.name: k.sums for k in _kinds.KINDS.values()}
    for name, kind in _kinds.KINDS.items():
        assert (kind.chunks_in, kind.chunks_out) == layouts[name]
        # a sum never outputs world chunks (it shrinks or keeps the data)
        assert not (kind.sums and kind.chunks_out == "world")


def test_a_side_of_world_chunks_names_its_axis():
    """The relayout needs the axis world chunks lie along, on each such side."""
    with pytest.raises(ValueError, match="names its axis"):
        _kinds.Kind("x", _kinds.WORLD, _kinds.WORLD, sums=False, lax_twin="all_to_all",
                    split="split_axis")
    with pytest.raises(ValueError, match="names its axis"):
        _kinds.Kind("x", _kinds.ONE, _kinds.ONE, sums=False, lax_twin="psum", split="d")


@pytest.mark.parametrize("edit", ["layout", "sums", "missing row", "order"])
def test_a_table_that_differs_from_cpp_fails_the_import(monkeypatch, edit):
    kinds = dict(_kinds.KINDS)
    if edit == "layout":
        kinds["all_reduce"] = _kinds.Kind("all_reduce", _kinds.WORLD, _kinds.ONE, sums=True,
                                          lax_twin="psum", split="axes")
    elif edit == "sums":
        kinds["all_to_all"] = dataclasses.replace(kinds["all_to_all"], sums=True)
    elif edit == "missing row":
        del kinds["all_to_all"]
    else:
        kinds = dict(reversed(kinds.items()))
    monkeypatch.setattr(_kinds, "KINDS", kinds)
    with pytest.raises(ImportError, match="do not match jax_symm/_kinds.py"):
        _kinds.check_against_native()


def test_rules_derived_from_the_table():
    """Every size rule, from the one table: host slot, NCCL arena, copies."""
    w, c = 4, 128  # whole cache lines (slots are rounded up to 64 bytes)
    assert [_host.slot_bytes(k, c, w) for k in _kinds.KINDS] == [c, c * w, c, c * w]
    assert [_nccl.arena_bytes_needed(k, c, w) for k in _kinds.KINDS] == [c * w, c * w, c, c * w]
    assert [_dispatch.copied_mib_per_mib(k, w) for k in _kinds.KINDS] == [w + 1, w + 1, 2, 2 * w]
    assert _host.slot_bytes("all_reduce", 1, w) == 64  # a cache line at least


def test_summable_dtypes_come_from_cpp():
    """The trace-time check accepts what some transport sums; NCCL's list is
    NCCL's own (no 16-bit integers), the host's has every integer width."""
    host = {np.dtype(jnp.dtype(n)) for n in ext.host_sum_dtypes()}
    nccl = {np.dtype(jnp.dtype(n)) for n in ext.nccl_sum_dtypes()}
    assert _kinds.SUMMABLE == host | nccl
    assert _nccl._SUMMABLE == nccl
    assert host - nccl == {np.dtype(np.int16), np.dtype(np.uint16)}
    assert np.dtype(jnp.bfloat16) in nccl and np.dtype(np.bool_) not in host | nccl
    assert not _eligibility.summable(jnp.zeros(2, jnp.float8_e4m3fn))
    assert _eligibility.summable(jnp.zeros(2, jnp.int16))


def test_chunk_of_a_call():
    """A call's chunk is its input over its input's chunks: one rank's share."""
    assert _kinds.kind("all_gather").chunk_bytes(96, 4) == 96
    assert _kinds.kind("reduce_scatter").chunk_bytes(384, 4) == 96
    assert _kinds.kind("all_reduce").chunk_bytes(96, 4) == 96
    assert _kinds.kind("all_to_all").chunk_bytes(384, 4) == 96


def test_a_native_error_names_the_dtype(monkeypatch):
    """C++ names an element type as numpy does, not by XLA's enum number:
    here the host sum's last line of defence, reached past Python's dtype
    check (which refuses float8 sums at trace time)."""
    from jax.sharding import PartitionSpec as P
    from _util import cpu_mesh, shard

    f8 = np.dtype(jnp.float8_e4m3fn)
    monkeypatch.setattr(_kinds, "SUMMABLE", _kinds.SUMMABLE | {f8})
    mesh = cpu_mesh((2,), ("x",))
    f = jax.jit(jax.shard_map(lambda a: jax_symm.psum(a, "x"), mesh=mesh, in_specs=P("x"),
                              out_specs=P("x")))
    with pytest.raises(Exception, match=r"no host sum for element type float8_e4m3fn(?!\w)"):
        f(shard(np.ones(64, f8), mesh, P("x"))).block_until_ready()


# ---- what each layer keeps per kind (jax_symm/__init__.py checks it at import) ----

def test_every_kind_has_its_primitive_op_twin_reroute_and_cost_figure():
    _kinds.check_op_registry()  # what the import ran
    from jax_symm.bench import ops

    assert tuple(ops.OPS) == tuple(_kinds.KINDS)


@pytest.mark.parametrize("layer", ["_primitives", "public ops", "lax", "scope", "_dispatch"])
def test_a_kind_missing_from_a_layer_fails_the_import(monkeypatch, layer):
    """Each layer that keeps something per kind, without all_to_all's."""
    from jax_symm import _primitives, scope

    if layer == "_primitives":
        monkeypatch.delattr(_primitives, "all_to_all_p")
    elif layer == "public ops":
        monkeypatch.delattr(jax_symm, "all_to_all")
    elif layer == "lax":
        monkeypatch.setitem(_kinds.KINDS, "all_to_all", dataclasses.replace(
            _kinds.KINDS["all_to_all"], lax_twin="ragged_all_to_all"))
    elif layer == "scope":
        monkeypatch.delitem(scope._REROUTES, "all_to_all")
    else:
        monkeypatch.delitem(_dispatch._SAVED_AT_ZERO_US, "all_to_all")
    with pytest.raises(ImportError, match=re.escape(layer) + r".*missing \['all_to_all'\]"):
        _kinds.check_op_registry()


def test_a_new_row_without_its_layers_fails_the_import(monkeypatch):
    monkeypatch.setitem(_kinds.KINDS, "broadcast", _kinds.Kind(
        "broadcast", _kinds.ONE, _kinds.ONE, sums=False, lax_twin="psum"))
    with pytest.raises(ImportError, match=r"missing \['broadcast'\]"):
        _kinds.check_op_registry()
