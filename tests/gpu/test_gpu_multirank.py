"""jax_symm with several NCCL ranks, as several JAX processes on the GPUs of
this host (`jax_symm.testing.run_multiprocess(platform="gpu")`).

On a host with fewer GPUs than processes the processes share them, each with
its own NCCL_HOSTID: NCCL then joins them over its socket transport, so this
proves jax_symm's multi-rank logic (rank offsets, groups, arenas, unique ids
across processes) on real NCCL, not NCCL's symmetric kernels or speed.

Skipped where JAX sees no GPU (CI); run on a GPU machine with

    pytest -q tests/gpu/test_gpu_multirank.py

Each world size is one job that runs every case of `gpu_mp_workers.suite`;
each case is a test here, so a failure names its case.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

import jax

import gpu_mp_workers as gw
from jax_symm import _nccl_path
from jax_symm.testing import MultiProcessError, run_multiprocess

# slow: one job per world size runs every case (minutes on a GPU).
pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.skipif(
    not any(d.platform == "gpu" for d in jax.devices()), reason="needs a GPU")]

WORLDS = (2, 4)
_results: dict[int, dict] = {}


def _suite(world: int) -> dict:
    if world not in _results:
        seed = int(np.random.SeedSequence().entropy % (1 << 31))  # fresh data each run
        out = run_multiprocess(gw.suite, num_processes=world, args=(seed,), platform="gpu",
                               share_gpus=True, timeout_s=540,
                               env={"NCCL_DEBUG": "WARN"})
        _results[world] = {"processes": list(out), "logs": out.logs}
    return _results[world]


def _case_ids(world: int) -> list[str]:
    return [c.name for c in gw._cases(world)] + list(gw.SPECIALS)


ALL = [(w, name) for w in WORLDS for name in _case_ids(w)]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world,name", ALL, ids=[f"w{w}-{n}" for w, n in ALL])
def test_case(world, name):
    res = _suite(world)
    for p, summary in enumerate(res["processes"]):
        got = summary[name]
        assert "error" not in got, f"process {p}:\n{got['error']}"
        calls = got.get("calls")
        if name in ("arena-growth",):
            if summary["_info"]["path"] == "xla":
                assert got.get("skipped"), got
            else:
                assert got["grown"] > got["before"] > 0, got
            continue
        expect = got.get("expect_calls", 1)
        if name == "eight-independent-gathers":
            expect = 8
        elif name == "scope-on-a-lax-program":
            expect = 3
        elif name == "captured-chain":
            expect = 16
        elif name == "grad-through-all_gather":
            assert calls >= 2, got  # the gather and its transpose (a reduce-scatter)
            continue
        if expect is None:  # the default dispatch: the routing rule decides
            info = summary["_info"]
            symmetric = all(c["symmetric_kernels"] for c in info["communicators"]
                            if c["members"] and len(c["members"]) == world)
            op = name.split("-")[0]
            kind = {"psum_scatter": "reduce_scatter", "psum": "all_reduce"}.get(op, op)
            message = got["bytes_per_rank"] // (world if kind == "reduce_scatter" else 1)
            if info["path"] == "xla":  # no communicators of jax_symm's to ask
                symmetric = not info["spans_nccl_hosts"]
            expect = int(symmetric and message <= info["crossover"][kind])
        assert calls == expect, (got, summary["_info"])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", WORLDS, ids=lambda w: f"w{w}")
def test_suite_report(world):
    """What NCCL had: communicators, windows, whether symmetric kernels run."""
    res = _suite(world)
    info = res["processes"][0]["_info"]
    print(f"\nworld {world}: NCCL {info['version']}; communicators "
          f"{json.dumps(info['communicators'])}")
    assert not info["aborted"], info
    print(f"path: {info['path']}; all_to_all served by {info['all_to_all']}")
    assert bool(info["communicators"]) == (info["path"] == "own"), info


# ------------------------------------------------------------- a peer that dies


def _killed(tmp_path, use_lax: bool, when: str, grace: float, heartbeat: int | None = None):
    with pytest.raises(MultiProcessError) as err:
        run_multiprocess(gw.killed_peer, num_processes=2, platform="gpu", share_gpus=True,
                         args=(str(tmp_path), use_lax, when, 3, 400), timeout_s=120,
                         failure_grace_s=grace, heartbeat_timeout_s=heartbeat,
                         env={"NCCL_DEBUG": "WARN", "NCCL_DEBUG_TIMESTAMP_LEVELS": "WARN"})
    err.value.t_end = time.time()  # when the launcher saw the last process end
    print(f"\n--- survivor's log ({'lax' if use_lax else 'jax_symm'}, {when}) ---\n"
          + "\n".join(err.value.logs[0].splitlines()[-25:]))
    assert (tmp_path / "killed.json").exists(), f"process 1 never reached the kill:\n{err.value}"
    killed = json.loads((tmp_path / "killed.json").read_text())
    path = tmp_path / "survivor.json"
    report = json.loads(path.read_text()) if path.exists() else None
    return err.value, killed, report


@pytest.mark.timeout(200)
@pytest.mark.parametrize("when", ["mid", "between"])
def test_killed_peer_raises_in_the_survivor(tmp_path, when):
    """Process 1 SIGKILLs itself during (or between) steps of collectives; the
    survivor gets an exception naming the cause within 10 s of the kill.

    On the XLA path the communicators are XLA's, which jax_symm's peer watch
    does not abort: a dead peer is XLA's to notice, as with lax. What the
    survivor sees there is recorded (printed), not asserted."""
    if _nccl_path.choice().path == "xla":
        _record_xla_s_own_bound(tmp_path, False, when)
        return
    err, killed, report = _killed(tmp_path, False, when, grace=30)
    assert err.returncodes[1] == -signal.SIGKILL, str(err)
    assert report is not None, f"the survivor reported nothing:\n{err}"
    assert report["custom_calls"] == 8, report
    assert report["message"] is not None, report
    detect = report["t_raised"] - killed["t_killed"]
    print(f"\njax_symm, kill {when}: {report['type']} {detect:.2f} s after the kill, "
          f"{report['completed']} steps done: {report['message'][:300]}")
    print(f"watchdog marked it {report['t_marked'] - killed['t_killed']:.2f} s after the kill"
          if report.get("t_marked") else "the watchdog marked nothing", report["aborted"],
          f"(watchdog rounds: {report.get('watchdog_rounds')})")
    assert detect < 10, report
    # Not our own check of the values: the in-flight step must raise, not
    # hand back what the aborted kernels left.
    assert report["type"] == "NcclCommunicatorAborted", report
    assert "aborted" in report["message"] and "process 1" in report["message"], report


# jax's coordination service declares a silent process dead after its
# heartbeat timeout (jax.distributed.initialize's heartbeat_timeout_seconds,
# 100 s by default) and then ends the others: the only bound on a survivor
# blocked in XLA's communicators. A short one here, to measure it.
HEARTBEAT_S = 10


def _record_xla_s_own_bound(tmp_path, use_lax: bool, when: str) -> None:
    """A peer killed where XLA's communicators serve (lax, or jax_symm's XLA
    path): what the survivor sees, and when, printed (XLA's behaviour is
    XLA's); asserted only that it ends within the heartbeat bound plus slack."""
    who = "lax" if use_lax else "jax_symm (XLA path)"
    err, killed, report = _killed(tmp_path, use_lax, when, grace=HEARTBEAT_S + 40,
                                  heartbeat=HEARTBEAT_S)
    assert err.returncodes[1] == -signal.SIGKILL, str(err)
    ended = err.t_end - killed["t_killed"]
    if report is None or report["message"] is None:
        print(f"\n{who}, kill {when}: no exception in the survivor; it ended "
              f"({err.returncodes[0]}) {ended:.1f} s after the kill (heartbeat timeout "
              f"{HEARTBEAT_S} s)")
    else:
        print(f"\n{who}, kill {when}: {report['type']} "
              f"{report['t_raised'] - killed['t_killed']:.2f} s after the kill: "
              f"{report['message'][:300]}")
    assert ended < HEARTBEAT_S + 40, (ended, str(err))


@pytest.mark.timeout(200)
def test_killed_peer_with_lax_for_comparison(tmp_path):
    """The same with XLA's own collectives."""
    _record_xla_s_own_bound(tmp_path, True, "mid")


# ------------------------------------------------ a peer that is alive but stuck


@pytest.mark.timeout(200)
def test_stalled_collective_is_aborted_after_the_bound(tmp_path):
    """Process 1 sleeps, alive, while process 0 waits in a collective for it:
    with JAX_SYMM_GPU_TIMEOUT_S=2, process 0 raises the stall bound's exception
    about 2 s after its call, and process 1 is told. Before that, seconds of
    healthy steps queued ahead of the GPU are not taken for a stall."""
    if _nccl_path.choice().path == "xla":
        pytest.skip("the stall bound guards jax_symm's own communicators, not XLA's")
    bound = 2.0
    with pytest.raises(MultiProcessError) as err:
        run_multiprocess(gw.stalled_peer, num_processes=2, platform="gpu", share_gpus=True,
                         args=(str(tmp_path), 4.0, 40.0), timeout_s=150, failure_grace_s=30,
                         env={"JAX_SYMM_GPU_TIMEOUT_S": str(bound), "NCCL_DEBUG": "WARN"})
    reports = [json.loads((tmp_path / f"process{i}.json").read_text())
               if (tmp_path / f"process{i}.json").exists() else None for i in range(2)]
    print(f"\n--- process 0's log ---\n" + "\n".join(err.value.logs[0].splitlines()[-15:]))
    assert all(reports), f"a process reported nothing: {reports}\n{err.value}"
    stuck, sleeper = reports
    for r in reports:
        assert r["custom_calls"] == 8 and r["healthy_ok"] and r["healthy_steps"] >= 50, r
        # The GPU counted each of the 8 collectives of every step, once.
        assert r["stall_watch"] and r["beacon_done"] == [8 * r["healthy_steps"]], r
    detect = stuck["t_raised"] - stuck["t_call"]
    told = sleeper["t_raised"] - stuck["t_raised"]
    print(f"stall bound {bound:g} s: process 0 raised {stuck['type']} {detect:.2f} s after "
          f"its call ({stuck['healthy_steps']} healthy steps in {stuck['healthy_s']:.1f} s "
          f"before); process 1 raised {sleeper['type']} {told:.2f} s after that: "
          f"{stuck['message'][:200]}")
    assert stuck["type"] == "NcclCommunicatorAborted", stuck
    assert "no progress" in stuck["message"] and "JAX_SYMM_GPU_TIMEOUT_S" in stuck["message"], \
        stuck
    assert bound <= detect < bound + 5, stuck
    assert sleeper["type"] == "NcclCommunicatorAborted", sleeper
    assert "process 0" in sleeper["message"], sleeper
    assert told < 10, (stuck, sleeper)
