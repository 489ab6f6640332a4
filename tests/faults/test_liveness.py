"""When a process is leaving the job: only once no jax_symm call of it can
start any more. A worker thread that outlives the main program must run all
its steps, as lax's does: a "leaving" mark written from threading's exit
hook, before non-daemon threads are joined, would fail its peer ("process 1
is exiting: its main program ended")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import liveness_workers as lw
from jax_symm import _child_environment
from jax_symm.testing import free_port

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.multiprocess


@pytest.mark.timeout(240)
@pytest.mark.parametrize("end", ["returns", "raises"])
@pytest.mark.parametrize("psum", ["lax", "jax_symm"])
def test_a_thread_that_outlives_the_main_program_runs_its_collectives(tmp_path, psum, end):
    # lax is the control: what it runs, jax_symm must run.
    env = dict(os.environ, JAX_SYMM_TIMEOUT_S="60", JAX_PLATFORMS="cpu",
               XLA_FLAGS=_child_environment.without_device_count(os.environ.get("XLA_FLAGS", "")))
    env.update(_child_environment.changes(env, platform="cpu"))
    port = free_port()
    script = os.path.join(HERE, "liveness_workers.py")
    procs = [subprocess.Popen([sys.executable, script, str(p), str(port), str(tmp_path), psum, end],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for p in (0, 1)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for p in (0, 1):
        path = tmp_path / f"steps{p}.json"
        assert path.exists(), f"process {p}'s thread reported nothing:\n" + "\n".join(logs)
        steps = json.loads(path.read_text())
        assert steps == dict(done=lw.STEPS, error="", t=steps["t"]), (p, steps)
