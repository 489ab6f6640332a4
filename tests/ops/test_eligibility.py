"""One list of trace-time reasons (jax_symm/_eligibility.py): on each, a direct
jax_symm call raises, and the same lax call inside use_symmetric_memory()
runs as lax, with lax's result."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

import jax_symm
from _util import random_array, shard

# (op, jax_symm call, its lax twin, dtype, error, message)
CASES = [
    ("all_gather: axis_index_groups",
     lambda v: jax_symm.all_gather(v, "x", axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]]),
     lambda v: jax.lax.all_gather(v, "x", axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]]),
     np.float32, NotImplementedError, "does not support axis_index_groups"),
    ("psum_scatter: axis_index_groups",
     lambda v: jax_symm.psum_scatter(v, "x", axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]],
                                     tiled=True),
     lambda v: jax.lax.psum_scatter(v, "x", axis_index_groups=[[0, 1, 2, 3], [4, 5, 6, 7]],
                                    tiled=True),
     np.float32, NotImplementedError, "does not support axis_index_groups"),
    ("psum_scatter: float8", lambda v: jax_symm.psum_scatter(v, "x", tiled=True),
     lambda v: jax.lax.psum_scatter(v, "x", tiled=True), jnp.float8_e4m3fn, TypeError,
     "float8_e4m3fn, which has no sum here"),
    ("psum: float8", lambda v: jax_symm.psum(v, "x"),
     lambda v: jax.lax.psum(v, "x"), jnp.float8_e4m3fn, TypeError, "no sum here"),
    ("all_gather: int4", lambda v: jax_symm.all_gather(v, "x"),
     lambda v: jax.lax.all_gather(v, "x"), jnp.int4, TypeError, "narrower than a byte"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_direct_call_raises_and_scope_hands_to_lax(mesh, case):
    _, direct, twin, dtype, error, message = case
    rng = np.random.default_rng()
    data = random_array(rng, (64, 4), np.int8 if dtype == jnp.int4 else np.float32).astype(dtype)
    x = shard(data, mesh, P("x"))

    def run(fn):
        return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P("x"), out_specs=P("x"),
                                     check_vma=False))

    with pytest.raises(error, match=message):
        run(direct)(x)
    f = run(twin)
    ref = f(x)
    with jax_symm.use_symmetric_memory():
        assert "custom_call @jax_symm_" not in f.lower(x).as_text()
        out = f(x)
    # lax ran the call itself: the same result, bit for bit
    np.testing.assert_array_equal(np.asarray(out).astype(np.float32),
                                  np.asarray(ref).astype(np.float32))


def test_positional_axes_are_refused_by_every_op(mesh):
    x = shard(np.ones((64,), np.float32), mesh, P("x"))
    for op in (jax_symm.all_gather, jax_symm.reduce_scatter, jax_symm.all_reduce):
        f = jax.jit(jax.shard_map(lambda v: op(v, 0), mesh=mesh, in_specs=P("x"),
                                  out_specs=P()))
        with pytest.raises(NotImplementedError, match="named mesh axes only"):
            f(x)
