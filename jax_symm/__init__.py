"""jax_symm: NCCL symmetric-memory collectives for JAX, as XLA FFI custom calls.

Drop-in replacements for jax.lax collectives, for use inside jax.shard_map:

    jax_symm.all_gather(x, axis_name, *, axis=0, tiled=False)
    jax_symm.reduce_scatter(x, axis_name, *, scatter_dimension=0, tiled=False)
    jax_symm.psum_scatter  (same as reduce_scatter)
    jax_symm.all_reduce(x, axis_name)
    jax_symm.psum          (same as all_reduce)
    jax_symm.all_to_all(x, axis_name, split_axis, concat_axis, *, tiled=False)

On CPU the data moves through shared-memory windows between the devices (and
processes) of one host.
"""

__version__ = "0.1.0"

# First: an unsupported jax fails here with what to install, not later with an
# internal error; a source checkout without the compiled extension fails here
# with what to do, not inside a JAX trace at the first collective.
# Before that, in a child of jax_symm's launchers (testing, bench): the
# parent's jax_symm and jax, or an error that names both, never a child
# silently running other code than its parent.
from ._child_environment import check_parent_imports

check_parent_imports()

from ._compat import check_jax_version  # noqa: E402

check_parent_imports()  # jax is imported now: its version too
check_jax_version()

from . import _native  # noqa: E402

# A build whose handlers the running jaxlib would refuse fails here, saying
# what to do, not with XLA's refusal at the first collective.
_native.check_build()
from . import _liveness  # noqa: E402

# Before anything can fail: a process that leaves the job (an uncaught
# exception, Ctrl-C, the end of its main program) tells its peers why, even
# before its first jax_symm call.
_liveness.install_exit_hooks()

from .all_gather import all_gather  # noqa: E402
from .all_reduce import all_reduce, psum  # noqa: E402
from .all_to_all import all_to_all  # noqa: E402
from .reduce_scatter import psum_scatter, reduce_scatter  # noqa: E402
from .scope import use_symmetric_memory  # noqa: E402
from . import _kinds  # noqa: E402

# A kind that lacks its primitive, op, lax twin, reroute or cost figure fails here.
_kinds.check_op_registry()
from ._nccl import NcclCommunicatorAborted  # noqa: E402
from ._programs import ProgramMismatchError  # noqa: E402

# `info` the function shadows `info` the module (still `python -m jax_symm.info`).
from .info import info  # noqa: E402


__all__ = ["all_gather", "reduce_scatter", "psum_scatter", "all_reduce", "psum", "all_to_all",
           "use_symmetric_memory",
           "info", "NcclCommunicatorAborted", "ProgramMismatchError"]
