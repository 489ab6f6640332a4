"""`jax-symm-demo`: runs, checks against lax, and says what it measured and how."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import jax_symm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(jax_symm.__file__)))

_ROW = re.compile(
    r"^(all_gather|reduce_scatter|all_reduce)\s+(float32|bfloat16)\s+(\d+ (?:KiB|MiB|B))/rank "
    r"x (\d+) devices\s+(.*)$")


@pytest.mark.timeout(120)
def test_demo_output_states_measurement_and_verdicts(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)  # the demo picks its own device count
    proc = subprocess.run([sys.executable, "-m", "jax_symm.demo", "--devices", "4"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "4 cpu device(s)" in out
    assert "dependent calls" in out and "slope of time vs K" in out, out  # method, estimator
    rows = [m for m in map(_ROW.match, out.splitlines()) if m]
    assert {m.group(1) for m in rows} == {"all_gather", "reduce_scatter", "all_reduce"}, out
    verdicts = {"faster": 0, "SLOWER": 0, "not resolvable": 0}
    for m in rows:
        assert m.group(4) == "4"
        rest = m.group(5)
        assert re.search(r"check vs lax: max\|diff\| \S+ \(limit \S+\) ok", rest), rest
        if "not resolvable" in rest:
            verdicts["not resolvable"] += 1
            assert "speedup" not in rest
            continue
        sp = float(re.search(r"speedup (\d+\.\d+)x", rest).group(1))
        times = [float(t) for t in re.findall(r"(?:jax_symm|lax)\s+(\d+\.\d+) us", rest)]
        assert len(times) == 2 and all(t > 0 for t in times), rest
        assert sp == pytest.approx(times[1] / times[0], rel=0.02), rest
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
    assert out.rstrip().endswith("ok")
