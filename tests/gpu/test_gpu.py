"""The NCCL symmetric-memory path on GPUs, against jax.lax.

Runs only where JAX sees GPUs (skipped on CPU-only machines, such as CI).
With one GPU the groups have one rank; JAX_SYMM_SINGLETON_CALLS=1 keeps the
custom call (normally dropped for a group of one) so the handlers, the
1-rank communicator and its registered window are exercised all the same.
Each check poisons freed device memory first, so an output the handler
failed to write cannot pass by holding an old right answer.
"""

import os
import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import jax_symm
from jax_symm import _nccl, _nccl_path
from _mp_util import captured_chain
from _util import GATHER_DTYPES, SUM_DTYPES, assert_same, random_array, shard

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not any(d.platform == "gpu" for d in jax.devices()), reason="needs a GPU")]


# Which NCCL path this process takes (JAX_SYMM_NCCL_PATH; auto: XLA's where
# the running jaxlib has windows): run the file once per path.
PATH = _nccl_path.choice().path if any(d.platform == "gpu" for d in jax.devices()) else "own"
own_path_only = pytest.mark.skipif(PATH != "own", reason="jax_symm's own arenas: the own path")


def hlo_copies(compiled_text: str) -> int:
    """The copy instructions of an optimized HLO module (memory-space moves
    included: XLA writes them as copies)."""
    return len(re.findall(r"= \S+ copy(-start)?\(", compiled_text))


def target(op: str) -> str:
    """The custom call's target name for `op` on this process's path."""
    return (_nccl.xla_targets() if PATH == "xla" else _nccl.NCCL_TARGETS)[op]


@pytest.fixture(autouse=True)
def singleton_calls():
    # A JAX config option (it keys jit's cache): set for this thread, then restored.
    with jax_symm.settings.singleton_calls(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture
def mesh():
    return Mesh(np.array(jax.devices()), ("x",))


def poison():
    """Fill, then free, a large block so that new buffers start out as NaN."""
    jnp.full((64 << 20,), jnp.nan, jnp.float32).block_until_ready()


def run(fn, x, mesh, spec=P("x"), out_spec=P("x")):
    poison()
    f = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=out_spec))
    return np.asarray(f(shard(x, mesh, spec)))


def test_lowers_to_nccl_custom_calls(mesh, rng):
    x = shard(random_array(rng, (64 * mesh.size,), np.float32), mesh, P("x"))
    f = jax.jit(jax.shard_map(lambda a: jax_symm.psum_scatter(
        jax_symm.all_gather(a, "x"), "x"), mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    text = f.lower(x).as_text()
    assert target("all_gather") in text and target("reduce_scatter") in text
    info = jax_symm.info()["nccl"]
    assert info["symmetric_windows"], info
    assert info["nccl_path"] == PATH, info
    if PATH == "own":
        assert info["communicators"] and all(c["arena_bytes"] for c in info["communicators"])
    else:  # XLA's communicators and memory: none of jax_symm's own
        assert not info["communicators"], info
        assert "results_memory_spaces" in text and "operands_memory_spaces" in text


@pytest.mark.skipif(PATH != "xla", reason="the XLA path")
def test_xla_path_adds_no_copies_per_call(mesh, rng):
    """A chain whose collectives' operands are computed inside the step: the
    XLA path's calls add no copy to the optimized program (the only copies
    are at the program's edges, the same for 2 or 8 calls); the own path
    copies inside its handlers, which the HLO does not show."""
    x = shard(random_array(rng, (mesh.size * 4096,), np.float32), mesh, P("x"))

    def chain(k):
        def body(a):
            for _ in range(k):
                a = jax_symm.psum_scatter(jnp.tanh(jax_symm.all_gather(a, "x", tiled=True)),
                                          "x", tiled=True)
            return a
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x")))

    def copies(f):
        hlo = f.lower(x).compile().as_text()
        return hlo_copies(hlo)

    short, long = copies(chain(1)), copies(chain(4))
    print(f"\ncopies in the optimized HLO: 1 step {short}, 4 steps {long}")
    assert long == short, (short, long)


@pytest.mark.skipif(PATH != "xla", reason="the XLA path")
def test_tp_step_copies_on_the_xla_path():
    """The tensor-parallel example's jitted training step: its jax_symm
    calls' operands are computed inside the step, so calling jax_symm adds no
    copy to the optimized program over the same step with lax's collectives
    (printed beside the step with no collectives at all)."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
    import tp_transformer as tp

    d = tp.Dims(seq=64, dim=64, heads=8, ffn=128)
    mesh, params, data = tp.setup(d, n_batches=1)
    counts, texts = {}, {}
    for how in ("lax", "jax_symm", "local"):
        lowered = tp.make_train_step(mesh, d, how=how).lower(params, *data[0])
        texts[how] = lowered.as_text()
        counts[how] = hlo_copies(lowered.compile().as_text())
    print(f"\ncopies in the TP step's optimized HLO: {counts}")
    assert texts["jax_symm"].count(f"custom_call @{target('all_gather')}") >= 2
    assert texts["jax_symm"].count(f"custom_call @{target('reduce_scatter')}") >= 2
    assert counts["jax_symm"] <= counts["lax"], counts


def test_info_reports_the_loaded_nccls_rules(mesh, rng):
    """The PDL floor applied to the NCCL actually loaded, and no stall bound
    (nor its per-call cost) unless JAX_SYMM_GPU_TIMEOUT_S asks for one."""
    from jax_symm._native import ext

    x = shard(random_array(rng, (64 * mesh.size,), np.float32), mesh, P("x"))
    run(lambda a: jax_symm.all_gather(a, "x", tiled=True), np.asarray(x), mesh)
    info = jax_symm.info()["nccl"]
    major, minor, patch = (int(p) for p in info["version"].split("."))
    rules = ext.nccl_copy_rules(major * 10000 + minor * 100 + patch)
    assert info["gather_sends_in_place"] == rules["gather_sends_in_place"], info
    assert info["pdl_fixed_version"] == "2.30.7", info
    forced = os.environ.get("JAX_SYMM_NCCL_ALL_TO_ALL") == "send_recv"
    has_alltoall = (major, minor, patch) >= (2, 28, 3)
    assert info["all_to_all"] == ("ncclAlltoAll" if has_alltoall and not forced
                                  else "ncclSend/ncclRecv"), info
    bounded = float(os.environ.get("JAX_SYMM_GPU_TIMEOUT_S") or 0) > 0
    assert (info["stall_timeout_s"] > 0) == bounded, info
    assert all(c["stall_watch"] == bounded for c in info["communicators"]), info


@pytest.mark.parametrize("dtype", GATHER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_all_gather_parity(dtype, mesh, rng):
    n = mesh.size
    for local_shape, axis in [((1000,), 0), ((3, 40), 0), ((3, 40), 1), ((2, 3, 40), 1),
                              ((2, 3, 40), 2)]:
        for tiled in (False, True):
            x = random_array(rng, (local_shape[0] * n, *local_shape[1:]), dtype)
            ours = run(lambda a: jax_symm.all_gather(a, "x", axis=axis, tiled=tiled), x, mesh)
            ref = run(lambda a: jax.lax.all_gather(a, "x", axis=axis, tiled=tiled), x, mesh)
            assert_same(ours, ref, dtype, n)


@pytest.mark.parametrize("dtype", GATHER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_all_to_all_parity(dtype, mesh, rng):
    """ncclAlltoAll (or grouped send/recv: JAX_SYMM_NCCL_ALL_TO_ALL) against
    lax, split != concat and split == concat, tiled and untiled."""
    n = mesh.size
    for local_shape, split, concat, tiled in [((n * 1000,), 0, 0, True), ((n * 3, 40), 0, 1, True),
                                              ((3, n * 40), 1, 0, True), ((2, n, 40), 1, 2, False),
                                              ((2, 3, n * 40), 2, 2, True)]:
        x = random_array(rng, (local_shape[0] * n, *local_shape[1:]), dtype)
        fn = lambda op: (lambda a: op(a, "x", split, concat, tiled=tiled))  # noqa: E731
        ours = run(fn(jax_symm.all_to_all), x, mesh)
        assert_same(ours, run(fn(jax.lax.all_to_all), x, mesh), dtype, n)
    f = jax.jit(jax.shard_map(fn(jax_symm.all_to_all), mesh=mesh, in_specs=P("x"),
                              out_specs=P("x")))
    assert f"custom_call @{target('all_to_all')}" in f.lower(shard(x, mesh, P("x"))).as_text()


@pytest.mark.parametrize("dtype", SUM_DTYPES, ids=lambda d: np.dtype(d).name)
def test_reduce_scatter_parity(dtype, mesh, rng):
    n = mesh.size
    for local_shape, dim in [((n * 1000,), 0), ((n * 3, 40), 0), ((3, n * 40), 1),
                             ((2, n * 3, 40), 1), ((2, 3, n * 40), 2)]:
        x = random_array(rng, (local_shape[0] * n, *local_shape[1:]), dtype)
        ours = run(lambda a: jax_symm.psum_scatter(a, "x", scatter_dimension=dim, tiled=True),
                   x, mesh)
        ref = run(lambda a: jax.lax.psum_scatter(a, "x", scatter_dimension=dim, tiled=True),
                  x, mesh)
        assert_same(ours, ref, dtype, n)


@own_path_only
def test_large_message_grows_the_arena(mesh, rng):
    # Above the size crossover jax_symm would hand the call to XLA: force the
    # window path so that the arena has to grow.
    with jax_symm.settings.crossover_bytes(1 << 62):
        _grows_the_arena(mesh, rng)


def test_large_message_above_the_crossover_uses_xla(mesh, rng):
    x = random_array(rng, (mesh.size * (9 << 20) // 4,), np.float32)  # 9 MiB per rank
    f = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "x", tiled=True), mesh=mesh,
                              in_specs=P("x"), out_specs=P("x")))
    with jax_symm.settings.crossover_bytes(8 << 20):
        text = f.lower(x).as_text()
    assert "jax_symm_nccl" not in text
    with jax_symm.settings.crossover_bytes(16 << 20):
        text = f.lower(x).as_text()
    assert f"custom_call @{target('all_gather')}" in text


def _grows_the_arena(mesh, rng):
    before = max(max(c["arena_bytes"]) for c in jax_symm.info()["nccl"]["communicators"]) \
        if jax_symm.info()["nccl"]["communicators"] else 0
    n = mesh.size
    x = random_array(rng, (n * (before // 4 + 4096),), np.float32)
    ours = run(lambda a: jax_symm.all_gather(a, "x", tiled=True), x, mesh)
    ref = run(lambda a: jax.lax.all_gather(a, "x", tiled=True), x, mesh)
    assert_same(ours, ref, np.float32, n)
    after = max(max(c["arena_bytes"]) for c in jax_symm.info()["nccl"]["communicators"])
    assert after > before


def test_captured_chain_on_changing_inputs(mesh, rng):
    """Many calls in one program (so XLA may capture them into a CUDA graph),
    replayed on fresh inputs each time."""
    ours = captured_chain(jax_symm.all_gather, jax_symm.psum_scatter, mesh)
    ref = captured_chain(jax.lax.all_gather, jax.lax.psum_scatter, mesh)
    for _ in range(5):
        x = shard(random_array(rng, (mesh.size * 4096,), np.float32), mesh, P("x"))
        poison()
        assert_same(ours(x), ref(x), np.float32, mesh.size)


def test_mixed_with_lax_and_grad(mesh, rng):
    def step(gather, scatter):
        def loss(w, a):
            h = gather(a, "x", tiled=True) @ w
            out = scatter(jnp.tanh(h), "x", tiled=True)
            return jax.lax.psum(jnp.sum(out ** 2), "x")
        f = jax.shard_map(jax.value_and_grad(loss), mesh=mesh, in_specs=(P(), P("x")),
                          out_specs=(P(), P()), check_vma=False)
        return jax.jit(f)

    w = jnp.asarray(random_array(rng, (16, 16), np.float32))
    x = shard(random_array(rng, (mesh.size * mesh.size * 8, 16), np.float32), mesh, P("x"))
    (l1, g1), (l2, g2) = step(jax_symm.all_gather, jax_symm.psum_scatter)(w, x), \
        step(jax.lax.all_gather, jax.lax.psum_scatter)(w, x)
    assert_same(l1, l2, np.float32)
    assert_same(g1, g2, np.float32)


@pytest.mark.parametrize("dtype", SUM_DTYPES, ids=lambda d: np.dtype(d).name)
def test_all_reduce_parity(dtype, mesh, rng):
    for shape in [(mesh.size * 1000,), (mesh.size * 3, 40)]:
        x = random_array(rng, shape, dtype)
        ours = run(lambda a: jax_symm.psum(a, "x"), x, mesh)
        ref = run(lambda a: jax.lax.psum(a, "x"), x, mesh)
        assert_same(ours, ref, dtype, mesh.size)


def test_scope_reroutes_on_gpu(mesh, rng):
    def model(a):
        g = jax.lax.all_gather(a, "x", tiled=True)
        return jax.lax.psum_scatter(jnp.tanh(g) * jax.lax.psum(jnp.sum(g), "x"), "x",
                                    tiled=True)

    f = jax.jit(jax.shard_map(model, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    x = shard(random_array(rng, (mesh.size * 4096,), np.float32), mesh, P("x"))
    ref = f(x)
    with jax_symm.use_symmetric_memory():
        assert f.lower(x).as_text().count("custom_call @jax_symm_nccl") == 3
        poison()
        assert_same(f(x), ref, np.float32, mesh.size)


@own_path_only
def test_nccl_failure_is_a_python_exception(tmp_path):
    """An arena NCCL cannot allocate fails the lowering with NCCL's message,
    not an abort (fresh process, so no arena exists yet)."""
    import subprocess
    import sys

    script = (
        "import numpy as np, jax, jax_symm\n"
        "from jax.sharding import Mesh, PartitionSpec as P\n"
        "mesh = Mesh(np.array(jax.devices()), ('x',))\n"
        "f = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, 'x'), mesh=mesh,\n"
        "                          in_specs=P('x'), out_specs=P('x')))\n"
        "try:\n"
        "    f(np.ones(mesh.size * 8, np.float32))\n"
        "except Exception as e:\n"
        "    print('RAISED', type(e).__name__, e)\n")
    # 1 TiB: the largest arena the setting admits, more than any GPU has
    env = dict(os.environ, JAX_SYMM_SINGLETON_CALLS="1", JAX_SYMM_ARENA_MB=str(1 << 20),
               JAX_SYMM_NCCL_PATH="own")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAISED" in proc.stdout and "ncclMemAlloc failed" in proc.stdout, proc.stdout
    assert "JAX_SYMM_ARENA_MB" in proc.stdout
