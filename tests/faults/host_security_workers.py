"""Worker functions for tests/faults/test_host_security.py (the host
transport's shared-memory windows belong to the job).

Multi-process workers run inside one process of a jax.distributed CPU job
(2 processes x 2 devices), started by jax_symm.testing.run_multiprocess or, for
the cases where the test must control how a peer dies (a zombie), by the test
itself through the same ``python -m jax_symm.testing --worker`` command line.
Top-level functions of this module so that a fresh interpreter can import them.

Workers that outlive a dead peer cannot return through the launcher (it stops
every worker as soon as one dies, and jax.distributed's shutdown may hang or
abort without the peer): they write a JSON report into a directory the test
gives them, then leave with os._exit, as reliability_workers.killed_peer does.

The ``prepare_cases`` / ``create_while_scanning`` / ``scan_forever`` helpers
need no JAX job: tests run them in a plain subprocess (python -c) because they
change the extension's global host configuration.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
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
                      keep_windows_until_every_process_looked as _keep_windows_until_all_looked,
                      mesh_1d as _mesh_1d, write_json as _write_json)

GROUP = "[0,1,2048,2049]"  # the 4 global devices of a 2 x 2 job, as handlers print them
NAME_RE = re.compile(r"^/jax_symm-[0-9a-f]{32}$")


def _windows() -> list[tuple[str, int]]:
    from jax_symm._native import ext

    return [(name, int(size)) for name, size in ext.host_windows()]


def _file_facts(name: str) -> dict:
    """What /dev/shm holds under a window's name (None: nothing)."""
    try:
        st = os.lstat("/dev/shm" + name)
    except FileNotFoundError:
        return dict(exists=False)
    return dict(exists=True, regular=stat.S_ISREG(st.st_mode), mode=st.st_mode & 0o7777,
                uid=st.st_uid, size=st.st_size, ino=st.st_ino)


# ------------------------------------------------ names, sizes, set-up from two threads


def names_sizes_and_setup(concurrent_setup: bool) -> dict:
    """Optionally calls jax_symm._host.setup() from two threads at once as the
    very first jax_symm use, then lowers and runs three programs:

    - "gather4160": all_gather of 1040 float32 (4,160 bytes) per device;
    - "two_gathers": two independent same-shape all_gathers in one body (two
      call sites: each must get its own window);
    - "scatter_psum": psum_scatter of int32 and psum of float32.

    Every result is checked against numpy here. Returns, per program, the
    windows (name, bytes) its lowering added, and what /dev/shm holds under
    each name while the job is alive.
    """
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm
    from jax_symm import _host

    me = jax.process_index()
    setup_errors: list[str] = []
    setup_hung = False
    if concurrent_setup:
        assert not getattr(_host, "_ready", False), "jax_symm was set up before the threads"
        start = threading.Barrier(2)

        def go() -> None:
            try:
                start.wait(timeout=30)
                _host.setup()
            except BaseException as e:  # noqa: BLE001  (what we are testing)
                setup_errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=go, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        setup_hung = any(t.is_alive() for t in threads)

    mesh = _mesh_1d()
    n = mesh.shape["x"]
    spec = P("x")

    def smap(body, n_out):
        outs = spec if n_out == 1 else (spec,) * n_out
        return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=outs))

    rs = np.random.RandomState(1234 + (7 if concurrent_setup else 0))  # same in every process
    programs = {
        "gather4160": (smap(lambda a: jax_symm.all_gather(a, "x", tiled=True), 1),
                       rs.standard_normal(n * 1040).astype(np.float32)),
        "two_gathers": (smap(lambda a: (jax_symm.all_gather(a, "x", tiled=True),
                                        jax_symm.all_gather(a * 2, "x", tiled=True)), 2),
                        rs.standard_normal(n * 16).astype(np.float32)),
        "scatter_psum": (smap(lambda a: (jax_symm.psum_scatter(a, "x", tiled=True),
                                         jax_symm.psum(a.astype(np.float32), "x")), 2),
                         rs.randint(-1000, 1000, size=(n * n * 8,)).astype(np.int32)),
    }
    windows: dict[str, list] = {}
    alive = []  # windows live as long as their executables: kept until every process looked
    for key, (fn, data) in programs.items():
        before = set(_windows())
        x = _global_array(data, mesh, spec)
        compiled = fn.lower(x).compile()  # lowering is where windows are made
        alive.append(compiled)
        windows[key] = sorted(set(_windows()) - before)
        out = jax.block_until_ready(compiled(x))
        if key == "gather4160":
            for s in out.addressable_shards:
                np.testing.assert_array_equal(np.asarray(s.data), data)
        elif key == "two_gathers":
            for s in out[0].addressable_shards:
                np.testing.assert_array_equal(np.asarray(s.data), data)
            for s in out[1].addressable_shards:
                np.testing.assert_array_equal(np.asarray(s.data), data * 2)
        else:
            total = data.reshape(n, -1).sum(0)
            for s in out[0].addressable_shards:
                np.testing.assert_array_equal(np.asarray(s.data), total[s.index])
            psum = data.astype(np.float32).reshape(n, -1).sum(0)
            for s in out[1].addressable_shards:
                np.testing.assert_array_equal(np.asarray(s.data), psum)
    files = {name: _file_facts(name) for name, _ in _windows()}
    _keep_windows_until_all_looked("host_security/names_sizes_looked")
    return dict(process=me, pid=os.getpid(), euid=os.geteuid(), setup_errors=setup_errors,
                setup_hung=setup_hung, windows=windows, all_windows=_windows(), files=files)


# ---------------------------------------------- a live job while another namespace starts


def live_until_flag(report_dir: str, max_s: float) -> dict:
    """Runs all_gather + psum_scatter on fresh data, checking every result,
    until the test creates report_dir/stop (or max_s passes). After the first
    call process 0 writes report_dir/ready.json with the job's window names and
    pids. Both processes decide to stop together: each device contributes
    whether its process wants to stop to a jax_symm.psum, and every process
    reads the same sum. Returns how many calls ran after 'ready' and whether any
    window's file disappeared or changed inode meanwhile."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    me = jax.process_index()
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    spec = P("x")

    def body(a, stop):
        return (jax_symm.all_gather(a, "x", tiled=True),
                jax_symm.psum_scatter(a, "x", tiled=True),
                jax_symm.psum(stop, "x"))

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec, spec),
                              out_specs=(spec, spec, spec)))
    stop_path = os.path.join(report_dir, "stop")
    rs = np.random.RandomState(99)
    t0 = time.monotonic()
    calls = 0
    inodes: dict[str, int] = {}
    while True:
        data = rs.randint(-1000, 1000, size=(n * n * 256,)).astype(np.int32)
        want_stop = os.path.exists(stop_path) or time.monotonic() - t0 > max_s
        flag = np.full((n,), int(want_stop), np.int32)  # this process's shards only
        g, s, votes = jax.block_until_ready(
            f(_global_array(data, mesh, spec), _global_array(flag, mesh, spec)))
        _check_gather_scatter((g, s), data, n)
        calls += 1
        if calls == 1:
            inodes = {name: _file_facts(name).get("ino") for name, _ in _windows()}
            if me == 0:
                _write_json(os.path.join(report_dir, "ready.json"),
                            dict(windows=sorted(inodes), pid=os.getpid()))
        total = {int(np.asarray(v.data)[0]) for v in votes.addressable_shards}
        assert len(total) == 1, total
        if total.pop() > 0:
            break
    after = {name: _file_facts(name).get("ino") for name in inodes}
    _keep_windows_until_all_looked("host_security/live_until_flag_looked")
    return dict(process=me, pid=os.getpid(), calls=calls, windows=sorted(inodes),
                missing=sorted(k for k, v in after.items() if v is None),
                replaced=sorted(k for k, v in after.items() if v is not None and v != inodes[k]),
                stopped_by_flag=os.path.exists(stop_path), elapsed=time.monotonic() - t0)


# ----------------------------------------------------------------- liveness: dead peers


def _survivor_report(report_dir: str, t_call: float, err: BaseException | None,
                     completed: int) -> None:
    _write_json(os.path.join(report_dir, "survivor.json"), dict(
        t_call=t_call, t_raised=time.time(), completed=completed,
        type=None if err is None else type(err).__name__,
        message=None if err is None else str(err), windows=[w for w, _ in _windows()]))
    os._exit(0)


def peer_waits_to_be_killed(report_dir: str, calls_before: int, fork_child: bool) -> dict:
    """Both processes make `calls_before` checked calls. Then process 1 writes
    report_dir/ready.json and sleeps (the test SIGKILLs it and does not reap
    it, so it stays a zombie), while process 0 makes one more call that can
    only fail; it reports what it caught in report_dir/survivor.json and leaves.

    fork_child=True: process 1 first forks a child that only sleeps (what a
    multiprocessing 'fork' pool or a data-loader worker does) and then kills
    itself; the child outlives it."""
    import jax
    from jax.sharding import PartitionSpec as P

    me = jax.process_index()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the test ends us
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    data = (np.arange(n * n * 64, dtype=np.int32) * 7) % 1000 - 500
    x = _global_array(data, mesh, P("x"))
    for _ in range(calls_before):
        _check_gather_scatter(jax.block_until_ready(f(x)), data, n)
    if me == 1:
        child = None
        if fork_child:
            child = os.fork()
            if child == 0:  # the child touches nothing of JAX's
                time.sleep(60)
                os._exit(0)
        _write_json(os.path.join(report_dir, "ready.json"),
                    dict(pid=os.getpid(), child=child, t_ready=time.time()))
        if fork_child:
            time.sleep(0.3)
            _write_json(os.path.join(report_dir, "killed.json"),
                        dict(pid=os.getpid(), t_killed=time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(120)  # the test kills us first
        os._exit(3)
    t_call = time.time()
    try:
        jax.block_until_ready(f(x))
    except Exception as e:  # noqa: BLE001  (what we are testing)
        _survivor_report(report_dir, t_call, e, calls_before)
    _survivor_report(report_dir, t_call, None, calls_before + 1)
    return {}


def peer_exits_after_lowering(report_dir: str) -> dict:
    """Both processes lower and compile the program; process 1 then leaves with
    os._exit(0) without ever calling it (its parent, the test, does not reap
    it before process 0 has reported); process 0 calls it and reports."""
    import jax
    from jax.sharding import PartitionSpec as P

    me = jax.process_index()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the report must not be cut short
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    f = _gather_scatter_fn(mesh)
    data = np.arange(n * n * 64, dtype=np.int32)
    x = _global_array(data, mesh, P("x"))
    compiled = f.lower(x).compile()
    if me == 1:
        _write_json(os.path.join(report_dir, "exited.json"),
                    dict(pid=os.getpid(), t_exit=time.time()))
        os._exit(0)
    t_call = time.time()
    try:
        jax.block_until_ready(compiled(x))
    except Exception as e:  # noqa: BLE001
        _survivor_report(report_dir, t_call, e, 0)
    _survivor_report(report_dir, t_call, None, 1)
    return {}


# ---------------------------------------------------------- every rank names the cause


def absent_peer_many(report_dir: str, n_programs: int) -> dict:
    """Both processes lower `n_programs` distinct programs (all_gather +
    psum_scatter, each its own call sites); process 1 (alive) never calls
    them, process 0 calls each one and records the error it gets."""
    import jax
    from jax.sharding import PartitionSpec as P

    me = jax.process_index()
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    data = np.arange(n * n * 8, dtype=np.int32)
    x = _global_array(data, mesh, P("x"))
    compiled = [_gather_scatter_fn(mesh).lower(x).compile() for _ in range(n_programs)]
    done_flag = os.path.join(report_dir, "process0.done")
    if me == 1:
        deadline = time.monotonic() + 90
        while not os.path.exists(done_flag) and time.monotonic() < deadline:
            time.sleep(0.05)
        return dict(process=1, pid=os.getpid(), saw_flag=os.path.exists(done_flag))
    results = []
    for c in compiled:
        t0 = time.monotonic()
        try:
            jax.block_until_ready(c(x))
            results.append(dict(type=None, elapsed=time.monotonic() - t0))
        except Exception as e:  # noqa: BLE001
            results.append(dict(type=type(e).__name__, message=str(e),
                                elapsed=time.monotonic() - t0))
    with open(done_flag, "w") as fl:
        fl.write("done\n")
    return dict(process=0, pid=os.getpid(), results=results)


# ------------------------------------------------- plain subprocesses (no JAX job)


def prepare_cases(cases_path: str, out_path: str, open_timeout_s: float) -> None:
    """Runs ext.host_prepare for each case in cases_path (a JSON list of
    {id, site, kind, members, slot, fingerprint, name, create, local_ranks}),
    appending one JSON line per case to out_path *before* and after it runs,
    so that a crash or hang shows which case caused it."""
    from jax_symm._native import ext

    ext.set_host_config(5.0, 0.05, open_timeout_s, False, 0)
    with open(cases_path) as f:
        cases = json.load(f)
    with open(out_path, "a") as out:
        for c in cases:
            out.write(json.dumps(dict(id=c["id"], phase="start")) + "\n")
            out.flush()
            t0 = time.monotonic()
            try:
                ext.host_prepare(c["site"], c["kind"], c["members"], c["slot"],
                                 c["fingerprint"], c["name"], c["create"], c["local_ranks"])
                rec = dict(ok=True)
            except Exception as e:  # noqa: BLE001  (what we are testing)
                rec = dict(ok=False, type=type(e).__name__, message=str(e))
            rec.update(id=c["id"], phase="done", elapsed=time.monotonic() - t0,
                       windows=[w for w, _ in ext.host_windows()])
            out.write(json.dumps(rec) + "\n")
            out.flush()


def hold_window(name: str, slot: int, ready_path: str, stop_path: str, max_s: float) -> None:
    """Creates a window as a live job would and keeps it (and its locks) until
    stop_path appears."""
    from jax_symm._native import ext

    ext.set_host_config(5.0, 0.05, 5.0, False, 0)
    ext.host_prepare(1, "all_gather", [0, 1], slot, 1, name, True, [0])
    with open(ready_path, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + max_s
    while not os.path.exists(stop_path) and time.monotonic() < deadline:
        time.sleep(0.02)


def scan_forever(ready_path: str, stop_path: str, max_s: float) -> None:
    """Runs the start-up scan back to back (what many jax_symm processes
    starting on one host amount to) until stop_path appears."""
    from jax_symm._native import ext

    ext.host_reap_stale()
    with open(ready_path, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + max_s
    while not os.path.exists(stop_path) and time.monotonic() < deadline:
        ext.host_reap_stale()


def create_while_scanning(tag: str, max_creates: int, max_s: float, out_path: str) -> None:
    """Creates windows (as the process serving rank 0 does at lowering) one
    after another while another process runs the start-up scan; after each
    successful creation checks that the name still exists in /dev/shm (the
    peers must find it there), then removes it. Stops at the first window lost.
    Names are jax_symm-<tag><hex> so the test can clean up after a kill."""
    import resource
    import secrets

    from jax_symm._native import ext

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard
    for want in (max_creates + 1000, hard):  # root may raise the hard limit
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            limit = want
            break
        except (ValueError, OSError):
            continue
    ext.set_host_config(5.0, 0.05, 5.0, False, 0)
    max_creates = min(max_creates, limit - 200)  # each window keeps a descriptor
    created = lost = 0
    errors: list[str] = []
    t_end = time.monotonic() + max_s
    while created < max_creates and time.monotonic() < t_end and not lost and not errors:
        name = "/jax_symm-" + tag + secrets.token_hex(16 - len(tag) // 2)
        try:
            # No local ranks: one descriptor per window, nothing else held.
            ext.host_prepare(created + 1, "all_gather", [0, 1], 64, 1, name, True, [])
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
            break
        created += 1
        if os.path.exists("/dev/shm" + name):
            os.unlink("/dev/shm" + name)
        else:
            lost += 1
    _write_json(out_path, dict(created=created, lost=lost, errors=errors,
                               elapsed=max_s - (t_end - time.monotonic())))


def prepare_with_one_descriptor_left(name: str, out_path: str) -> None:
    """Creates a window (this process serving rank 0) when exactly one file
    descriptor is left: creating the segment takes it, and claiming the rank
    needs a second one. Reports the error and whether the name is in /dev/shm."""
    import resource

    from jax_symm._native import ext

    ext.set_host_config(5.0, 0.05, 1.0, False, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    fillers = []
    try:
        while True:
            fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    os.close(fillers.pop())  # exactly one descriptor free
    try:
        ext.host_prepare(1, "all_gather", [0, 1], 64, 1, name, True, [0])
        err = None
    except RuntimeError as e:
        err = str(e)
    for fd in fillers:
        os.close(fd)
    _write_json(out_path, dict(error=err, exists=os.path.exists("/dev/shm" + name),
                               windows=[w for w, _ in ext.host_windows()]))


def cause_from_another_process(report_dir: str, delay_s: float) -> dict:
    """3 processes x 2 devices, one group of all 6. Process 2 (alive) lowers
    the program and never calls it; process 1 calls at once; process 0 calls
    `delay_s` later. Process 1's ranks time out first and record why; process
    0's ranks are still waiting then, so they must fail with the cause that
    process 1 recorded (which ranks, timed out), not a bare 'another rank gave
    up'."""
    import jax
    from jax.sharding import PartitionSpec as P

    me = jax.process_index()
    mesh = _mesh_1d()
    n = mesh.shape["x"]
    data = np.arange(n * n * 8, dtype=np.int32)
    x = _global_array(data, mesh, P("x"))
    compiled = _gather_scatter_fn(mesh).lower(x).compile()
    group = "[" + ",".join(str(d.id) for d in mesh.devices.reshape(-1)) + "]"
    flags = [os.path.join(report_dir, f"process{p}.done") for p in (0, 1)]
    if me == 2:
        deadline = time.monotonic() + 90
        while not all(map(os.path.exists, flags)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return dict(process=2, pid=os.getpid(), group=group,
                    saw_flags=all(map(os.path.exists, flags)))
    if me == 0:
        time.sleep(delay_s)
    t0 = time.monotonic()
    try:
        jax.block_until_ready(compiled(x))
        res = dict(type=None, elapsed=time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001
        res = dict(type=type(e).__name__, message=str(e), elapsed=time.monotonic() - t0)
    with open(flags[me], "w") as fl:
        fl.write("done\n")
    return dict(process=me, pid=os.getpid(), group=group, **res)


def race_driver(tag: str, max_creates: int, max_s: float, tmp: str) -> None:
    """Runs scan_forever and create_while_scanning side by side (two fresh
    processes) and prints the creator's report as 'RACE <json>'. The test runs
    this inside a private /dev/shm where it can, so that the back-to-back scans
    touch no other job's files."""
    import subprocess
    import sys

    ready, stop = os.path.join(tmp, "scanner.ready"), os.path.join(tmp, "stop")
    result = os.path.join(tmp, "created.json")
    env = dict(os.environ)
    call = "import host_security_workers as w; w.{}(*{!r})"
    scanner = subprocess.Popen([sys.executable, "-c", call.format(
        "scan_forever", (ready, stop, max_s + 30))], env=env, cwd=tmp)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready) and time.monotonic() < deadline:
            if scanner.poll() is not None:
                raise RuntimeError(f"the scanner exited with status {scanner.returncode}")
            time.sleep(0.02)
        subprocess.run([sys.executable, "-c", call.format(
            "create_while_scanning", (tag, max_creates, max_s, result))],
            env=env, cwd=tmp, check=True, timeout=max_s + 30)
        with open(result) as f:
            print("RACE " + f.read(), flush=True)
    finally:
        with open(stop, "w"):
            pass
        try:
            scanner.wait(15)
        except subprocess.TimeoutExpired:
            scanner.kill()
            scanner.wait(10)


def header_probe(name: str, out_path: str) -> None:
    """Creates a real 2-rank window with 64-byte slots under `name` (a name the
    stale scan ignores), and reports its first six header words and how many
    bytes precede the slots, then removes it: the tests plant files in the
    format of the extension actually loaded."""
    import struct

    from jax_symm._native import ext

    ext.set_host_config(5.0, 0.05, 1.0, False, 0)
    try:
        ext.host_prepare(1, "all_gather", [0, 1], 64, 4242, name, True, [0])
        with open("/dev/shm" + name, "rb") as f:
            words = struct.unpack("<6Q", f.read(48))
        size = os.stat("/dev/shm" + name).st_size
    finally:
        if os.path.lexists("/dev/shm" + name):
            os.unlink("/dev/shm" + name)
    _write_json(out_path, dict(magic=words[0], version=words[1], world=words[2],
                               slot=words[3], fingerprint=words[4], kind=words[5],
                               header_bytes=size - 2 * 2 * 64))
