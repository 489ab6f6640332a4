"""Workers for tests/faults/test_liveness.py: when a process counts as leaving the
job."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

# tests/, home of the shared helpers: a worker process has only this folder on sys.path.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _mp_util import global_array, mesh_1d, write_json

STEPS = 20


def _psum_steps(report: str, psum_name: str, pause_s: float, first: threading.Event) -> None:
    """STEPS jitted psum steps over every device of the job, each checked;
    reports how many were right (and the first error) to `report`."""
    import jax
    from jax.sharding import PartitionSpec as P

    import jax_symm

    psum = jax_symm.psum if psum_name == "jax_symm" else jax.lax.psum
    mesh = mesh_1d()
    n = mesh.devices.size
    step = jax.jit(jax.shard_map(lambda a: psum(a, "x"), mesh=mesh, in_specs=P("x"),
                                 out_specs=P()))
    done, error = 0, ""
    try:
        for i in range(STEPS):
            data = np.arange(n * 4, dtype=np.float32) + i
            out = step(global_array(data, mesh, P("x")))
            np.testing.assert_array_equal(np.asarray(out.addressable_shards[0].data),
                                          data.reshape(n, 4).sum(0))
            done += 1
            first.set()
            time.sleep(pause_s)
    except Exception as e:  # noqa: BLE001  (reported, then the test fails)
        error = f"{type(e).__name__}: {e}"[:2000]
    first.set()
    write_json(report, dict(done=done, error=error, t=time.time()))


def outliving_thread(report_dir: str, psum_name: str, end: str = "returns") -> str:
    """A non-daemon thread runs the steps; in process 1 the main program
    returns (`end`="returns") or raises ("raises") after the first step,
    leaving the thread to outlive it (the interpreter joins
    it at exit); process 0 waits for its thread, calling all along. Both run
    the steps from a thread, so both trace the same program."""
    import jax

    me = jax.process_index()
    report = os.path.join(report_dir, f"steps{me}.json")
    # Process 1 pauses between steps so that its main program is long over
    # while its thread still calls.
    first = threading.Event()
    worker = threading.Thread(target=_psum_steps, args=(report, psum_name,
                                                        0.1 if me == 1 else 0.0, first))
    worker.start()
    if me == 0:
        worker.join()
    else:
        first.wait(120)  # the job's set-up done and a step run: the thread is in the job
        if end == "raises":  # an uncaught exception ends the main program
            raise RuntimeError("the main program fails while its worker thread runs on")
    return "main returned"


def main(process_id: int, port: int, report_dir: str, psum_name: str, end: str) -> None:
    """A whole program, as a user writes one: its main program returns with
    nothing after it (no jax.distributed.shutdown(), which
    jax_symm.testing's workers call and which would wait for the peer)."""
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    outliving_thread(report_dir, psum_name, end)


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
