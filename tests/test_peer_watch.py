"""The GPU job's peer watch, exercised with CPU processes: a peer that is
killed or ends with an uncaught exception is reported at once, with the
devices whose communicators must be aborted; one that ends normally is not."""

from __future__ import annotations

import json

import pytest

import peer_watch_workers as pw
from jax_symm.testing import MultiProcessError, run_multiprocess


def _run(tmp_path, how):
    with pytest.raises(MultiProcessError) as err:
        run_multiprocess(pw.watched, num_processes=2, devices_per_process=1,
                         args=(str(tmp_path), how), timeout_s=90, failure_grace_s=15)
    survivor = tmp_path / "survivor.json"
    assert survivor.exists(), f"process 0 reported nothing:\n{err.value}"
    left = json.loads((tmp_path / "left.json").read_text())
    abort = tmp_path / "abort0.json"  # what the survivor saw
    return left, json.loads(survivor.read_text()), (
        json.loads(abort.read_text()) if abort.exists() else None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how,words", [("kill", "is gone"),
                                       ("raise", "uncaught exception")])
def test_a_failed_peer_is_reported_at_once(tmp_path, how, words):
    left, survivor, abort = _run(tmp_path, how)
    assert abort is not None, "the watch reported nothing"
    assert abort["ids"] == survivor["devices_of"]["1"], (abort, survivor)
    assert "process 1" in abort["cause"] and words in abort["cause"], abort
    assert abort["t"] - left["t"] < 2.0, abort


@pytest.mark.timeout(120)
def test_a_peer_that_says_goodbye_is_not_a_failure(tmp_path):
    _, _, abort = _run(tmp_path, "bye")
    assert abort is None, abort
