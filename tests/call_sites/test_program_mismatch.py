"""Processes whose programs differ fail fast, naming the cause.

When the processes of a CPU job lower different programs (a collective of
another shape, dtype, op or axis in one process, or one collective more),
their call sites differ and each waits for a window or a barrier its peers
never reach. jax_symm compares what the processes lowered once such a wait
lasts JAX_SYMM_MISMATCH_GRACE_S (2 s) and fails at once, in every process
that waits, with both sides named; JAX_SYMM_BOOTSTRAP_TIMEOUT_S (120 s) and
JAX_SYMM_TIMEOUT_S (300 s) are left at their defaults here. Programs that
are the same but lowered at different times, with other programs in
between, rebuilt, or from two threads, must not be taken for different.
"""

from __future__ import annotations

import time

import pytest

from jax_symm.testing import run_multiprocess

import program_mismatch_workers as pmw

# Well under the 120 s bootstrap timeout they used to wait out: grace (2 s)
# plus the diagnosis, on a busy machine.
BOUND_S = 20.0


def _run(fn, *args, timeout_s=150, env=None):
    start = time.monotonic()
    out = run_multiprocess(fn, args=args, timeout_s=timeout_s, failure_grace_s=30, env=env)
    return out, time.monotonic() - start


# (kind, processes that must fail, what every failure must name)
_MISMATCHES = [
    ("shape", (0, 1), ["float32[4]", "float32[8]"]),
    ("dtype", (0, 1), ["float32[4]", "int32[4]"]),
    ("op", (0, 1), ["psum of", "all_gather of"]),
    ("axis", (0, 1), ["over axis 'a', 'b'", "over axis 'a' "]),
    # Process 1's psum over 'b' stays within its own devices: its program
    # runs (as with lax); process 0's group [0, 2] waits for it in vain.
    ("axis_local", (0,), ["over axis 'a'", "over axis 'b'"]),
    # One collective more in process 1 (it waits for a window at lowering)
    # or in process 0 (it waits at a barrier; process 1's program completes).
    ("extra_in_1", (0, 1), ["collective 2 of program", "holds only 1 jax_symm collective"]),
    ("extra_in_0", (0,), ["collective 2 of program", "holds only 1 jax_symm collective"]),
]


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
@pytest.mark.parametrize("kind,failing,names", _MISMATCHES, ids=[m[0] for m in _MISMATCHES])
def test_mismatched_programs_fail_fast_naming_the_cause(kind, failing, names):
    out, wall = _run(pmw.mismatch, kind)
    for p, r in enumerate(out):
        if p not in failing:
            continue
        err = r["error"]
        assert err is not None, (kind, p, out)
        assert r["elapsed"] < BOUND_S, (kind, p, r)
        assert "run different programs" in err or "programs differ" in err, (kind, p, err)
        for name in names:
            assert name in err, (kind, p, name, err)
        assert "program 'jit_step'" in err, (kind, p, err)
        assert "test" in err and "workers.py:" in err, (kind, p, err)  # the user's line
    if kind in ("shape", "dtype", "op", "axis", "extra_in_1"):
        # Process 1 waited for process 0's window at lowering: its error is
        # raised there, with a type of its own.
        assert out[1]["error"].startswith("ProgramMismatchError"), out
    assert wall < BOUND_S + 60, wall  # start-up and exit included


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
def test_malformed_entries_in_the_store_are_ignored():
    """Process 1 plants malformed values among process 0's published calls
    (as anyone who reaches the coordinator could): the mismatch is still
    found from the well-formed ones, and nothing malformed is quoted."""
    out, _ = _run(pmw.mismatch, "shape", True)
    for r in out:
        assert r["error"] is not None and r["elapsed"] < BOUND_S, out
        assert "float32[4]" in r["error"] and "float32[8]" in r["error"], out
        assert "rm -rf" not in r["error"] and "\x07" not in r["error"], out


def test_entries_are_validated():
    from jax_symm import _programs

    good = _programs.Call(module="jit_step", devices="4 devices ab", lowering=1, ordinal=2,
                          site=77, op="psum", operand="float32[4]", result="float32[4]",
                          axes=("x",), groups=((0, 1, 2, 3),), where="t.py:3",
                          generations=((0, 1),))
    assert _programs._parse(good.to_json()) == good
    for bad in pmw.GARBAGE:
        assert _programs._parse(bad) is None, bad
    import json
    d = json.loads(good.to_json())
    for field, value in [("i", 0), ("i", "1"), ("k", True), ("s", 2**63), ("op", "psum2"),
                         ("x", "x"), ("x", [1]), ("g", [[0, -1]]), ("g", [[0.5]]),
                         ("g", [list(range(5000))]), ("n", [[0]]), ("w", "w" * 301),
                         ("m", None), ("t", "other")]:
        assert _programs._parse(json.dumps(dict(d, **{field: value}))) is None, (field, value)
    # Control characters are quoted as '?', never as they are.
    assert _programs._parse(json.dumps(dict(d, w="a\x1b[2Jb"))).where == "a?[2Jb"
    # A log keeps what parses under its own prefix, counts the rest.
    prefix = "jax_symm/sites/0/"
    log = _programs._PeerLog([(prefix + "000000001", good.to_json()),
                              (prefix + "x", good.to_json()),
                              ("jax_symm/sites/1/000000001", good.to_json()),
                              (prefix + "000000002", "garbage"),
                              (prefix + "\u0663", good.to_json())], prefix)  # an Arabic 3
    assert list(log.calls) == [("jit_step", "4 devices ab", 1, 2)] and log.ignored == 4


def test_reports_nested_beyond_the_parser_are_ignored(monkeypatch):
    from jax_symm import _compat, _programs

    class Store:
        def key_value_try_get(self, key):
            return "[" * 5000  # under the report's size bound, deeper than json recurses

    monkeypatch.setattr(_compat, "distributed_client", lambda: Store())
    assert _programs._read_report(1, ("jit_step", "4 devices ab", 1)) is None


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
def test_programs_that_differ_only_before_a_collective_time_out_saying_so():
    """psum(v * 2) in one process, psum(v + v) in the other: alike collectives
    at different call sites. That is no proof (two programs of one name
    lowered in opposite orders look the same), so the wait runs to its
    timeout, whose error says what the peer has there."""
    out, _ = _run(pmw.mismatch, "before",
                  env={"JAX_SYMM_BOOTSTRAP_TIMEOUT_S": "6", "JAX_SYMM_TIMEOUT_S": "12"})
    opener, maker = out[1], out[0]
    assert opener["error"].startswith("TimeoutError"), out
    assert 5.5 < opener["elapsed"] < 6 + BOUND_S, out
    assert "lowered collective 1 of program 'jit_step'" in opener["error"], out
    assert "alike" in opener["error"] and "operations before it" in opener["error"], out
    assert "run different programs" not in opener["error"], out
    # The opener gave up on the program and said so: the maker, waiting at
    # its barrier, stops then with that cause, not after JAX_SYMM_TIMEOUT_S.
    assert maker["error"] is not None and "process 1 gave up on this program" in maker["error"], out
    assert maker["elapsed"] < 11, out


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
def test_a_grace_of_zero_turns_the_comparison_off():
    out, _ = _run(pmw.mismatch, "shape",
                  env={"JAX_SYMM_MISMATCH_GRACE_S": "0", "JAX_SYMM_BOOTSTRAP_TIMEOUT_S": "4",
                       "JAX_SYMM_TIMEOUT_S": "8"})
    for r in out:
        assert r["error"] is not None and r["elapsed"] > 3.5, out
        assert "different programs" not in r["error"], out


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
@pytest.mark.parametrize("late", [0, 1])
def test_a_process_that_lowers_late_with_other_programs_in_between(late):
    """Process `late` compiles and runs unrelated programs (one of them a
    jax_symm psum within its own devices, under the shared program's module
    name) for 5 s before the shared one; the other waits (at a barrier as
    the window's maker, for the window otherwise) beyond the grace."""
    out, _ = _run(pmw.late_process, late, 5.0, 3)
    assert [r["wrong"] for r in out] == [0, 0], out


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
def test_rebuilt_programs_of_new_shapes_with_a_late_process():
    out, _ = _run(pmw.late_rebuilds, 5, 3.0)
    assert [r["wrong"] for r in out] == [0, 0], out


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
@pytest.mark.parametrize("same_name", [True, False], ids=["same_name", "other_names"])
def test_two_threads_lowering_in_opposite_orders_beyond_the_grace(same_name):
    out, _ = _run(pmw.threads_late, 4.0, same_name)
    for r in out:
        assert not r["hung"] and r["errors"] == [], out
        assert r["results"] == [True, True], out


if __name__ == "__main__":
    # Time to failure per mismatch kind, in each process:
    #   python tests/test_program_mismatch.py [kind ...]
    import sys

    for kind in sys.argv[1:] or [m[0] for m in _MISMATCHES]:
        out, wall = _run(pmw.mismatch, kind)
        print(f"{kind:11s} job {wall:5.1f} s | " + " | ".join(
            f"process {p}: {'raised' if r['error'] else 'returned'} after {r['elapsed']:.2f} s"
            for p, r in enumerate(out)), flush=True)
