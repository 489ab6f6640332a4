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

What reaches the listening port is not trusted (README, "Trust boundary"):

- it listens only on the address this process reaches the coordinator from;
- greetings are read concurrently, each within `GREETING_DEADLINE_S` of its
  connection, so a slow or silent client delays no real peer;
- a greeting counts only if it carries the job's token and a process index in
  ASCII digits, above ours and below the process count, that has not been
  claimed; the first valid one per index wins and is acknowledged, so a real
  peer whose index an impostor took fails loudly instead of going unwatched;
- the watcher thread waits with `selectors` (any descriptor number), and an
  exception there marks every communicator it guards as failed, with the
  cause, rather than leaving them silently unguarded.
"""

from __future__ import annotations

import atexit
import hmac
import secrets
import selectors
import socket
import sys
import threading
import time
import traceback

from . import _bootstrap, _compat, _liveness

_BYE, _FAILED, _ACK = b"B", b"F", b"OK\n"
# The longest a connection may take to send its whole greeting (the token and
# an index, ~40 bytes: a peer sends it in one write, right after connecting).
GREETING_DEADLINE_S = 0.5
_MAX_GREETING = 128  # bytes; a longer line is not ours
# Connections read at once; beyond this the oldest pending one is dropped (a
# flood cannot grow our memory or descriptors without bound).
_MAX_PENDING = 64
_lock = threading.Lock()
_started = False
_broken: BaseException | None = None  # why start() failed: every later call raises it too
_peers: dict[int, socket.socket] = {}   # process index -> connection
_left: set[int] = set()                 # said goodbye
_failed_here = False
_early: dict[int, bytes] = {}           # what a peer sent after its greeting, before we read


def parse_greeting(line: bytes, token: str, me: int, n: int) -> int | None:
    """The process index a greeting line claims, if it is valid for us: the
    job's token, then ':' and an index in ASCII digits with me < index < n
    (lower indices are the ones we connect to)."""
    got, sep, index = line.partition(b":")
    if not sep or not hmac.compare_digest(got, token.encode()):
        return None
    # isdigit() alone accepts '²' or Arabic-Indic digits, which int() refuses.
    if not (0 < len(index) <= 6 and index.isascii() and index.isdigit()):
        return None
    p = int(index)
    return p if me < p < n else None


def _local_address() -> str:
    """The address this process reaches the coordinator from: the one
    interface its peers can reach it on, and the only one it listens on."""
    from jax._src import distributed

    coordinator = getattr(distributed.global_state, "coordinator_address", None) or "127.0.0.1:1"
    host = coordinator.rsplit(":", 1)[0].strip("[]")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


class _Greetings:
    """The accepting side of start(): every pending connection's greeting is
    read at once (a selector, not one connection at a time), each within
    GREETING_DEADLINE_S of its connection, until every higher-indexed peer
    has been accepted into `_peers`."""

    def __init__(self, server: socket.socket, token: str, me: int, n: int):
        self.server, self.token, self.me, self.n = server, token, me, n
        self.sel = selectors.DefaultSelector()
        self.pending: dict[socket.socket, tuple[float, bytearray]] = {}  # -> (deadline, data)

    def run(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.server.setblocking(False)
        self.sel.register(self.server, selectors.EVENT_READ)
        try:
            while not self._done():
                now = time.monotonic()
                if now >= deadline:
                    missing = [p for p in range(self.me + 1, self.n) if p not in _peers]
                    raise TimeoutError(
                        f"jax_symm: process {self.me}'s peer watch waited {timeout_s:g} s for "
                        f"processes {missing} to connect (JAX_SYMM_BOOTSTRAP_TIMEOUT_S sets "
                        "the wait). Is every process running the same program?")
                for conn, (until, _) in list(self.pending.items()):
                    if until <= now:
                        self._drop(conn)  # too slow for a peer: a stray or hostile client
                wait = min([deadline] + [u for u, _ in self.pending.values()]) - now
                ready = {key.fileobj for key, _ in self.sel.select(max(0.0, wait))}
                if self.server in ready:
                    ready.update(self._accept_backlog())
                # In the order of connection, so that of two valid greetings
                # for one index the earlier connection wins.
                for conn in [c for c in self.pending if c in ready]:
                    if self._done():
                        break
                    self._read(conn)
        finally:
            for conn in list(self.pending):
                self._drop(conn)
            self.sel.close()

    def _done(self) -> bool:
        return len(_peers) == self.n - 1

    def _accept_backlog(self) -> list[socket.socket]:
        """Every connection waiting in the backlog, in its order."""
        accepted = []
        while True:
            try:
                conn, _addr = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            if len(self.pending) >= _MAX_PENDING:  # a flood: the oldest goes
                self._drop(min(self.pending, key=lambda c: self.pending[c][0]))
            conn.setblocking(False)
            self.pending[conn] = (time.monotonic() + GREETING_DEADLINE_S, bytearray())
            self.sel.register(conn, selectors.EVENT_READ)
            accepted.append(conn)  # its greeting may be there already

    def _drop(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        del self.pending[conn]
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        """Reads what has come of one greeting; accepts the peer once the
        line is whole and valid, drops the connection if it is not ours."""
        try:
            chunk = conn.recv(256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        data = self.pending[conn][1]
        data += chunk
        if b"\n" not in data:
            if not chunk or len(data) > _MAX_GREETING:
                self._drop(conn)
            return
        line, _, rest = bytes(data).partition(b"\n")
        p = parse_greeting(line.strip(), self.token, self.me, self.n)
        if p is None or p in _peers:
            self._drop(conn)  # not one of ours, or its index is taken: the first valid one wins
            return
        self.sel.unregister(conn)
        del self.pending[conn]
        conn.setblocking(True)
        conn.settimeout(GREETING_DEADLINE_S * 4)
        try:
            conn.sendall(_ACK)  # the peer waits for this (see _connect)
        except OSError:
            conn.close()
            return
        conn.settimeout(None)
        _peers[p] = conn
        if rest:  # the peer already said goodbye or failed
            _early[p] = rest


def _connect(p: int, address: str, token: str, me: int, timeout_s: float) -> socket.socket:
    """Connects to lower-indexed peer `p` and waits for its acknowledgement."""
    host, port = address.rsplit(":", 1)
    conn, ack = None, b""
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout_s)
        conn.sendall(f"{token}:{me}\n".encode())
        while len(ack) < len(_ACK):
            chunk = conn.recv(len(_ACK) - len(ack))
            if not chunk:
                break
            ack += chunk
    except OSError:
        # Peer p listens until every higher index is accepted, so a refused
        # or reset connection means what a missing acknowledgement means.
        pass
    if ack != _ACK:
        if conn is not None:
            conn.close()
        raise RuntimeError(
            f"jax_symm: process {p}'s peer watch refused process {me}'s connection: "
            f"another connection already claimed index {me} (someone outside the job "
            f"who can read its key-value store), or process {p} is gone or did not answer "
            f"within {timeout_s:g} s (JAX_SYMM_BOOTSTRAP_TIMEOUT_S). Without it "
            f"process {me}'s death would go unnoticed, so this job cannot run safely; "
            "restart it.")
    conn.settimeout(None)
    return conn


def start(devices_of: dict[int, list[int]]) -> None:
    """Connects this process to every other one (a collective point: the
    first GPU lowering of every process reaches it); idempotent.
    `devices_of`: process index -> its global device ids."""
    global _started, _broken
    with _lock:
        if _broken is not None:  # never go on unwatched after a failed start
            raise RuntimeError(f"jax_symm: the peer watch could not start: {_broken}")
        if _started or _compat.process_count() == 1:
            return
        try:
            _start(devices_of)
        except BaseException as e:
            _broken = e
            raise
        _started = True


def _start(devices_of: dict[int, list[int]]) -> None:
    """start()'s work, under its lock: connect to the lower indices, accept
    the higher ones, then watch them all from a thread."""
    import jax

    me, n = jax.process_index(), _compat.process_count()
    token = _bootstrap.agree_on("peer_watch_token", lambda: secrets.token_hex(16),
                                 "the peer watch's token")
    if len(token) != 32 or token.strip("0123456789abcdef"):
        raise RuntimeError(
            "jax_symm: the peer watch's token in the jax.distributed key-value store "
            "(key 'jax_symm/peer_watch_token') is malformed; it was not set by "
            "jax_symm's process 0 (is another program using this coordinator?)")
    local = _local_address()
    # Only where the coordinator is reached from: peers reach us there.
    server = socket.create_server((local, 0), backlog=max(128, 2 * n))
    address = f"{local}:{server.getsockname()[1]}"
    addresses = _bootstrap.per_process("peer_watch", address, "peer-watch address")
    timeout_s = _bootstrap.timeout_ms() / 1000
    try:
        for p in range(me):  # connect to the lower indices, accept the higher ones
            _peers[p] = _connect(p, addresses[p], token, me, timeout_s)
        _Greetings(server, token, me, n).run(timeout_s)
    finally:
        server.close()
    threading.Thread(target=_watch, args=(dict(devices_of),), daemon=True,
                     name="jax_symm peer watch").start()
    _install_exit_hooks()


def _read(conn: socket.socket) -> bytes:
    """What a peer sent (b"" when it is gone)."""
    try:
        return conn.recv(16)
    except OSError:
        return b""


def _watch(devices_of: dict[int, list[int]]) -> None:
    """The watcher thread. Whatever goes wrong in it is fatal for the
    communicators it guards: without it a dead peer would go unnoticed and a
    job would hang in NCCL, so they are marked failed with the cause."""
    from ._native import ext

    live = dict(_peers)
    try:
        _watch_peers(live, devices_of, ext)
    except BaseException as e:  # noqa: BLE001  (the point: nothing escapes unreported)
        cause = (f"jax_symm's peer watch failed ({type(e).__name__}: {e}), so the death of "
                 f"processes {sorted(live)} could no longer be noticed")
        print(f"jax_symm: FATAL: {cause}; their communicators are marked failed.",
              file=sys.stderr, flush=True)
        traceback.print_exc(file=sys.stderr)
        ids = [g for p in live for g in devices_of.get(p, [])]
        try:
            ext.nccl_abort_groups_with(ids, cause)
        except BaseException:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)


def _watch_peers(live: dict[int, socket.socket], devices_of, ext) -> None:
    early = dict(_early)
    with selectors.DefaultSelector() as sel:  # epoll: any descriptor number
        for p, conn in live.items():
            sel.register(conn, selectors.EVENT_READ, p)
        while live:
            if early:
                ready = [p for p in early if p in live]
            else:
                ready = [key.data for key, _ in sel.select()]
            for p in ready:
                data = early.pop(p) if p in early else _read(live[p])
                sel.unregister(live[p])
                del live[p]
                if data.startswith(_BYE):
                    _left.add(p)
                    continue
                how = ("ended with an uncaught exception" if data.startswith(_FAILED)
                       else "is gone (killed, crashed or disconnected)")
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
        # Before the traceback, peers stop waiting for us now; unless a
        # non-daemon thread still runs and may call collectives (then atexit,
        # after it is joined, says so).
        if not _liveness.other_threads_may_call():
            _say(_FAILED)
        previous(kind, value, tb)

    sys.excepthook = excepthook
    atexit.register(lambda: _say(_FAILED if _failed_here else _BYE))
