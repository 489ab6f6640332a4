"""The tensor/sequence-parallel example trains identically with and without
use_symmetric_memory: losses and gradients agree over several steps."""

import pathlib
import sys

import numpy as np
import pytest
import jax

import jax_symm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
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
