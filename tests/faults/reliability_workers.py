"""Worker functions for tests/faults/test_reliability.py, run by jax_symm.testing.

Each runs inside one process of a jax.distributed CPU job (2 processes x 2
devices unless the test says otherwise). Top-level functions of this module so
that a fresh interpreter can import them (the launcher puts tests/faults/ on the
workers' sys.path because the tests pass the function objects).

Workers that outlive a dead peer cannot return through the launcher (it stops
every worker as soon as one dies, and jax.distributed's shutdown may hang or
abort without the peer): they write a JSON report into a directory the test
gives them, then leave with os._exit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import (check_gather_scatter as _check_gather_scatter, gather_scatter_fn as _gather_scatter_fn,
                      global_array as _global_array,
                      keep_windows_until_every_process_looked, mesh_1d as _mesh_1d,
                      rss_bytes as _rss_bytes, write_json as _write_json)


def _my_shm_segments() -> list[str]:
    """This process's windows that are in /dev/shm now."""
    from jax_symm._native import ext

    present = set(os.listdir("/dev/shm"))
    return sorted(n.lstrip("/") for n, _ in ext.host_windows() if n.lstrip("/") in present)


# ------------------------------------------------------------ case 1: peer killed


def killed_peer(report_dir: str, kill_after: int, max_iters: int) -> dict:
    """Both processes loop all_gather + psum_scatter on fresh int32 data.

    Process 1 SIGKILLs itself from a side thread a few ms into iteration
    `kill_after` (so usually in the middle of a collective). Process 0 must
    get an exception; it writes report_dir/survivor.json (what it caught, when)
    and leaves with os._exit(0). Process 1 records when it killed itself in
    report_dir/killed.json.
    """
    import jax

    me = jax.process_index()
    # The launcher SIGTERMs every worker ~0.5 s after it sees process 1 die; the
    # survivor's report must not be cut short by that (the launcher's SIGKILL
    # follows 2 s later, which bounds how long process 0 may take).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    from jax.sharding import PartitionSpec as P

    def kill_soon():
        time.sleep(0.005)
        _write_json(os.path.join(report_dir, "killed.json"),
                    dict(t_killed=time.time(), pid=os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

    completed = 0
    for i in range(max_iters):
        data = (np.arange(n * n * 64, dtype=np.int32) * (i + 1)) % 1000 - 500
        x = _global_array(data, mesh, P("x"))
        if me == 1 and i == kill_after:
            threading.Thread(target=kill_soon, daemon=True).start()
        t_call = time.time()
        try:
            out = jax.block_until_ready(f(x))
        except Exception as e:  # noqa: BLE001  (what we are testing)
            if me == 0:
                t_raised = time.time()
                from jax_symm._native import ext

                _write_json(os.path.join(report_dir, "survivor.json"), dict(
                    completed=completed, iteration=i, t_call=t_call, t_raised=t_raised,
                    type=type(e).__name__, message=str(e),
                    windows=[w for w, _ in ext.host_windows()]))
                os._exit(0)
            raise
        _check_gather_scatter(out, data, n)
        completed += 1
        if me == 1 and i > kill_after:
            time.sleep(0.01)  # the side thread is about to kill us
    if me == 0:
        _write_json(os.path.join(report_dir, "survivor.json"),
                    dict(completed=completed, iteration=None, message=None))
        os._exit(0)
    time.sleep(30)  # process 1 never gets here (killed first)
    return dict(completed=completed)


# ------------------------------------------------ case 2: a peer that never arrives


def _timed_call(fn) -> dict:
    """{type, message, elapsed} of an exception `fn` raised (type None if none)."""
    t0 = time.monotonic()
    try:
        fn()
        return dict(type=None, elapsed=time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001
        return dict(type=type(e).__name__, message=str(e), elapsed=time.monotonic() - t0)


def stopped_peer(flag_dir: str) -> dict:
    """Process 1 compiles, then stops itself (SIGSTOP) instead of calling;
    process 0 calls, times out (JAX_SYMM_TIMEOUT_S small), reports what it
    was told, and lets process 1 go on (SIGCONT)."""
    import jax
    from jax.sharding import PartitionSpec as P

    me = jax.process_index()
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    x = _global_array(np.arange(n * n * 8, dtype=np.int32), mesh, P("x"))
    compiled = f.lower(x).compile()
    done_flag = os.path.join(flag_dir, "process0.done")
    if me == 1:
        with open(os.path.join(flag_dir, "process1.pid"), "w") as fl:
            fl.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)  # until process 0 sends SIGCONT
        deadline = time.monotonic() + 60
        while not os.path.exists(done_flag) and time.monotonic() < deadline:
            time.sleep(0.05)
        return dict(process=1, pid=os.getpid())
    pid_file = os.path.join(flag_dir, "process1.pid")
    deadline = time.monotonic() + 60
    while not os.path.exists(pid_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    peer = int(open(pid_file).read())
    try:
        out = dict(process=0, peer=peer,
                   collective=_timed_call(lambda: jax.block_until_ready(compiled(x))))
    finally:
        os.kill(peer, signal.SIGCONT)
        with open(done_flag, "w") as fl:
            fl.write("done\n")
    return out


def absent_peer(flag_dir: str) -> dict:
    """Process 1 compiles (lowering is where processes meet) but never calls;
    process 0 calls and, with JAX_SYMM_TIMEOUT_S set small, must time out.

    Process 0 also checks jax_symm._bootstrap.fetch on a key nobody publishes.
    Process 1 stays alive until process 0 is done, so the peer is 'slow', not
    'gone'.
    """
    import jax
    from jax.sharding import PartitionSpec as P

    from jax_symm import _bootstrap

    me = jax.process_index()
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    data = np.arange(n * n * 8, dtype=np.int32)
    x = _global_array(data, mesh, P("x"))
    compiled = f.lower(x).compile()
    done_flag = os.path.join(flag_dir, "process0.done")
    if me == 1:
        deadline = time.monotonic() + 60
        while not os.path.exists(done_flag) and time.monotonic() < deadline:
            time.sleep(0.05)
        return dict(process=1, pid=os.getpid(), saw_flag=os.path.exists(done_flag))

    out: dict = dict(process=0, pid=os.getpid())
    # Bootstrap: a key nobody publishes, with a tiny wait.
    saved = os.environ.get("JAX_SYMM_BOOTSTRAP_TIMEOUT_S")
    os.environ["JAX_SYMM_BOOTSTRAP_TIMEOUT_S"] = "0.5"
    t0 = time.monotonic()
    try:
        _bootstrap.fetch("reliability/nobody-publishes-this")
        out["fetch"] = dict(type=None)
    except Exception as e:  # noqa: BLE001
        out["fetch"] = dict(type=type(e).__name__, message=str(e),
                            elapsed=time.monotonic() - t0)
    finally:
        if saved is None:
            os.environ.pop("JAX_SYMM_BOOTSTRAP_TIMEOUT_S")
        else:
            os.environ["JAX_SYMM_BOOTSTRAP_TIMEOUT_S"] = saved

    out["collective"] = _timed_call(lambda: jax.block_until_ready(compiled(x)))
    # The call site is now out of step: a second call must fail at once.
    out["again"] = _timed_call(lambda: jax.block_until_ready(compiled(x)))
    with open(done_flag, "w") as fl:
        fl.write("done\n")
    return out


# ---------------------------------------------------------------- case 4: long run


def long_run(n_calls: int, warmup: int, sizes: tuple, check_every: int) -> dict:
    """`n_calls` jitted calls cycling over several sizes (all_gather +
    psum_scatter each), fresh data every call; every `check_every`-th result
    is checked against numpy. Returns the peak RSS over the second half of
    the warm-up (the first `warmup` calls) and over the last `warmup` calls,
    segment counts after warm-up and at the end, and this job's segments."""
    import jax
    from jax.sharding import PartitionSpec as P

    mesh = _mesh_1d()
    n = mesh.shape["x"]
    fns = [_gather_scatter_fn(mesh) for _ in sizes]  # one program per size
    rs = np.random.RandomState(1234)  # same on every process: same global data
    checked = 0
    seg_warm = None
    rss: list = []
    for i in range(n_calls):
        k = i % len(sizes)
        data = rs.randint(-1000, 1000, size=(n * n * sizes[k],)).astype(np.int32)
        x = _global_array(data, mesh, P("x"))
        out = fns[k](x)
        if i % check_every == 0 or i == n_calls - 1:
            _check_gather_scatter(jax.block_until_ready(out), data, n)
            checked += 1
        if i % 10 == 9:  # RSS dips when large buffers are freed: compare peaks
            jax.block_until_ready(out)
            rss.append((i, _rss_bytes()))
        if i == warmup - 1:
            seg_warm = len(_my_shm_segments())
    jax.block_until_ready(out)
    from jax_symm import _compat
    from jax_symm._native import ext

    rss_warm = max(r for i, r in rss if warmup // 2 <= i < warmup)
    rss_end = max(r for i, r in rss if i >= n_calls - warmup)
    # Windows go with their programs: the process that made them removes their
    # names when its programs are freed (here: when it returns), so both count
    # before either returns.
    client = _compat.distributed_client()
    client.wait_at_barrier("reliability/long_run_done", 60_000)
    out = dict(calls=n_calls, checked=checked, rss_warm=rss_warm, rss_end=rss_end,
               seg_warm=seg_warm, seg_end=len(_my_shm_segments()),
               segments=_my_shm_segments(), windows=[w for w, _ in ext.host_windows()])
    keep_windows_until_every_process_looked("reliability/long_run_counted")
    return out


# --------------------------------------------- case 7: a peer that fails in Python


def _interpreter_exit(report_dir: str, exc_info=None) -> None:
    """What the interpreter does when a main program ends, up to where
    jax.distributed's shutdown would block: the launcher's worker catches
    every exception itself (and leaves with os._exit), so a test worker walks
    that path by hand. sys.excepthook for an uncaught exception, then
    the join of non-daemon threads, then atexit (where jax_symm marks us leaving);
    after that the real interpreter tears jax.distributed down, which waits
    for peers that wait for us: here, a sleep that the survivor ends with a
    SIGKILL. Our locks stay held throughout."""
    import atexit
    import sys

    _write_json(os.path.join(report_dir, "exited.json"),
                dict(pid=os.getpid(), t_exit=time.time()))
    if exc_info is not None:
        sys.excepthook(*exc_info)
    threading._shutdown()  # joins non-daemon threads (jax_symm marks us leaving after)
    atexit._run_exitfuncs()
    time.sleep(60)
    os._exit(3)


def _leave(report_dir: str, how: str) -> None:
    """Process 1 leaves the job `how`: 'exception', 'sigint', 'return', 'kill'."""
    import sys

    if how == "kill":
        _write_json(os.path.join(report_dir, "exited.json"),
                    dict(pid=os.getpid(), t_exit=time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "return":
        _interpreter_exit(report_dir)
    try:
        if how == "sigint":
            # Python's Ctrl-C handler, which a process started with SIGINT
            # ignored (a job run in the background by a shell, nohup) lacks;
            # raised in this thread, so that the main thread handles it at once.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.raise_signal(signal.SIGINT)  # Python raises KeyboardInterrupt here
            time.sleep(5)
        raise ValueError("boom in process 1")
    except BaseException:  # noqa: BLE001  (what an uncaught exception would reach)
        _interpreter_exit(report_dir, sys.exc_info())


def _survivor_report(report_dir: str, fn, **extra) -> None:
    """Calls fn(); writes what it raised (and when) to survivor.json; SIGKILLs
    process 1 (stuck, like a real one, on its way out) and leaves."""
    t_call = time.time()
    try:
        fn()
        rep = dict(type=None)
    except Exception as e:  # noqa: BLE001
        rep = dict(type=type(e).__name__, message=str(e))
    rep.update(t_call=t_call, t_raised=time.time(), **extra)
    _write_json(os.path.join(report_dir, "survivor.json"), rep)
    exited = os.path.join(report_dir, "exited.json")
    deadline = time.monotonic() + 20
    while not os.path.exists(exited) and time.monotonic() < deadline:
        time.sleep(0.02)
    if os.path.exists(exited):
        import json

        with open(exited) as f:
            pid = json.load(f)["pid"]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


def peer_leaves_mid_run(report_dir: str, how: str) -> dict:
    """Both processes run a gather + scatter program once; process 1
    then leaves the job `how` (its interpreter's normal exit, with its locks
    held), while process 0 calls the same program again and must fail."""
    import jax
    from jax.sharding import PartitionSpec as P

    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    data = np.arange(n * n * 16, dtype=np.int32)
    x = _global_array(data, mesh, P("x"))
    _check_gather_scatter(jax.block_until_ready(f(x)), data, n)
    if jax.process_index() == 1:
        _leave(report_dir, how)

    def calls():
        for i in range(100):
            jax.block_until_ready(f(_global_array(data * (i + 2), mesh, P("x"))))
    _survivor_report(report_dir, calls)
    return {}


def peer_gone_before_new_program(report_dir: str, how: str) -> dict:
    """Both run a program; process 0 lowers and compiles a new one
    (making its windows), and only then process 1, which never lowered it
    (so never claimed a rank in its windows), leaves `how`; process 0 runs
    the new program and must fail."""
    import jax
    from jax.sharding import PartitionSpec as P

    # The launcher stops every worker soon after process 1 dies; the survivor's
    # report must not be cut short (its SIGKILL follows 2.5 s later).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    data = np.arange(n * n * 16, dtype=np.int32)
    _check_gather_scatter(jax.block_until_ready(f(_global_array(data, mesh, P("x")))), data, n)
    compiled = os.path.join(report_dir, "compiled")
    if jax.process_index() == 1:
        deadline = time.monotonic() + 60
        while not os.path.exists(compiled) and time.monotonic() < deadline:
            time.sleep(0.02)
        _leave(report_dir, how)
    bigger = _global_array(np.arange(n * n * 64, dtype=np.int32), mesh, P("x"))
    g = _gather_scatter_fn(mesh).lower(bigger).compile()  # new call sites, new windows
    with open(compiled, "w") as fl:
        fl.write("compiled\n")
    exited = os.path.join(report_dir, "exited.json")
    deadline = time.monotonic() + 30
    while not os.path.exists(exited) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # process 1 is gone (or stuck on its way out) by now
    _survivor_report(report_dir, lambda: jax.block_until_ready(g(bigger)))
    return {}


def peer_leaves_before_first_use(report_dir: str, how: str, who: int) -> dict:
    """Before set-up: process `who` leaves the job `how` before its
    first jax_symm call, so it never joins the liveness record nor publishes
    its part of the set-up (the window secret and the record from process 0,
    every process's host name); the other process lowers and runs a program,
    whose set-up waits for that part in the key-value store, and must fail."""
    import jax
    from jax.sharding import PartitionSpec as P

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as in peer_gone_before_new_program
    if jax.process_index() == who:
        _leave(report_dir, how)
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    x = _global_array(np.arange(n * n * 16, dtype=np.int32), mesh, P("x"))
    _survivor_report(report_dir, lambda: jax.block_until_ready(f(x)))
    return {}


def creator_fails_setup(report_dir: str) -> dict:
    """After a first program, process 0 (which makes every window:
    it serves rank 0) lowers a second program with no file descriptor left,
    so it cannot create the window; process 1 lowers the same program and
    waits to open that window. Both report what their lowering raised."""
    import resource

    import jax
    from jax.sharding import PartitionSpec as P

    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    data = np.arange(n * n * 16, dtype=np.int32)
    _check_gather_scatter(jax.block_until_ready(f(_global_array(data, mesh, P("x")))), data, n)
    g = _gather_scatter_fn(mesh)
    x = _global_array(np.arange(n * n * 64, dtype=np.int32), mesh, P("x"))
    fillers: list = []
    if jax.process_index() == 0:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
        try:
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
    t0 = time.monotonic()
    try:
        g.lower(x)
        out = dict(type=None)
    except Exception as e:  # noqa: BLE001
        out = dict(type=type(e).__name__, message=str(e))
    out["elapsed"] = time.monotonic() - t0
    for fd in fillers:
        os.close(fd)
    return out


def many_call_sites(programs: int) -> dict:
    """Lowers and runs `programs` programs of one all-gather each;
    counts this process's open descriptors and windows before, after, and
    after the programs are freed (del + jax.clear_caches), and which of this
    job's window names are still in /dev/shm once both processes freed theirs."""
    import gc

    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm
    from jax_symm._native import ext

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    mesh = _mesh_1d()
    n = mesh.shape["x"]
    warm = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "x", tiled=True),
                                 mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    data = np.arange(n * 8, dtype=np.float32)
    jax.block_until_ready(warm(_global_array(data, mesh, P("x"))))  # set-up done
    fds_before, windows_before = fds(), len(ext.host_windows())
    fns = []
    for k in range(programs):
        fn = jax.jit(jax.shard_map(lambda a: jax_symm.all_gather(a, "x", tiled=True),
                                   mesh=mesh, in_specs=P("x"), out_specs=P("x")))
        # A size of its own: programs identical in every respect share call sites.
        data_k = np.arange(n * (9 + k), dtype=np.float32)
        out = jax.block_until_ready(fn(_global_array(data_k, mesh, P("x"))))
        np.testing.assert_array_equal(np.asarray(out.addressable_shards[0].data), data_k)
        fns.append(fn)
    names = [w.lstrip("/") for w, _ in ext.host_windows()]
    fds_after, windows_after = fds(), len(names)
    del fns, fn, out, warm
    jax.clear_caches()
    gc.collect()
    windows_freed = len(ext.host_windows())
    from jax_symm import _compat

    _compat.distributed_client().wait_at_barrier("reliability/freed", 30_000)
    present = set(os.listdir("/dev/shm"))
    return dict(fds_before=fds_before, fds_after=fds_after, windows_before=windows_before,
                windows_after=windows_after, windows_freed=windows_freed,
                left=sorted(set(names) & present))


def single_process_long_run(n_calls: int) -> dict:
    """`n_calls` all_gather + psum_scatter calls over three sizes on this
    process's 8 devices, every 50th checked; RSS peaks after warm-up."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import jax_symm
    from jax_symm._native import ext
    from _mp_util import rss_bytes

    mesh = Mesh(np.array(jax.devices()), ("x",))
    n = mesh.shape["x"]
    sizes = (16, 512, 8192)
    fns = [jax.jit(jax.shard_map(
        lambda a: (jax_symm.all_gather(a, "x", tiled=True),
                   jax_symm.psum_scatter(a, "x", tiled=True)),
        mesh=mesh, in_specs=P("x"), out_specs=(P("x"), P("x")))) for _ in sizes]
    rng = np.random.default_rng(7)
    warmup, rss, checked = n_calls // 4, [], 0
    t0 = time.monotonic()
    for i in range(n_calls):
        k = i % len(sizes)
        data = rng.integers(-1000, 1000, size=(n * n * sizes[k],), dtype=np.int32)
        g, s = fns[k](jax.device_put(data, NamedSharding(mesh, P("x"))))
        if i % 50 == 0 or i == n_calls - 1:
            np.testing.assert_array_equal(np.asarray(g), np.tile(data, n))
            np.testing.assert_array_equal(np.asarray(s), data.reshape(n, -1).sum(0))
            checked += 1
        if i % 10 == 9:  # RSS dips when large buffers are freed: compare peaks
            jax.block_until_ready((g, s))
            rss.append((i, rss_bytes()))
    jax.block_until_ready((g, s))
    rss_warm = max(r for i, r in rss if warmup // 2 <= i < warmup)
    growth = (max(r for i, r in rss if i >= n_calls - warmup) - rss_warm) / 2**20
    # Only this process's own windows: other jobs on the host come and go in
    # /dev/shm meanwhile (a listing before and after counted theirs).
    return dict(calls=n_calls, seconds=time.monotonic() - t0, checked=checked,
                growth_mib=growth, windows=len(ext.host_windows()),
                shm_left=_my_shm_segments())
