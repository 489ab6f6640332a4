"""The tensor/sequence-parallel example trains identically with and without
use_symmetric_memory: losses and gradients agree over several steps."""

import pathlib
import sys

import numpy as np
import pytest
import jax

import jax_symm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
import tp_transformer as tp  # noqa: E402


@pytest.mark.timeout(240)
def test_scope_matches_plain_training():
    d = tp.Dims(seq=32, dim=32, heads=8, ffn=64)
    mesh, params, data = tp.setup(d, n_batches=1, seed=int(np.random.default_rng().integers(1 << 30)))
    runs = {}
    for name, scope in [("plain", jax_symm.use_symmetric_memory(disabled=True)),
                        ("symm", jax_symm.use_symmetric_memory())]:
        with scope:
            step = tp.make_train_step(mesh, d)
            text = step.lower(params, *data[0]).as_text()
            runs[name] = (tp.train(step, params, data, steps=4), text)
    assert "jax_symm_host" not in runs["plain"][1]
    assert runs["symm"][1].count("custom_call @jax_symm_host") >= 4
    (loss_a, grads_a, _), (loss_b, grads_b, _) = runs["plain"][0], runs["symm"][0]
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert loss_a[-1] < loss_a[0]  # it trains (one batch, so the loss must fall)
    for k in grads_a:
        np.testing.assert_allclose(np.asarray(grads_b[k]), np.asarray(grads_a[k]),
                                   rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.timeout(240)
def test_example_main_reports_a_verdict_and_why(tmp_path):
    """The example times the variants side by side and says, from its own
    rows, whether the jax_symm step is faster here and, if not, why."""
    import os
    import re
    import subprocess

    from jax_symm import _child_environment

    script = pathlib.Path(__file__).resolve().parents[2] / "examples" / "tp_transformer.py"
    env = dict(os.environ, **_child_environment.changes(os.environ, platform="cpu"))
    env["XLA_FLAGS"] = _child_environment.without_device_count(env.get("XLA_FLAGS", ""))
    proc = subprocess.run([sys.executable, str(script), "--steps", "6", "--seq", "64",
                           "--dim", "64", "--ffn", "128"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=220)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for row in ("lax", "jax_symm", "jax_symm gathers/scatters only", "no collectives"):
        assert re.search(rf"^  {re.escape(row)}\s+\d+\.\d+ ms\s+\d+ ", out, re.M), (row, out)
    diff = re.search(r"^max loss difference lax / jax_symm over 6 steps: (\S+)$", out, re.M)
    assert diff and float(diff.group(1)) <= 1e-5, out
    verdict = re.search(r"^verdict: the jax_symm step is (faster|SLOWER|not measurably faster)",
                        out, re.M)
    assert verdict, out
    if verdict.group(1) != "faster":  # then it says why, from the measured rows
        assert "gathers and scatters, with the psums left to XLA" in out, out
        assert "XLA merges the loss's psum" in out, out
