"""`jax-symm-bench` (`python -m jax_symm.bench`): jax_symm's collectives against
jax.lax (and, on GPU, XLA's own symmetric-buffer path and raw NCCL) over a
sweep of message sizes, in one process or several (jax.distributed).

Layout (one job per module):

    cli.py      options, subcommands, and the orchestration of worker processes
    worker.py   one process's sweep: inputs, checks, timings -> records
    ops.py      the collectives measured (adding one is one table entry)
    methods.py  the ways of running them (adding one is one entry), and which
                process (XLA flags, settings) each needs
    timing.py   chains of K dependent calls, and the per-op slope estimator
    devtime.py  device time of the chains from JAX's profiler (GPU)
    overhead.py `jax-symm-bench overhead`: per-call cost at world size 1
    nccl_log.py `jax-symm-bench nccl-log`: each op once, for NCCL's own log
    envinfo.py  environment facts (versions, devices, flags)
    report.py   terminal table, CSV, PNG plot
    units.py    byte sizes: parsing and printing
    deps.py     the optional dependencies (tqdm, tabulate, matplotlib)
"""

from .cli import main

__all__ = ["main"]
