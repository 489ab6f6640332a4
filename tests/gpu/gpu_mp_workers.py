"""Workers for tests/gpu/test_gpu_multirank.py: one JAX process per GPU rank.

Each process of a `run_multiprocess(..., platform="gpu")` job runs every case
of the suite (one launch per world size keeps CUDA start-up out of each case)
and returns one plain summary per case; the parent asserts on them. Every case
runs the same body with jax_symm and with jax.lax in the same job, checks both
against numpy on this process's shards, and records how many jax_symm custom
calls the lowered program holds, so a silent fallback to XLA cannot pass.
Inputs are fresh random data from a seed the parent draws (the same in every
process); device memory is filled with NaN and freed before each run.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import traceback

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import _a2a_ref
from _mp_util import captured_chain, global_array, write_json

KIB, MIB = 1 << 10, 1 << 20


def _np_dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name)) if name in ("bfloat16", "float8_e4m3fn") \
        else np.dtype(name)


def _random(rs: np.random.RandomState, shape, name: str) -> np.ndarray:
    if name == "int32":
        return rs.randint(-100, 101, size=shape).astype(np.int32)
    return rs.standard_normal(shape).astype(np.float32).astype(_np_dtype(name))


def _tolerance(name: str, world: int) -> float:
    return {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}.get(name, 0.0) * world


def _poison() -> None:
    import jax.numpy as jnp

    jnp.full((64 << 20,), jnp.nan, jnp.float32).block_until_ready()


# ----------------------------------------------------------- numpy references


def _members(mesh_shape: tuple, axes: tuple, names: tuple) -> list[list[int]]:
    """For each device (flat mesh index), the flat indices of its group in rank order."""
    coords = list(np.ndindex(*mesh_shape))
    flat = {c: i for i, c in enumerate(coords)}
    free = {names.index(a) for a in axes}
    return [[flat[g] for g in itertools.product(
        *[range(mesh_shape[d]) if d in free else [c[d]] for d in range(len(c))])]
        for c in coords]


def _reference(op: str, shards: list[np.ndarray], groups: list[list[int]], **p) -> np.ndarray:
    """What each device holds after `op`, concatenated along axis 0 (out_specs
    over every mesh axis in order), computed in float64 for sums."""
    outs = []
    for me, members in enumerate(groups):
        parts = [shards[m] for m in members]
        rank = members.index(me)
        if op == "all_to_all":
            outs.append(_a2a_ref.all_to_all(parts, p["split_axis"], p["concat_axis"],
                                            p["tiled"])[rank])
            continue
        if op == "all_gather":
            axis, tiled = p["axis"], p["tiled"]
            outs.append(np.concatenate(parts, axis) if tiled else np.stack(parts, axis))
            continue
        kind = parts[0].dtype
        wide = np.int64 if np.issubdtype(kind, np.integer) else np.float64
        total = np.sum([q.astype(wide) for q in parts], axis=0)
        if op == "psum":
            outs.append(total)
        else:
            d, n = p["scatter_dimension"], len(members)
            if p["tiled"]:
                outs.append(np.split(total, n, axis=d)[rank])
            else:
                outs.append(np.take(total, rank, axis=d))
    return np.concatenate(outs, axis=0)


# -------------------------------------------------------------------- cases


def _ops(lib, op: str, axes, **p):
    if op == "all_gather":
        return lambda a: lib.all_gather(a, axes, axis=p["axis"], tiled=p["tiled"])
    if op == "psum_scatter":
        return lambda a: lib.psum_scatter(a, axes, scatter_dimension=p["scatter_dimension"],
                                          tiled=p["tiled"])
    if op == "all_to_all":
        return lambda a: lib.all_to_all(a, axes, p["split_axis"], p["concat_axis"],
                                        tiled=p["tiled"])
    return lambda a: lib.psum(a, axes)


def _local_shape(op: str, per_rank_bytes: int, dtype: np.dtype, world: int, p: dict,
                 ndim: int) -> tuple:
    """A per-device input shape of about `per_rank_bytes` bytes for this case."""
    elems = max(per_rank_bytes // dtype.itemsize, 8 * world)
    if op in ("psum_scatter", "all_to_all"):
        elems = max(world, elems // world * world)  # divisible by the group
        if ndim == 1:
            return (elems,) if p["tiled"] else (world, elems // world)
    if ndim == 1:
        return (elems,)
    # 3-D: the scattered / gathered dimension is 1 of (2, M, 8).
    m = max(world, elems // 16 // world * world)
    return (2, m, 8)


class _Case:
    def __init__(self, name, op, dtype="float32", per_rank=64 * KIB, ndim=1, axes=("x",),
                 mesh="1d", expect_calls=1, **p):
        self.name, self.op, self.dtype, self.per_rank, self.ndim = name, op, dtype, per_rank, ndim
        self.axes, self.mesh, self.expect_calls, self.p = axes, mesh, expect_calls, p


def _cases(world: int) -> list[_Case]:
    cases = []
    for dt in ("float32", "bfloat16", "float16", "int32", "float8_e4m3fn"):
        for tiled in (True, False):
            cases.append(_Case(f"all_gather-{dt}-{'tiled' if tiled else 'stacked'}",
                               "all_gather", dt, axis=0, tiled=tiled))
    for dt in ("float32", "bfloat16", "float16", "int32"):
        cases.append(_Case(f"psum_scatter-{dt}-tiled", "psum_scatter", dt,
                           scatter_dimension=0, tiled=True))
        cases.append(_Case(f"psum-{dt}", "psum", dt))
    cases.append(_Case("psum_scatter-float32-untiled", "psum_scatter", "float32",
                       scatter_dimension=0, tiled=False))
    cases.append(_Case("all_gather-axis1-tiled", "all_gather", ndim=3, axis=1, tiled=True))
    cases.append(_Case("all_gather-axis2-stacked", "all_gather", ndim=3, axis=2, tiled=False))
    cases.append(_Case("psum_scatter-dim1-tiled", "psum_scatter", ndim=3, scatter_dimension=1,
                       tiled=True))
    for size in (4 * KIB, MIB, 16 * MIB):
        for op, p in (("all_gather", dict(axis=0, tiled=True)),
                      ("psum_scatter", dict(scatter_dimension=0, tiled=True)), ("psum", {})):
            cases.append(_Case(f"{op}-float32-{size // KIB}KiB", op, per_rank=size, **p))
            cases.append(_Case(f"{op}-float32-{size // KIB}KiB-default-dispatch", op,
                               per_rank=size, expect_calls=None, **p))
    for dt in ("float32", "bfloat16", "int32", "float8_e4m3fn"):
        cases.append(_Case(f"all_to_all-{dt}-tiled", "all_to_all", dt, split_axis=0,
                           concat_axis=0, tiled=True))
    cases.append(_Case("all_to_all-float32-untiled", "all_to_all", split_axis=0, concat_axis=1,
                       tiled=False))
    cases.append(_Case("all_to_all-split1-concat2", "all_to_all", ndim=3, split_axis=1,
                       concat_axis=2, tiled=True))
    cases.append(_Case("all_to_all-float32-16384KiB", "all_to_all", per_rank=16 * MIB,
                       split_axis=0, concat_axis=0, tiled=True))
    if world == 4:
        cases.append(_Case("2x2-all_to_all-over-b", "all_to_all", mesh="2x2", axes=("b",),
                           split_axis=0, concat_axis=0, tiled=True))
        cases.append(_Case("2x2-all_gather-over-a", "all_gather", mesh="2x2", axes=("a",),
                           axis=0, tiled=True))
        cases.append(_Case("2x2-psum-over-b", "psum", mesh="2x2", axes=("b",)))
        cases.append(_Case("2x2-psum-over-both", "psum", mesh="2x2", axes=("a", "b")))
        cases.append(_Case("2x2-psum_scatter-over-b", "psum_scatter", mesh="2x2", axes=("b",),
                           scatter_dimension=0, tiled=True))
    return cases


def _mesh(kind: str):
    import jax
    from jax.sharding import Mesh

    devices = np.array(jax.devices())
    if kind == "2x2":
        return Mesh(devices.reshape(2, 2), ("a", "b"))
    return Mesh(devices.reshape(-1), ("x",))


def _custom_calls(text: str) -> int:
    return text.count("custom_call @jax_symm_nccl")


def _compiled(body, mesh, x, spec):
    """(lowered text, compiled) for shard_map(body) over every mesh axis."""
    import jax

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))
    lowered = f.lower(x)
    return lowered.as_text(), lowered.compile()


def _check_shards(out, expected: np.ndarray, tol: float, what: str) -> float:
    """Max abs error of this process's shards of `out` against `expected`."""
    worst = 0.0
    for s in out.addressable_shards:
        got = np.asarray(s.data)
        want = expected[s.index]
        assert got.shape == want.shape, (what, got.shape, want.shape)
        g, w = got.astype(np.float64), want.astype(np.float64)
        assert not np.isnan(g).any(), f"{what}: NaN in the output (an unwritten element?)"
        err = float(np.max(np.abs(g - w))) if g.size else 0.0
        limit = tol * max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
        assert err <= limit, f"{what}: max abs error {err} > {limit}"
        worst = max(worst, err)
    return worst


def _run_case(case: _Case, world: int, rs: np.random.RandomState) -> dict:
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh(case.mesh)
    names = mesh.axis_names
    spec = P(names if len(names) > 1 else names[0])
    dtype = _np_dtype(case.dtype)
    local = _local_shape(case.op, case.per_rank, dtype, world, case.p, case.ndim)
    data = _random(rs, (world * local[0], *local[1:]), case.dtype)
    x = global_array(data, mesh, spec)
    shards = np.split(data, world, axis=0)
    groups = _members(tuple(mesh.devices.shape), case.axes, tuple(names))
    expected = _reference(case.op, shards, groups, **case.p)
    axes = case.axes if len(case.axes) > 1 else case.axes[0]
    force = case.expect_calls is not None
    with jax_symm.settings.force_window(force):
        text, ours = _compiled(_ops(jax_symm, case.op, axes, **case.p), mesh, x, spec)
    _, ref = _compiled(_ops(jax.lax, case.op, axes, **case.p), mesh, x, spec)
    tol = _tolerance(case.dtype, world)
    _poison()
    got = ours(x)
    err = _check_shards(got, expected, tol, f"{case.name} jax_symm vs numpy")
    _poison()
    want = ref(x)
    _check_shards(want, expected, tol, f"{case.name} lax vs numpy")
    for a, b in zip(got.addressable_shards, want.addressable_shards):
        np.testing.assert_allclose(np.asarray(a.data).astype(np.float64),
                                   np.asarray(b.data).astype(np.float64),
                                   atol=tol * max(1.0, float(np.max(np.abs(expected)))),
                                   err_msg=f"{case.name}: jax_symm vs lax")
    return dict(calls=_custom_calls(text), err=err, bytes_per_rank=int(np.prod(local)) *
                dtype.itemsize)


def _run_special(name: str, world: int, rs: np.random.RandomState) -> dict:
    """The cases that are whole programs rather than one op."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh("1d")
    n = world
    if name == "grad-through-all_gather":
        def step(gather):
            def loss(w, a):
                h = gather(a, "x", tiled=True) @ w
                return jax.lax.psum(jnp.sum(jnp.tanh(h) ** 2), "x")
            return jax.jit(jax.shard_map(jax.value_and_grad(loss, argnums=(0, 1)), mesh=mesh,
                                         in_specs=(P(), P("x")),
                                         out_specs=(P(), (P(), P("x")))))
        w = jnp.asarray(_random(rs, (16, 16), "float32"))
        x = global_array(_random(rs, (n * 8, 16), "float32"), mesh, P("x"))
        with jax_symm.settings.force_window(True):
            ours = step(jax_symm.all_gather)
            text = ours.lower(w, x).as_text()
            _poison()
            (l1, (gw1, gx1)) = ours(w, x)
        (l2, (gw2, gx2)) = step(jax.lax.all_gather)(w, x)
        for a, b in ((l1, l2), (gw1, gw2), (gx1, gx2)):
            np.testing.assert_allclose(np.asarray(a.addressable_shards[0].data),
                                       np.asarray(b.addressable_shards[0].data),
                                       rtol=1e-4, atol=1e-4)
        return dict(calls=_custom_calls(text))
    if name == "eight-independent-gathers":
        def body(lib):
            return lambda a: jnp.stack([lib.all_gather(a * (k + 1), "x", tiled=True)
                                        for k in range(8)])
        data = _random(rs, (n * 1024,), "float32")
        x = global_array(data, mesh, P("x"))
        with jax_symm.settings.force_window(True):
            f = jax.jit(jax.shard_map(body(jax_symm), mesh=mesh, in_specs=P("x"),
                                      out_specs=P(None, "x")))
            text = f.lower(x).as_text()
            _poison()
            out = f(x)
        expected = np.stack([np.concatenate([data * (k + 1)] * n) for k in range(8)])
        _check_shards(out, expected, 1e-6, name)
        return dict(calls=_custom_calls(text))
    if name == "scope-on-a-lax-program":
        def model(a):
            g = jax.lax.all_gather(a, "x", tiled=True)
            return jax.lax.psum_scatter(jnp.tanh(g) * jax.lax.psum(jnp.sum(g), "x"), "x",
                                        tiled=True)
        f = jax.jit(jax.shard_map(model, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
        x = global_array(_random(rs, (n * 4096,), "float32"), mesh, P("x"))
        ref = np.asarray(f(x).addressable_shards[0].data)
        with jax_symm.use_symmetric_memory(), jax_symm.settings.force_window(True):
            text = f.lower(x).as_text()
            _poison()
            got = np.asarray(f(x).addressable_shards[0].data)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * n)
        return dict(calls=_custom_calls(text))
    if name == "arena-growth":
        if jax_symm._nccl_path.choice().path == "xla":
            return dict(calls=None, skipped="the XLA path has no arena of jax_symm's own")
        return _arena_growth(mesh, n, rs)
    if name == "captured-chain":
        with jax_symm.settings.force_window(True):
            ours = captured_chain(jax_symm.all_gather, jax_symm.psum_scatter, mesh)
            x0 = global_array(_random(rs, (n * 4096,), "float32"), mesh, P("x"))
            text = ours.lower(x0).as_text()
        ref = captured_chain(jax.lax.all_gather, jax.lax.psum_scatter, mesh)
        for _ in range(5):
            x = global_array(_random(rs, (n * 4096,), "float32"), mesh, P("x"))
            _poison()
            with jax_symm.settings.force_window(True):  # jit's cache key: the same program
                a = np.asarray(ours(x).addressable_shards[0].data)
            b = np.asarray(ref(x).addressable_shards[0].data)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * n ** 8)
        return dict(calls=_custom_calls(text))
    raise ValueError(name)


def _arena_growth(mesh, n: int, rs) -> dict:
    """Small, large (more than the arena holds), small: in one program and
    across programs, with the earlier programs run again afterwards."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    import jax_symm

    def largest_arena() -> int:
        comms = jax_symm.info()["nccl"]["communicators"]
        return max((max(c["arena_bytes"]) for c in comms if c["arena_bytes"]), default=0)

    def gather_fn():
        return jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "x", tiled=True),
                                     mesh=mesh, in_specs=P("x"), out_specs=P("x")))

    def check(f, elems):
        data = _random(rs, (n * elems,), "float32")
        _poison()
        _check_shards(f(global_array(data, mesh, P("x"))), np.concatenate([data] * n), 0,
                      f"arena growth at {elems * 4} bytes per rank")

    with jax_symm.settings.force_window(True):
        small_fn = gather_fn()
        check(small_fn, 1024)
        before = largest_arena()
        big = before // 4 // n + (1 << 18)  # float32 elements per rank: output > arena
        check(gather_fn(), big)             # a second program: the arena grows
        grown = largest_arena()
        check(small_fn, 1024)               # the first program still names its arena

        def three(a, b, c):
            return (jax_symm.all_gather(a, "x", tiled=True),
                    jax_symm.all_gather(b, "x", tiled=True),
                    jax_symm.all_gather(c, "x", tiled=True))
        f = jax.jit(jax.shard_map(three, mesh=mesh, in_specs=(P("x"),) * 3,
                                  out_specs=(P("x"),) * 3))
        big2 = grown // 4 // n + (1 << 18)
        datas = [_random(rs, (n * e,), "float32") for e in (1024, big2, 1024)]
        _poison()
        outs = f(*[global_array(d, mesh, P("x")) for d in datas])
        for out, d in zip(outs, datas):
            _check_shards(out, np.concatenate([d] * n), 0, "arena growth in one program")
        check(small_fn, 1024)
    return dict(calls=None, before=before, grown=grown, after=largest_arena())


SPECIALS = ("grad-through-all_gather", "eight-independent-gathers", "scope-on-a-lax-program",
            "arena-growth", "captured-chain")


def suite(seed: int) -> dict:
    """Every case, in order; returns {case: summary or {"error": traceback}}."""
    import jax

    import jax_symm

    world = jax.device_count()
    rs = np.random.RandomState(seed)
    out = {}
    for case in _cases(world):
        try:
            out[case.name] = dict(_run_case(case, world, rs), expect_calls=case.expect_calls)
        except Exception:  # noqa: BLE001  (reported per case)
            out[case.name] = dict(error=traceback.format_exc()[-3000:])
    for name in SPECIALS:
        try:
            out[name] = _run_special(name, world, rs)
        except Exception:  # noqa: BLE001
            out[name] = dict(error=traceback.format_exc()[-3000:])
    info = jax_symm.info()["nccl"]
    path = jax_symm._nccl_path.choice().path
    everyone = np.asarray([[d.id for d in jax.devices()]], dtype=np.int64)
    out["_info"] = dict(version=info["version"], path=path, all_to_all=info["all_to_all"],
                        spans_nccl_hosts=bool(jax_symm._nccl.groups_span_nccl_hosts(everyone)),
                        communicators=[
        {k: c[k] for k in ("members", "arena_bytes", "symmetric_windows", "symmetric_kernels")}
        for c in info["communicators"]], aborted=info["aborted"],
        crossover={k: jax_symm._dispatch.crossover_bytes(k, world, copies=path == "own")
                   for k in ("all_gather", "reduce_scatter", "all_reduce")})
    return out


# ------------------------------------------------------------- a peer that dies


class WrongValues(AssertionError):
    """A step handed back wrong values and no error."""


def _watchdog_rounds() -> int:
    from jax_symm._native import ext

    return int(ext.nccl_watchdog_rounds())


def killed_peer(report_dir: str, use_lax: bool, when: str, kill_after: int,
                max_iters: int) -> dict:
    """Both processes loop a chain of gathers and scatters; process 1
    SIGKILLs itself: `when="mid"` a few ms after dispatching step
    `kill_after` (so in the middle of its collectives), `when="between"`
    after step `kill_after` completed and before the next. Process 0 records
    when and what it raised in report_dir/survivor.json and leaves with
    os._exit(0); process 1 records the kill in killed.json."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    me = jax.process_index()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGTERM; SIGKILL bounds us
    mesh = _mesh("1d")
    n = jax.device_count()
    lib = jax.lax if use_lax else jax_symm

    def body(a):
        for i in range(4):
            a = lib.psum_scatter(lib.all_gather(a, "x", tiled=True) * 0.5, "x", tiled=True)
        return a

    with jax_symm.settings.force_window(True):
        f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
        data = np.arange(n * 256 * 1024, dtype=np.float32) % 7 + 1
        xs = [global_array(data * (i + 1), mesh, P("x")) for i in range(8)]
        text = f.lower(xs[0]).as_text()
        # Each device's shard, scaled, in place; the input changes every step,
        # so a step whose collective did nothing cannot pass with stale data.
        expected = [data * (i + 1) * (n * 0.5) ** 4 for i in range(8)]

    def kill(delay: float):
        time.sleep(delay)
        write_json(os.path.join(report_dir, "killed.json"),
                   dict(t_killed=time.time(), pid=os.getpid()))
        print(f"killing myself at {time.time():.3f}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    seen = {}

    def watch_aborted():  # when this process's watchdog marked a communicator
        while not seen:
            if jax_symm.info()["nccl"]["aborted"]:
                seen["t"] = time.time()
                print(f"watchdog marked a communicator aborted at {seen['t']:.3f}", flush=True)
            time.sleep(0.02)

    if me == 0 and not use_lax:
        threading.Thread(target=watch_aborted, daemon=True).start()
    completed, t_call = 0, time.time()
    force = jax_symm.settings.force_window(True)  # a jit option: the calls need it too
    force.__enter__()
    try:
        for i in range(max_iters):
            if me == 1 and i == kill_after:
                if when == "mid":
                    threading.Thread(target=kill, args=(0.005,), daemon=True).start()
                else:
                    kill(0.0)
            t_call = time.time()
            out = jax.block_until_ready(f(xs[i % 8]))
            shard = out.addressable_shards[0]
            got, want = np.asarray(shard.data), expected[i % 8][shard.index]
            if not np.allclose(got, want, rtol=1e-5):
                raise WrongValues(f"step {i}: wrong values without an error "
                                  f"(max {float(np.max(np.abs(got - want)))})")
            completed += 1
            print(f"step {i} done at {time.time():.3f}", flush=True)
    except BaseException as e:  # noqa: BLE001  (what we are testing)
        if me == 0:
            write_json(os.path.join(report_dir, "survivor.json"), dict(
                completed=completed, t_call=t_call, t_raised=time.time(),
                type=type(e).__name__, message=str(e)[:4000], custom_calls=_custom_calls(text),
                aborted=jax_symm.info()["nccl"]["aborted"] if not use_lax else [],
                t_marked=seen.get("t"), watchdog_rounds=_watchdog_rounds()))
            os._exit(0)
        raise
    if me == 0:
        write_json(os.path.join(report_dir, "survivor.json"),
                   dict(completed=completed, message=None, custom_calls=_custom_calls(text)))
        os._exit(0)
    time.sleep(60)
    return {}


def stalled_peer(report_dir: str, healthy_s: float, stall_s: float) -> dict:
    """Run with JAX_SYMM_GPU_TIMEOUT_S small. Both processes first loop a chain of
    collectives for `healthy_s`, dispatching ahead and blocking only at the
    end (no stall may be seen there); then process 1 sleeps `stall_s`, alive,
    while process 0 calls the next step, which must fail with the stall
    bound's NcclCommunicatorAborted. Each records what it raised and when in
    report_dir/process<i>.json and lets it propagate (so its peer is told)."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    me = jax.process_index()
    mesh = _mesh("1d")
    n = jax.device_count()

    def body(a):
        for _ in range(4):
            a = jax_symm.psum_scatter(jax_symm.all_gather(a, "x", tiled=True) * 0.5, "x",
                                      tiled=True)
        return a

    report = {"healthy_steps": 0}
    with jax_symm.settings.force_window(True):
        f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
        data = np.arange(n * 64 * 1024, dtype=np.float32) % 7 + 1
        x = global_array(data, mesh, P("x"))
        report["custom_calls"] = _custom_calls(f.lower(x).as_text())
        try:
            t0 = time.time()
            while time.time() - t0 < healthy_s:  # queued ahead: blocks once per 50
                outs = [f(x) for _ in range(50)]
                jax.block_until_ready(outs)
                report["healthy_steps"] += 50
            shard = outs[-1].addressable_shards[0]
            report["healthy_ok"] = bool(np.allclose(
                np.asarray(shard.data), (data * (n * 0.5) ** 4)[shard.index], rtol=1e-5))
            report["healthy_s"] = time.time() - t0
            # What the beacon counted: every collective of every healthy step.
            comm = jax_symm.info()["nccl"]["communicators"][0]
            report["beacon_done"] = comm["collectives_done"]
            report["stall_watch"] = comm["stall_watch"]
            if me == 1:
                report["t_sleep"] = time.time()
                for _ in range(int(stall_s * 10)):  # an exception can arrive between naps
                    time.sleep(0.1)
            report["t_call"] = time.time()
            jax.block_until_ready(f(x))
            report["type"] = None
        except BaseException as e:  # noqa: BLE001  (what we are testing)
            report.update(t_raised=time.time(), type=type(e).__name__, message=str(e)[:4000])
            write_json(os.path.join(report_dir, f"process{me}.json"), report)
            raise
    write_json(os.path.join(report_dir, f"process{me}.json"), report)
    return report


def probe() -> dict:
    """One forced window-path all-gather and one reduce-scatter, for NCCL's
    own log (run with NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,REG)."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    mesh = _mesh("1d")
    n = jax.device_count()
    data = np.arange(n * 4096, dtype=np.float32)
    x = global_array(data, mesh, P("x"))
    with jax_symm.settings.force_window(True):
        f = jax.jit(jax.shard_map(lambda a: jax_symm.psum_scatter(
            jax_symm.all_gather(a, "x", tiled=True), "x", tiled=True), mesh=mesh,
            in_specs=P("x"), out_specs=P("x")))
        out = f(x)
    _check_shards(out, data * n, 0, "probe")
    return jax_symm.info()["nccl"]
