"""jax-symm-bench nccl-log: run each jax_symm op at a few sizes on all GPUs, so
that NCCL's own log shows window registration and which kernels ran:

    NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,REG,TUNING jax-symm-bench nccl-log

With one GPU, JAX_SYMM_SINGLETON_CALLS=1 (set here unless given) keeps the
custom calls; NCCL runs no symmetric kernel for a 1-rank communicator, but
registers the window.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="jax-symm-bench nccl-log", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(sys.argv[1:] if argv is None else argv)
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    if jax.default_backend() != "gpu":
        sys.exit(f"jax-symm-bench nccl-log needs NVIDIA GPUs: it runs jax_symm's NCCL "
                 f"transport so that NCCL's log shows windows and kernels; here JAX's "
                 f"backend is {jax.default_backend()!r}. Run it where jax[cuda12] or "
                 f"jax[cuda13] sees GPUs, with NCCL_DEBUG=INFO "
                 f"NCCL_DEBUG_SUBSYS=INIT,REG,TUNING")
    import jax_symm
    if "JAX_SYMM_SINGLETON_CALLS" not in os.environ:
        jax.config.update("jax_symm_singleton_calls", True)

    mesh = Mesh(np.array(jax.devices()), ("x",))
    n = mesh.size
    from .ops import OPS  # every kind, called as the bench calls it

    rng = np.random.default_rng(0)
    for name, op in OPS.items():
        for per_rank in (1 << 12, 1 << 20, 1 << 24):
            x = jax.device_put(jnp.asarray(rng.standard_normal(n * per_rank // 2), jnp.bfloat16),
                               NamedSharding(mesh, P("x")))
            f = jax.jit(jax.shard_map(functools.partial(op.symm, axis_name="x"), mesh=mesh,
                                      in_specs=P("x"), out_specs=P("x")))
            print(f"=== {name} {per_rank} bytes per rank: out "
                  f"{f(x).block_until_ready().shape}", flush=True)
    print(jax_symm.info()["nccl"])
