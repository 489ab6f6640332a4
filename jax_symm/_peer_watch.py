"""Which processes of a multi-process GPU job are still there.

NCCL does not notice a peer that died while a kernel waits for it (measured
on NCCL 2.28.9 over its socket transport: the survivor's kernel waited on,
and ncclCommGetAsyncError said nothing), and jax.distributed notices only
after its heartbeat timeout. So every pair of processes of the job keeps one
TCP connection open; a process that dies (killed, crashed) closes its end at
once, and its peers' watcher thread aborts every communicator it shares
with that process (ffi/nccl_comms.cc `NcclAbortGroupsWith`), which fails the
calls in flight and every later one.

A process that ends normally says goodbye first, so its peers do not take
its exit for a failure. One that ends with an uncaught exception says so
instead, and its peers abort as for a death: they would otherwise wait for
it inside NCCL.

Nothing from outside the job is trusted: a connection counts only after it
presents the job's token (agreed through the jax.distributed key-value
store) and a process index that has not connected yet.
"""

from __future__ import annotations

import atexit
import secrets
import select
import socket
import sys
import threading

from . import _bootstrap, _compat

_BYE, _FAILED = b"B", b"F"
_lock = threading.Lock()
_started = False
_peers: dict[int, socket.socket] = {}   # process index -> connection
_left: set[int] = set()                 # said goodbye
_failed_here = False
_early: dict[int, bytes] = {}           # what a peer sent after its greeting, before we read


def _first_line(conn: socket.socket) -> tuple[str, bytes]:
    """The greeting line and whatever the peer sent after it (a peer may say
    goodbye before this process gets round to reading its greeting)."""
    data = b""
    try:
        while b"\n" not in data and len(data) < 256:
            chunk = conn.recv(256)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    line, _, rest = data.partition(b"\n")
    return line.decode(errors="replace").strip(), rest


def _local_address() -> str:
    """The address this process reaches the coordinator from (so peers on
    other hosts can reach it too)."""
    from jax._src import distributed

    coordinator = getattr(distributed.global_state, "coordinator_address", None) or "127.0.0.1:1"
    host = coordinator.rsplit(":", 1)[0].strip("[]")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def start(devices_of: dict[int, list[int]]) -> None:
    """Connects this process to every other one (a collective point: the
    first GPU lowering of every process reaches it); idempotent.
    `devices_of`: process index -> its global device ids."""
    global _started
    with _lock:
        if _started or _compat.process_count() == 1:
            return
        _started = True
        import jax

        me, n = jax.process_index(), _compat.process_count()
        token = _bootstrap.agree_on("peer_watch_token", lambda: secrets.token_hex(16),
                                     "the peer watch's token")
        server = socket.create_server(("0.0.0.0", 0), backlog=n)
        address = f"{_local_address()}:{server.getsockname()[1]}"
        addresses = _bootstrap.per_process("peer_watch", address, "peer-watch address")
        for p in range(me):  # connect to the lower indices, accept the higher ones
            host, port = addresses[p].rsplit(":", 1)
            conn = socket.create_connection((host, int(port)),
                                            timeout=_bootstrap.timeout_ms() / 1000)
            conn.sendall(f"{token}:{me}\n".encode())
            _peers[p] = conn
        server.settimeout(_bootstrap.timeout_ms() / 1000)  # raises, never hangs
        while len(_peers) < n - 1:
            conn, _ = server.accept()
            conn.settimeout(5)
            line, rest = _first_line(conn)
            got, _, idx = line.partition(":")
            if got != token or not idx.isdigit() or int(idx) in _peers or int(idx) <= me:
                conn.close()  # not one of ours
                continue
            _peers[int(idx)] = conn
            if rest:  # the peer already said goodbye or failed
                _early[int(idx)] = rest
        server.close()
        for conn in _peers.values():
            conn.settimeout(None)
        threading.Thread(target=_watch, args=(dict(devices_of),), daemon=True,
                         name="jax_symm peer watch").start()
        _install_exit_hooks()


def _watch(devices_of: dict[int, list[int]]) -> None:
    from ._native import ext

    live = dict(_peers)
    early = dict(_early)
    while live:
        ready = [live[p] for p in early if p in live]
        if not ready:
            ready, _, _ = select.select(list(live.values()), [], [])
        for p, conn in list(live.items()):
            if conn not in ready:
                continue
            if p in early:
                data = early.pop(p)
            else:
                try:
                    data = conn.recv(16)
                except OSError:
                    data = b""
            if data.startswith(_BYE):
                _left.add(p)
                del live[p]
                continue
            how = ("ended with an uncaught exception" if data.startswith(_FAILED)
                   else "is gone (killed, crashed or disconnected)")
            del live[p]
            ext.nccl_abort_groups_with(devices_of.get(p, []),
                                       f"process {p} of the job {how}")


def _say(what: bytes) -> None:
    for conn in list(_peers.values()):
        try:
            conn.sendall(what)
        except OSError:
            pass


def _install_exit_hooks() -> None:
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        global _failed_here
        _failed_here = True
        _say(_FAILED)  # before the traceback: peers stop waiting for us now
        previous(kind, value, tb)

    sys.excepthook = excepthook
    atexit.register(lambda: _say(_FAILED if _failed_here else _BYE))
