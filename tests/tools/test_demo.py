"""`jax-symm-demo`: runs, checks against lax, and says what it measured and how."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jax_symm import _child_environment  # children import the jax_symm under test

_ROW = re.compile(
    r"^(all_gather|reduce_scatter|all_reduce)\s+(float32|bfloat16)\s+(\d+ (?:KiB|MiB|B))/rank "
    r"x (\d+) devices\s+(.*)$")


def _check_rows(out: str, devices: int) -> dict:
    """Every case row is checked against lax, and its verdict follows the ratio
    it prints; the summary counts what the rows say."""
    rows = [m for m in map(_ROW.match, out.splitlines()) if m]
    assert {m.group(1) for m in rows} == {"all_gather", "reduce_scatter", "all_reduce"}, out
    verdicts = {"faster": 0, "SLOWER": 0, "not resolvable": 0}
    for m in rows:
        assert m.group(4) == str(devices)
        rest = m.group(5)
        assert re.search(r"check vs lax: max\|diff\| \S+ \(limit \S+\) ok", rest), rest
        if "not resolvable" in rest:
            verdicts["not resolvable"] += 1
            assert "speedup" not in rest
            continue
        sp = float(re.search(r"speedup (\d+\.\d+)x", rest).group(1))
        times = [float(t) for t in re.findall(r"(?:jax_symm|lax)\s+(\d+\.\d+) us", rest)]
        assert len(times) == 2 and all(t > 0 for t in times), rest
        (s10, s90), (l10, l90) = [tuple(map(float, r)) for r in re.findall(
            r"\[(\d+\.\d+), (\d+\.\d+)\]", rest)]
        if "difference not resolved" in rest:  # a tie within the noise: no verdict
            verdicts["not resolvable"] += 1
            assert "jax_symm is faster" not in rest and "SLOWER" not in rest, rest
            assert s10 <= l90 and l10 <= s90, rest  # (printed rounded: <=)
            continue
        # A verdict only where the ranges are apart (rounded as printed).
        assert s90 <= l10 or l90 <= s10, rest
        # The demo rounds the ratio down to two decimals (so it stays on its
        # verdict's side of 1), and the times it prints are rounded too.
        ratio = times[1] / times[0]
        assert abs(sp - ratio) <= max(0.011, 0.02 * ratio), rest
        # The verdict follows the ratio: slower is said plainly.
        if sp < 1:
            verdicts["SLOWER"] += 1
            assert "jax_symm is SLOWER than lax here" in rest, rest
        else:
            verdicts["faster"] += 1
            assert "jax_symm is faster" in rest, rest
    summary = re.search(r"summary: jax_symm faster in (\d+), slower in (\d+), unresolved in "
                        r"(\d+) of (\d+) cases", out)
    assert summary, out
    assert [int(g) for g in summary.groups()] == [
        verdicts["faster"], verdicts["SLOWER"], verdicts["not resolvable"], len(rows)]
    assert ("where jax_symm is slower:" in out) == (verdicts["SLOWER"] > 0)
    return verdicts


@pytest.mark.timeout(120)
def test_demo_output_states_measurement_and_verdicts(tmp_path):
    env = dict(os.environ, **_child_environment.changes(os.environ, platform="cpu"))
    env.pop("XLA_FLAGS", None)  # the demo picks its own device count
    proc = subprocess.run([sys.executable, "-m", "jax_symm.demo", "--devices", "4"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "4 cpu device(s)" in out
    assert "dependent calls" in out and "slope of time vs K" in out, out  # method, estimator
    _check_rows(out, devices=4)
    assert out.rstrip().endswith("ok")


def _demo_with(monkeypatch, capsys, symm_us, lax_us, spread):
    """The demo's output with every case's estimates replaced: jax_symm's and
    lax's times, each with [p10, p90] = t * (1 -+ spread)."""
    from jax_symm import demo
    from jax_symm.bench import timing

    def fake_estimate(ks, seconds):  # called for jax_symm, then lax, per case
        fake_estimate.calls += 1
        t = symm_us if fake_estimate.calls % 2 else lax_us
        return timing.Estimate(t, (1 - spread) * t, (1 + spread) * t, 7, True, t)
    fake_estimate.calls = 0
    monkeypatch.setattr(timing, "time_chains", lambda fns, x, repeats, warmup: (sorted(fns), None))
    monkeypatch.setattr(timing, "estimate", fake_estimate)
    demo.main(["--devices", "8", "--k", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    return out, _check_rows(out, devices=8)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("symm_us,lax_us,verdict", [(100.4, 100.0, "SLOWER"),
                                                    (100.0, 100.4, "faster"),
                                                    (50.0, 50.0, "not resolvable")])
def test_verdict_and_printed_ratio_agree_near_one(monkeypatch, capsys, symm_us, lax_us, verdict):
    """A ratio just below 1 (0.996) once printed as "1.00x" next to "SLOWER".
    (Ranges 0.1% wide: apart for these, except where the times are equal.)"""
    out, verdicts = _demo_with(monkeypatch, capsys, symm_us, lax_us, spread=0.001)
    assert verdicts[verdict] == 6, out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("symm_us,lax_us", [(104.0, 100.0), (100.0, 104.0)])
def test_overlapping_ranges_are_unresolved_not_slower_or_faster(monkeypatch, capsys,
                                                                 symm_us, lax_us):
    """A 0.96x (or 1.04x) whose [p10, p90] overlaps lax's is not SLOWER (or
    faster): with ranges 10% wide a 4% difference is noise's, no verdict
    either way."""
    out, verdicts = _demo_with(monkeypatch, capsys, symm_us, lax_us, spread=0.1)
    assert verdicts == {"faster": 0, "SLOWER": 0, "not resolvable": 6}, out
    assert "where jax_symm is slower" not in out
    assert "summary: jax_symm faster in 0, slower in 0, unresolved in 6 of 6" in out
    # Ranges apart: the same ratio gets its verdict.
    out, verdicts = _demo_with(monkeypatch, capsys, symm_us, lax_us, spread=0.01)
    assert verdicts["SLOWER" if symm_us > lax_us else "faster"] == 6, out
