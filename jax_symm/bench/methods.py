"""The ways of running an op, and the process each needs.

XLA flags and jax_symm settings are per process, so methods are grouped by
the flags and environment they need; each group runs in its own worker
process (or processes), one after another, so that every process has the
devices to itself. A new method is one `Method(...)` entry in METHODS.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a worker knows how to run.
IMPLS = ("jax_symm", "lax", "nccl_raw")

SYMM_BUFFER_FLAGS = ("--xla_gpu_experimental_enable_nccl_symmetric_buffers=true",
                     "--xla_gpu_enable_nccl_user_buffers=true")
NO_CMDBUF_FLAGS = ("--xla_gpu_enable_command_buffer=",)


@dataclass(frozen=True)
class Method:
    label: str                       # the name in reports
    impl: str                        # one of IMPLS
    gpu_only: bool = False
    xla_flags: tuple[str, ...] = ()  # added to XLA_FLAGS of its worker
    collective_mem: bool = False     # needs XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB
    env: tuple[tuple[str, str], ...] = ()  # set in its worker's environment
    form: str = "chain"              # "chain": unrolled calls; "scan": a lax.scan loop (timing.py)
    doc: str = ""

    @property
    def group(self) -> tuple:
        """Methods with equal groups share a worker process."""
        return (self.xla_flags, self.collective_mem, self.env)


# jax_symm's dispatch (XLA's collective above a crossover size, below the NCCL
# version floor, or on communicators without symmetric kernels) is switched
# off by the setting it names: "jax_symm_window" forces the window path at
# every size, so the measured crossover can be read off the plot.
def window_setting() -> tuple[str, str]:
    """(environment variable, value) forcing jax_symm's window path at every size."""
    from jax_symm import settings

    return settings.FORCE_WINDOW_ENV, "1"


METHODS: dict[str, Method] = {
    "jax_symm": Method("jax_symm", "jax_symm", doc="jax_symm custom calls (NCCL symmetric windows / CPU shared memory)"),
    "lax": Method("lax", "lax", doc="jax.lax collectives, XLA default flags"),
    "lax_symm": Method("lax_symm", "lax", gpu_only=True, xla_flags=SYMM_BUFFER_FLAGS,
                       collective_mem=True,
                       doc="jax.lax with XLA's NCCL symmetric-buffer path (GPU)"),
    "nccl_raw": Method("nccl_raw", "nccl_raw", gpu_only=True,
                       doc="raw NCCL on symmetric windows, no JAX (GPU)"),
}
# The same ops inside a lax.scan loop, the form models use to loop over layers:
# there per-iteration loop costs count, and calls of one call site repeat.
METHODS["jax_symm_scan"] = Method("jax_symm_scan", "jax_symm", form="scan",
                                  doc="jax_symm, the K calls inside a lax.scan loop")
METHODS["lax_scan"] = Method("lax_scan", "lax", form="scan",
                             doc="jax.lax, the K calls inside a lax.scan loop")
# The size crossover only exists on GPU (jax_symm/_dispatch.py).
METHODS["jax_symm_window"] = Method("jax_symm_window", "jax_symm", env=(window_setting(),),
                                    gpu_only=True,
                                    doc="jax_symm forced onto its window path at every size")
# The two NCCL paths side by side (README, "The NCCL paths"), both forced onto
# the window path: XLA's communicator and collective memory (no copies; needs
# jaxlib's collectives extension with windows), and jax_symm's own
# communicators and arenas (a copy in and out per call).
def nccl_path_setting(path: str) -> tuple[str, str]:
    """(environment variable, value) choosing jax_symm's NCCL path."""
    from jax_symm import settings

    return settings.NCCL_PATH_ENV, path


METHODS["jax_symm_xla"] = Method("jax_symm_xla", "jax_symm", gpu_only=True, collective_mem=True,
                                 env=(window_setting(), nccl_path_setting("xla")),
                                 doc="jax_symm on XLA's communicator and collective memory, "
                                     "window path at every size")
METHODS["jax_symm_own"] = Method("jax_symm_own", "jax_symm", gpu_only=True,
                                 env=(window_setting(), nccl_path_setting("own")),
                                 doc="jax_symm on its own communicators and arenas, "
                                     "window path at every size")


def nocmdbuf(m: Method) -> Method:
    """`m` with XLA command buffers (CUDA graphs) off."""
    return Method(f"{m.label}[nocmdbuf]", m.impl, gpu_only=True,
                  xla_flags=m.xla_flags + NO_CMDBUF_FLAGS, collective_mem=m.collective_mem,
                  env=m.env, form=m.form, doc=m.doc + ", command buffers off")


def form(label: str) -> str:
    """The program form of the method labelled `label` (variants included)."""
    m = METHODS.get(label.split("[", 1)[0])
    return m.form if m is not None else "chain"


def select(names: list[str], cmdbuf_variants: bool) -> list[Method]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    out = [METHODS[n] for n in names]
    if cmdbuf_variants:
        out += [nocmdbuf(m) for m in list(out) if m.impl != "nccl_raw"]
    return out


def groups(methods: list[Method]) -> list[list[Method]]:
    """Methods by worker process, the default-flags group first."""
    by: dict[tuple, list[Method]] = {}
    for m in methods:
        by.setdefault(m.group, []).append(m)
    return sorted(by.values(), key=lambda ms: (ms[0].group != ((), False, ())))
