"""jax_symm's switches, as JAX config options so that they key JAX's caches.

- ``jax_symm_disable`` (env JAX_SYMM_DISABLE=1): every jax_symm op lowers
  to XLA's own collective, and ``use_symmetric_memory`` becomes a no-op.
- ``jax_symm_use_symmetric_memory``: set (thread-locally) by the
  ``use_symmetric_memory`` scope; lax collectives traced while it is on are
  rerouted to jax_symm. Part of the jit cache key, so a function traced
  outside the scope is traced again inside it.
"""

from jax._src import config as _jax_config


def _state(name: str, help: str):
    try:
        return _jax_config.bool_state(name, False, help, include_in_jit_key=True,
                                      include_in_trace_context=True)
    except Exception:  # defined already (module reloaded): reuse it
        return getattr(_jax_config, "config")._value_holders[name]


disable = _state("jax_symm_disable",
                 "Lower jax_symm ops to XLA's own collectives.")
use_symmetric_memory = _state("jax_symm_use_symmetric_memory",
                              "Reroute lax collectives traced now to jax_symm.")
