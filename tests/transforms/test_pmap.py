"""jax.pmap runs jax_symm's ops like shard_map does (jax 0.10+ builds pmap on
shard_map): parity with lax on fresh random data, custom calls emitted,
gradients, and the scope rerouting lax's collectives under pmap."""

from __future__ import annotations

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

import jax_symm
from _util import assert_same, random_array

pytestmark = pytest.mark.filterwarnings("error")

N = 8
OPS = {
    "psum": (lambda v: jax_symm.psum(v, "i"), lambda v: lax.psum(v, "i"), "all_reduce"),
    "all_gather": (lambda v: jax_symm.all_gather(v, "i", axis=1),
                   lambda v: lax.all_gather(v, "i", axis=1), "all_gather"),
    "all_gather_tiled": (lambda v: jax_symm.all_gather(v, "i", tiled=True),
                         lambda v: lax.all_gather(v, "i", tiled=True), "all_gather"),
    "psum_scatter": (lambda v: jax_symm.psum_scatter(v, "i"),
                     lambda v: lax.psum_scatter(v, "i"), "reduce_scatter"),
    "psum_scatter_tiled": (lambda v: jax_symm.psum_scatter(v, "i", scatter_dimension=1, tiled=True),
                           lambda v: lax.psum_scatter(v, "i", scatter_dimension=1, tiled=True),
                           "reduce_scatter"),
    "all_to_all": (lambda v: jax_symm.all_to_all(v, "i", 0, 1),
                   lambda v: lax.all_to_all(v, "i", 0, 1), "all_to_all"),
    "all_to_all_tiled": (lambda v: jax_symm.all_to_all(v, "i", 1, 0, tiled=True),
                         lambda v: lax.all_to_all(v, "i", 1, 0, tiled=True), "all_to_all"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.bfloat16])
@pytest.mark.parametrize("op", sorted(OPS))
def test_pmap_parity(op, dtype):
    ours, theirs, kind = OPS[op]
    x = random_array(np.random.default_rng(hash(op) % 2**32), (N, N, 2 * N), dtype)
    f = jax.pmap(ours, axis_name="i")
    assert f"jax_symm_host_{kind}" in f.lower(x).as_text()
    assert_same(f(x), jax.pmap(theirs, axis_name="i")(x), dtype)


@pytest.mark.timeout(120)
def test_pmap_under_scope_reroutes_lax():
    x = random_array(np.random.default_rng(1), (N, N, 3), np.float32)

    def body(v):
        return lax.psum(v, "i") + lax.psum_scatter(lax.all_gather(v, "i"), "i")

    with jax_symm.use_symmetric_memory():
        f = jax.pmap(body, axis_name="i")
        text = f.lower(x).as_text()
        got = f(x)
    for kind in ("all_reduce", "all_gather", "reduce_scatter"):
        assert f"jax_symm_host_{kind}" in text
    assert_same(got, jax.pmap(body, axis_name="i")(x), np.float32)


@pytest.mark.timeout(120)
def test_pmap_grad_matches_lax():
    rng = np.random.default_rng(2)
    x = random_array(rng, (N, 4, 3), np.float32)
    w = random_array(rng, (N, 3, 3), np.float32)

    def loss(ag, rs, ps):
        def f(w, x):
            h = ag(x @ w, "i", tiled=True)
            return jnp.sum(ps(rs(jnp.tanh(h), "i", tiled=True), "i") ** 2)
        return jax.pmap(jax.grad(f), axis_name="i")

    ours = loss(jax_symm.all_gather, jax_symm.psum_scatter, jax_symm.psum)(w, x)
    theirs = loss(lax.all_gather, lax.psum_scatter, lax.psum)(w, x)
    assert_same(ours, theirs, np.float32)


def test_nested_pmap_is_jax_s_own_limit():
    """jax 0.10 refuses nested pmap itself (with lax too): nothing to test there."""
    x = np.ones((2, 4, 3), np.float32)
    nested = jax.pmap(jax.pmap(lambda v: lax.psum(v, "j"), axis_name="j"), axis_name="i")
    with pytest.raises(ValueError, match="should match the mesh passed to shard_map"):
        nested(x)
