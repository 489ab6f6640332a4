"""Workers for tests/faults/test_peer_watch.py (CPU processes, no NCCL needed).

The peer watch (jax_symm/_peer_watch.py) tells the NCCL layer which peer
processes are gone; here that call is replaced by one that records it, so
the watch itself is tested where CI runs.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import write_json


class _Recorder:
    def __init__(self, path: str):
        self.path = path

    def nccl_abort_groups_with(self, global_ids, cause):
        write_json(self.path, dict(ids=[int(i) for i in global_ids], cause=cause,
                                   t=time.time()))
        return 1


def _open_descriptors(count: int) -> list[int]:
    """Holds `count` more descriptors open, so that every socket made after
    this has a number >= count (select.select refuses those >= 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            raise RuntimeError(f"RLIMIT_NOFILE's hard limit {hard} is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]


def _dial(address: str):
    import socket

    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _slow_client(address: str, stop: threading.Event) -> None:
    """A stray client: one byte every 0.5 s, never a whole line."""
    conn = _dial(address)
    while not stop.wait(0.5):
        try:
            conn.send(b"x")
        except OSError:
            return


def _attack(how: str, report_dir: str) -> None:
    """Process 1, before it joins the watch: attacks process 0's port the way
    someone outside the job (or one who can read its key-value store) could."""
    from jax_symm import _bootstrap

    address = _bootstrap.fetch("peer_watch/0", 0, "process 0's peer-watch address")
    token = _bootstrap.fetch("peer_watch_token", 0, "the token")
    held = []
    if how == "slow":
        threading.Thread(target=_slow_client, args=(address, threading.Event()),
                         daemon=True).start()
    elif how == "forged":
        # Each must be refused, neither taken for a peer nor crashing the
        # acceptor: an index >= the process count, a non-ASCII digit (isdigit()
        # is true, int() raises), our own index, a sign, a wrong token.
        for line in [f"{token}:5", f"{token}:\u00b2", f"{token}:0", f"{token}:-1",
                     f"{token}:+1", f"{'0' * len(token)}:1", f"{token}:1x"]:
            conn = _dial(address)
            conn.sendall(line.encode() + b"\n")
            held.append(conn)
    elif how == "impostor":
        # A valid greeting for index 1 that is not process 1: the first valid
        # one wins, so the real process 1 must be refused, loudly.
        conn = _dial(address)
        conn.sendall(f"{token}:1\n".encode())
        held.append(conn)
    time.sleep(0.3)  # let process 0 see the attack before the real greeting
    _held.extend(held)


_held: list = []  # the attacker's connections stay open


def watched(report_dir: str, how: str, attack: str = "", descriptors: int = 0) -> None:
    """Both processes join the peer watch; process 1 then leaves `how`
    ("kill", "raise" or "bye"); process 0 reports what its watch said.
    `attack`: process 1 first attacks process 0's port ("slow", "forged",
    "impostor"); "broken": process 0's watcher thread fails. `descriptors`:
    each process first holds that many descriptors open."""
    import jax

    import jax_symm._native as native
    from jax_symm import _peer_watch

    me = jax.process_index()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's; its SIGKILL bounds us
    fds = _open_descriptors(descriptors) if descriptors else []
    report = os.path.join(report_dir, f"abort{me}.json")  # what this process saw
    native.ext = _Recorder(report)  # what the watch thread calls
    devices_of = {}
    for d in jax.devices():
        devices_of.setdefault(d.process_index, []).append(d.id)
    if me == 1 and attack in ("slow", "forged", "impostor"):
        _attack(attack, report_dir)
    started = time.time()
    try:
        _peer_watch.start(devices_of)
    except RuntimeError as e:
        try:  # a later lowering must not go on unwatched either
            _peer_watch.start(devices_of)
            again = ""
        except RuntimeError as e2:
            again = str(e2)
        write_json(os.path.join(report_dir, f"refused{me}.json"), dict(error=str(e),
                                                                       again=again))
        os._exit(0)
    write_json(os.path.join(report_dir, f"started{me}.json"),
               dict(started=started, done=time.time(),
                    sockets=[c.fileno() for c in _peer_watch._peers.values()]))
    if me == 0 and attack == "broken":
        def broken(conn):
            raise RuntimeError("an injected fault")
        _peer_watch._read = broken
    if me == 1:
        if attack == "broken":
            time.sleep(1.0)  # process 0 breaks its watcher first
        if attack == "slow":  # the attack lasts until process 0 is ready (or 30 s)
            ready = os.path.join(report_dir, "started0.json")
            deadline = time.time() + 30
            while time.time() < deadline and not os.path.exists(ready):
                time.sleep(0.05)
        write_json(os.path.join(report_dir, "left.json"), dict(t=time.time(), pid=os.getpid()))
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "raise":
            try:
                raise RuntimeError("a failing step")
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
            os._exit(1)
        atexit._run_exitfuncs()  # a normal end: goodbye, then gone
        os._exit(0)
    deadline = time.time() + 5
    while time.time() < deadline and not os.path.exists(report):
        time.sleep(0.02)
    write_json(os.path.join(report_dir, "survivor.json"),
               dict(devices_of={str(k): v for k, v in devices_of.items()}))
    del fds
    os._exit(0)
