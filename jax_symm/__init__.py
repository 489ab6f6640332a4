"""jax_symm: NCCL symmetric-memory collectives for JAX, as XLA FFI custom calls.

Drop-in replacements for jax.lax collectives, for use inside jax.shard_map:

    jax_symm.all_gather(x, axis_name, *, axis=0, tiled=False)
    jax_symm.reduce_scatter(x, axis_name, *, scatter_dimension=0, tiled=False)
    jax_symm.psum_scatter  (same as reduce_scatter)

On CPU the data moves through shared-memory windows between the devices (and
processes) of one host.
"""

from .all_gather import all_gather
from .reduce_scatter import psum_scatter, reduce_scatter

__version__ = "0.1.0"


def info() -> dict:
    """NCCL version and path, communicators, arena sizes, host windows."""
    from .info import info as _info

    return _info()


__all__ = ["all_gather", "reduce_scatter", "psum_scatter", "info"]
