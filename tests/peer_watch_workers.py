"""Workers for tests/test_peer_watch.py (CPU processes, no NCCL needed).

The peer watch (jax_symm/_peer_watch.py) tells the NCCL layer which peer
processes are gone; here that call is replaced by one that records it, so
the watch itself is tested where CI runs.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import time

from _mp_util import write_json


class _Recorder:
    def __init__(self, path: str):
        self.path = path

    def nccl_abort_groups_with(self, global_ids, cause):
        write_json(self.path, dict(ids=[int(i) for i in global_ids], cause=cause,
                                   t=time.time()))
        return 1


def watched(report_dir: str, how: str) -> None:
    """Both processes join the peer watch; process 1 then leaves `how`
    ("kill", "raise" or "bye"); process 0 reports what its watch said."""
    import jax

    import jax_symm._native as native
    from jax_symm import _peer_watch

    me = jax.process_index()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's; its SIGKILL bounds us
    report = os.path.join(report_dir, f"abort{me}.json")  # what this process saw
    native.ext = _Recorder(report)  # what the watch thread calls
    devices_of = {}
    for d in jax.devices():
        devices_of.setdefault(d.process_index, []).append(d.id)
    _peer_watch.start(devices_of)
    if me == 1:
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
    os._exit(0)
