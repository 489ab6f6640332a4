"""The jax_symm primitives, declared apart from their rules.

The transpose of all-gather is reduce-scatter and vice versa; declaring the
primitives here lets each op module bind the other's without importing it.
(All-to-all is its own transpose.)
"""

from . import _compat

all_gather_p = _compat.Primitive("jax_symm_all_gather")
reduce_scatter_p = _compat.Primitive("jax_symm_reduce_scatter")
all_reduce_p = _compat.Primitive("jax_symm_all_reduce")
all_to_all_p = _compat.Primitive("jax_symm_all_to_all")
