"""`python -m jax_symm.bench`: jax_symm's collectives against jax.lax (and, on
GPU, XLA's own symmetric-buffer path and raw NCCL) over a sweep of message sizes.

Layout (one job per module):

    cli.py      options, and the orchestration of worker processes
    worker.py   one process's sweep: inputs, checks, timings -> JSON
    ops.py      the collectives measured (adding one is one table entry)
    methods.py  the ways of running them, and which process (XLA flags) each needs
    timing.py   chains of K dependent calls, and their statistics
    envinfo.py  environment facts (versions, devices, flags)
    report.py   terminal table, CSV, PNG plot
    units.py    byte sizes: parsing and printing
    deps.py     the optional dependencies (tqdm, tabulate, matplotlib)
"""

from .cli import main

__all__ = ["main"]
