"""The routing of a call to a transport or to XLA, and what the GPU lowering
emits, checked on CPU: a program is exported for CUDA (jax.export lowers for
a platform it does not run) with NCCL's set-up stubbed, so the decisions and
the custom call's attributes of the GPU path are visible here."""

from __future__ import annotations

import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import jax_symm
from jax_symm import _kinds, _nccl, _nccl_path, _routing, _transport


@pytest.fixture
def mesh():
    return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("x", "y"))


@pytest.fixture
def nccl_stub(monkeypatch):
    """An NCCL with symmetric windows whose communicators and arenas exist
    already: what lowering asks of NCCL, answered without a GPU."""
    monkeypatch.setattr(_nccl, "load", lambda: {"version": 22809, "symmetric_windows": True,
                                                "path": ""})
    # jax_symm's own communicators and arenas (tests/lowering/test_nccl_path.py: the XLA path)
    monkeypatch.setattr(_nccl_path, "choice", lambda: _nccl_path.PathChoice("own", "test"))
    monkeypatch.setattr(_nccl, "ensure_groups", lambda groups: None)
    monkeypatch.setattr(_nccl, "ensure_arenas",
                        lambda groups, n: np.full(groups.shape[0], n, np.int64))


@pytest.fixture
def routes(monkeypatch):
    """Every routing decision made while the test lowers."""
    made = []
    original = _routing.route

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(_routing, "route", recording)
    return made


def _cuda_text(fn, mesh, x) -> str:
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x", None, "y"), out_specs=P(),
                              check_vma=False))
    checks = [jax.export.DisabledSafetyCheck.custom_call(n) for n in _nccl.NCCL_TARGETS.values()]
    return jax.export.export(f, platforms=["cuda"], disabled_checks=checks)(x).mlir_module()


def _nccl_calls(text: str) -> list[tuple[str, dict]]:
    """(target, attributes) of every NCCL custom call in the module."""
    out = []
    for m in re.finditer(r"custom_call @(jax_symm_nccl_\w+)\(.*?mhlo.backend_config = \{(.*?)\}, "
                         r"operand_layouts", text):
        attrs = dict(re.findall(r"(\w+) = ([^,]+?(?:\[[^\]]*\][^,]*)?)(?:, |$)", m.group(2)))
        out.append((m.group(1), attrs))
    return out


GROUPS = "dense<[0, 2, 4, 6, 1, 3, 5, 7]> : tensor<8xi64>"


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("tiled", [False, True])
def test_gpu_attributes_and_one_decision_per_call(mesh, nccl_stub, routes, dim, tiled):
    """The attributes the NCCL handler decodes, exactly; a call along a
    non-leading dimension is decided once, its relayout lowered around one
    custom call."""
    x = jnp.ones((16, 4, 6), jnp.float32)  # per device (4, 4, 3): 192 bytes

    def fn(v):
        g = jax_symm.all_gather(v, "x", axis=dim, tiled=tiled)
        s = jax_symm.reduce_scatter(v, "x", scatter_dimension=dim, tiled=tiled)
        return (g.sum() + s.sum() + jax_symm.all_reduce(v, ("x", "y")).sum()
                + jax_symm.all_to_all(v, "x", 1, 2 * dim, tiled=tiled).sum())

    # The all-to-all: per device (4, 4, 3), split axis 1 of 4 rows over the
    # 4 ranks of "x", so 4 chunks of 48 bytes in and out.
    calls = _nccl_calls(_cuda_text(fn, mesh, x))
    scattered = 192 // 4
    assert calls == [
        ("jax_symm_nccl_all_gather", {"arena_bytes": "dense<768> : tensor<2xi64>",
                                      "chunk_bytes": "192 : i64", "group_size": "4 : i64",
                                      "groups": GROUPS}),
        ("jax_symm_nccl_reduce_scatter", {"arena_bytes": f"dense<{scattered * 4}> : tensor<2xi64>",
                                          "chunk_bytes": f"{scattered} : i64",
                                          "group_size": "4 : i64", "groups": GROUPS}),
        ("jax_symm_nccl_all_reduce", {"arena_bytes": "dense<192> : tensor<1xi64>",
                                      "chunk_bytes": "192 : i64", "group_size": "8 : i64",
                                      "groups": "dense<[0, 1, 2, 3, 4, 5, 6, 7]> : tensor<8xi64>"}),
        ("jax_symm_nccl_all_to_all", {"arena_bytes": "dense<192> : tensor<2xi64>",
                                      "chunk_bytes": "48 : i64", "group_size": "4 : i64",
                                      "groups": GROUPS}),
    ]
    assert len(routes) == 4 and all(isinstance(r, _routing.Route) for r in routes)
    assert [r.call.kind.name for r in routes] == list(_kinds.KINDS)


@pytest.mark.filterwarnings("ignore:jax_symm. NCCL cannot sum")
def test_gpu_refusals_go_to_xla(mesh, nccl_stub, routes):
    """A sum NCCL has not got (int16) and a message above the crossover take
    XLA's collective, each with its reason; a gather of int16 stays."""
    x = jnp.ones((16, 4, 6), jnp.int16)

    def fn(v):
        return (jax_symm.all_gather(v, "x").sum()
                + jax_symm.reduce_scatter(v, "x", scatter_dimension=0, tiled=True).sum())

    text = _cuda_text(fn, mesh, x)
    assert [t for t, _ in _nccl_calls(text)] == ["jax_symm_nccl_all_gather"]
    assert "stablehlo.reduce_scatter" in text
    assert routes[1].call is None and "NCCL cannot sum int16" in routes[1].why
    with jax_symm.settings.crossover_bytes(64):
        routes.clear()
        text = _cuda_text(lambda v: jax_symm.all_gather(v.astype(jnp.float32), "x"), mesh, x)
    assert _nccl_calls(text) == [] and "stablehlo.all_gather" in text
    assert routes[0] == _routing.Route(None, "above the crossover", False)


def test_one_transport_per_platform():
    assert set(_routing.TRANSPORTS) == {"cpu", "cuda"}
    for platform, t in _routing.TRANSPORTS.items():
        assert t.platform == platform and isinstance(t.serves_one_rank, bool)
        assert callable(t.refusal) and callable(t.lower)
    assert not _routing.TRANSPORTS["cpu"].serves_one_rank
    assert _routing.TRANSPORTS["cuda"].serves_one_rank


def test_host_refusal_is_none_in_one_process():
    call = _transport.Call(_kinds.kind("all_gather"), np.dtype(np.float32),
                           np.arange(8, dtype=np.int64).reshape(1, 8), 64)
    assert call.world == 8
    assert _routing.TRANSPORTS["cpu"].refusal(call) is None


@pytest.mark.filterwarnings("ignore:jax_symm. NCCL 2.6.4 has neither ncclAlltoAll")
def test_all_to_all_without_an_nccl_all_to_all_goes_to_xla(mesh, routes, monkeypatch):
    """An NCCL with neither ncclAlltoAll nor ncclSend/ncclRecv: XLA's
    all-to-all serves jax_symm.all_to_all, and the route says why."""
    monkeypatch.setattr(_nccl, "load", lambda: {"version": 20604, "symmetric_windows": True,
                                                "path": "", "all_to_all": ""})
    text = _cuda_text(lambda v: jax_symm.all_to_all(v, "x", 0, 0, tiled=True).sum(), mesh,
                      jnp.ones((16, 4, 6), jnp.float32))
    assert _nccl_calls(text) == [] and "all_to_all" in text
    assert routes[0].call is None and "neither ncclAlltoAll" in routes[0].why
