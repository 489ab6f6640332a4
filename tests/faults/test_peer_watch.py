"""The GPU job's peer watch, exercised with CPU processes: a peer that is
killed or ends with an uncaught exception is reported at once, with the
devices whose communicators must be aborted; one that ends normally is not."""

from __future__ import annotations

import json

import pytest

import peer_watch_workers as pw
from jax_symm.testing import MultiProcessError, run_multiprocess


def _run(tmp_path, how, attack="", descriptors=0):
    with pytest.raises(MultiProcessError) as err:
        run_multiprocess(pw.watched, num_processes=2, devices_per_process=1,
                         args=(str(tmp_path), how, attack, descriptors), timeout_s=90,
                         failure_grace_s=15)
    survivor = tmp_path / "survivor.json"
    assert survivor.exists(), f"process 0 reported nothing:\n{err.value}"
    left = json.loads((tmp_path / "left.json").read_text())
    abort = tmp_path / "abort0.json"  # what the survivor saw
    return left, json.loads(survivor.read_text()), (
        json.loads(abort.read_text()) if abort.exists() else None)


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how,words", [("kill", "is gone"),
                                       ("raise", "uncaught exception")])
def test_a_failed_peer_is_reported_at_once(tmp_path, how, words):
    left, survivor, abort = _run(tmp_path, how)
    assert abort is not None, "the watch reported nothing"
    assert abort["ids"] == survivor["devices_of"]["1"], (abort, survivor)
    assert "process 1" in abort["cause"] and words in abort["cause"], abort
    assert abort["t"] - left["t"] < 2.0, abort


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_a_peer_that_says_goodbye_is_not_a_failure(tmp_path):
    _, _, abort = _run(tmp_path, "bye")
    assert abort is None, abort


def _report(tmp_path, name):
    path = tmp_path / name
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_a_slow_client_delays_nobody(tmp_path):
    # A client sending one byte every 0.5 s (no token, never a whole line)
    # connects first; process 0 must still accept the real peer at once, not
    # read the stray client for minutes.
    _run(tmp_path, "kill", attack="slow")
    started = [_report(tmp_path, f"started{p}.json") for p in (0, 1)]
    assert None not in started, started
    delay = started[0]["done"] - started[1]["started"]
    print(f"slow client: process 0 ready {delay:.3f} s after process 1 began to connect")
    assert delay <= 1.0, started


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_forged_greetings_are_refused(tmp_path):
    # An index >= the process count, a non-ASCII digit, our own index, a
    # sign, a wrong token, trailing junk: none may become a peer (a forged
    # index 5 taken for one would leave the real process 1 unwatched), and
    # the real peer's death is still noticed.
    left, survivor, abort = _run(tmp_path, "kill", attack="forged")
    assert abort is not None, "the watch reported nothing"
    assert abort["ids"] == survivor["devices_of"]["1"], (abort, survivor)
    assert "process 1" in abort["cause"] and "is gone" in abort["cause"], abort


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_an_impostor_of_a_peer_makes_the_real_peer_fail_loudly(tmp_path):
    # One connection per index, the first valid one: a connection that
    # claims process 1's index with the job's token (someone who can read the
    # key-value store) wins it, and the real process 1 must not go on
    # unwatched: its start raises, naming the cause.
    with pytest.raises(MultiProcessError) as err:
        run_multiprocess(pw.watched, num_processes=2, devices_per_process=1,
                         args=(str(tmp_path), "bye", "impostor", 0), timeout_s=90,
                         failure_grace_s=15)
    refused = _report(tmp_path, "refused1.json")
    assert refused is not None, f"the real process 1 was not told:\n{err.value}"
    assert "claimed index 1" in refused["error"], refused
    assert "could not start" in refused["again"] and "claimed index 1" in refused["again"]


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_the_watch_works_with_descriptors_above_1024(tmp_path):
    # Descriptors >= 1024 (where select.select raises ValueError, which
    # would end the watcher thread silently): a peer killed afterwards is
    # still noticed at once.
    left, survivor, abort = _run(tmp_path, "kill", descriptors=1100)
    assert min(_report(tmp_path, "started0.json")["sockets"]) >= 1024
    assert abort is not None, "the watch reported nothing"
    assert abort["ids"] == survivor["devices_of"]["1"], (abort, survivor)
    assert abort["t"] - left["t"] < 2.0, abort


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_a_failing_watcher_marks_what_it_guards_failed(tmp_path):
    # Any exception in the watcher thread is fatal and loud: the
    # communicators shared with the peers it watched are marked failed with
    # the cause, not left silently unguarded.
    _, survivor, abort = _run(tmp_path, "bye", attack="broken")
    assert abort is not None, "the watcher died silently"
    assert abort["ids"] == survivor["devices_of"]["1"], (abort, survivor)
    assert "peer watch failed" in abort["cause"] and "injected" in abort["cause"], abort


@pytest.mark.parametrize("line,want", [
    (b"t" * 32 + b":1", 1), (b"t" * 32 + b":3", 3),
    (b"t" * 32 + b":4", None),               # >= the process count
    (b"t" * 32 + b":0", None),               # not above ours
    (b"t" * 32 + "\u00b2".encode(), None),   # no separator
    (b"t" * 32 + ":\u00b2".encode(), None),  # isdigit() but not ASCII
    (b"t" * 32 + ":\u0663".encode(), None),  # Arabic-Indic three
    (b"t" * 32 + b":-1", None), (b"t" * 32 + b":+1", None), (b"t" * 32 + b":", None),
    (b"t" * 32 + b":1 ", None), (b"t" * 32 + b":" + b"1" * 7, None),
    (b"u" * 32 + b":1", None), (b"t" * 31 + b":1", None), (b"", None),
])
def test_greeting_rules(line, want):
    from jax_symm._peer_watch import parse_greeting

    assert parse_greeting(line, "t" * 32, me=0, n=4) == want
