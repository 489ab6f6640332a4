"""Which processes of a multi-process CPU job still take part, and if not, why.

A rank that fails in Python (an uncaught exception, Ctrl-C, the end of its main
program) leaves through the interpreter's normal exit, where jax.distributed's
shutdown waits for its peers while the peers wait for it in a collective. Its
liveness lock is still held then, so a lock alone cannot tell that it is gone.
So every process of the job joins one shared record at set-up (ffi/host_liveness.h:
a lock per process for deaths, a state word and a reason for departures), and
hooks on the interpreter's way out mark this process as leaving, with the
cause, before anything there can block:

- ``sys.excepthook``: an uncaught exception, KeyboardInterrupt included (the
  first thing the interpreter does with it, before it joins threads), when
  no other non-daemon thread runs; otherwise the cause is kept for
  ``atexit``, since such a thread may still call collectives, as it may with
  lax;
- ``atexit``: the main program ended (returned, ``sys.exit``). Python runs
  it after it has joined every non-daemon thread, so no thread of the
  program can start a jax_symm call any more (a process is "leaving" only
  then: a worker thread that outlives the main program runs its collectives
  as it does with lax), and before jax.distributed's shutdown (registered
  when jax is imported, earlier, so it runs later).

Peers waiting at a barrier or for a window read the record every poll (50 ms)
and fail at once, naming the process and the cause. The record is one shared
memory segment of the job, as trusted as its windows (same secret name and
checks); its creation outcome travels through the key-value store, so that a
failure in process 0 reaches the others at once too.

The hooks are installed when jax_symm is imported, not at set-up: a process
that fails before its first jax_symm call never joins the record, while its
peers may already wait for its part of the set-up in the key-value store. So a
departure is also announced there (_bootstrap.announce_departure), where those
waiters look.
"""

from __future__ import annotations

import atexit
import sys
import threading

from . import _bootstrap, _compat, settings
from ._native import ext

_KEY = "liveness"  # under _bootstrap.PREFIX: process 0's set-up outcome
_hooked = False


def join(name: str) -> None:
    """Joins this process to the job's record (once, from _host.setup)."""
    import jax

    me, n = jax.process_index(), _compat.process_count()
    devices = jax.devices()
    ext.host_set_device_processes([d.id for d in devices], [d.process_index for d in devices])
    timeout = settings.bootstrap_timeout_s()
    if me == 0:
        try:
            ext.host_join(name, 0, n, True, timeout)
        except RuntimeError as e:
            # The others wait for this key: tell them why instead of letting
            # them time out.
            _bootstrap.publish(_KEY, lambda: f"failed: {e}")
            raise
        _bootstrap.publish(_KEY, lambda: "ok")
    else:
        status = _bootstrap.fetch(_KEY, 0, "the outcome of its set-up of the job's record")
        if status != "ok":
            raise RuntimeError(
                f"jax_symm: process 0 could not set up the job's shared memory, so no "
                f"jax_symm collective can run on CPU: {status.removeprefix('failed: ')}")
        ext.host_join(name, me, n, False, timeout)


def leave(why: str) -> None:
    """Marks this process as leaving the job (the first reason stays): in the
    job's record (at once, shared memory) and in the key-value store."""
    try:
        ext.host_leave(why)
    except Exception:  # noqa: BLE001  (on the way out: never mask the real error)
        pass
    _bootstrap.announce_departure(why)


def describe(exc_type, exc) -> str:
    """How a process's end reads in its peers' errors."""
    if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
        return "was interrupted (KeyboardInterrupt: Ctrl-C or SIGINT) and is exiting"
    text = str(exc).strip().splitlines()
    first = text[0][:300] if text else ""
    name = getattr(exc_type, "__qualname__", str(exc_type))
    return f"raised an uncaught {name}{': ' + first if first else ''} and is exiting"


def other_threads_may_call() -> bool:
    """Whether a non-daemon thread other than this one still runs: the
    interpreter will wait for it, and it may still call collectives."""
    me = threading.current_thread()
    return any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate())


def install_exit_hooks() -> None:
    """Once, at import: they do nothing unless this is a multi-process job."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    previous = sys.excepthook
    deferred: list[str] = []  # an uncaught exception's cause, told at atexit

    def excepthook(exc_type, exc, tb):
        why = describe(exc_type, exc)
        if other_threads_may_call():
            deferred.append(why)
        else:
            leave(why)
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    ended = "is exiting: its main program ended (returned, or called sys.exit)"
    # Not threading._register_atexit: that runs before non-daemon threads
    # are joined, and a process was declared gone while one of its threads
    # still ran collectives (issue 28, finding 4).
    atexit.register(lambda: leave(deferred[0] if deferred else ended))
