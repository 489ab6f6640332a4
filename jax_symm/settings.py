"""Every jax_symm setting, read in this one module.

Settings that change what a program lowers to are JAX config options, so they
are part of jit's cache key (a function traced with one value is traced again
with another). Each is set by its environment variable before start-up or by
``jax.config.update(name, value)`` at any time; ``with
jax_symm.settings.<state>(value):`` sets one for the current thread.

| option / environment variable | default | effect |
| --- | --- | --- |
| ``jax_symm_disable`` / ``JAX_SYMM_DISABLE`` | off | every jax_symm op lowers to XLA's own collective; ``use_symmetric_memory`` becomes a pass-through |
| ``jax_symm_singleton_calls`` / ``JAX_SYMM_SINGLETON_CALLS`` | off | keep the custom call for groups of one device (testing, overhead measurement) |
| ``jax_symm_crossover_bytes`` / ``JAX_SYMM_CROSSOVER_BYTES`` | -1 | GPU: messages (bytes per rank) above this use XLA's collective; -1: each op's default from the cost model in ``jax_symm/_dispatch.py`` |
| ``jax_symm_force_window`` / ``JAX_SYMM_FORCE_WINDOW`` | off | GPU: every call NCCL can serve takes the window path, whatever the crossover, the NCCL version floor and whether the communicator has symmetric kernels (tests, benchmarks) |
| ``jax_symm_program_nccl_path`` | process | GPU: ``xla`` or ``own`` for the programs lowered under it (side-by-side timing); ``process``: the process's path, ``JAX_SYMM_NCCL_PATH`` |
| ``jax_symm_use_symmetric_memory`` | off | set per thread by the ``use_symmetric_memory`` scope |

Settings read when a transport is set up (at the first lowering that uses
it), passed to the C++ core explicitly:

| environment variable | default | meaning |
| --- | --- | --- |
| ``JAX_SYMM_TIMEOUT_S`` | 300 | longest wait for a live peer at a CPU barrier |
| ``JAX_SYMM_GPU_TIMEOUT_S`` | 0 (no bound) | GPU: a collective that makes no progress this long has its communicator aborted; costs GPU time per call |
| ``JAX_SYMM_BOOTSTRAP_TIMEOUT_S`` | 120 | longest wait for a value from another process (key-value store), or for a peer to create a window |
| ``JAX_SYMM_MISMATCH_GRACE_S`` | 2 | CPU, several processes: a wait for a peer's window or at a barrier that lasts this long compares the programs the processes lowered, and fails at once where they differ (``jax_symm/_programs.py``); 0: never compare |
| ``JAX_SYMM_SPINS`` | by core count | busy-wait iterations before a CPU barrier sleeps (2000, or 0 when a group has more ranks than the machine has cores) |
| ``JAX_SYMM_PATIENCE_US`` | 5000 | longest wait for peers on XLA's own thread before a CPU call's wait moves to jax_symm's thread pool (0: move at once) |
| ``JAX_SYMM_ARENA_MB`` | 64 | smallest symmetric arena per NCCL communicator (GPU) |
| ``JAX_SYMM_NCCL_PATH`` | auto | GPU: ``xla`` runs NCCL on XLA's communicator and collective memory (no copies; needs jaxlib's collectives extension with windows, jaxlib >= 0.12.1), ``own`` on jax_symm's communicators and arenas; ``auto``: ``xla`` where the running jaxlib has it (``_nccl_path.py``) |
| ``JAX_SYMM_NCCL_ALL_TO_ALL`` | auto | GPU: what serves ``all_to_all``: ``auto`` ``ncclAlltoAll`` where the loaded NCCL has it (2.28.3+), else one grouped ``ncclSend``/``ncclRecv`` per peer; ``send_recv``: the grouped sends always (runs that fallback on a newer NCCL) |
| ``JAX_SYMM_NCCL_XLA_CAPTURE`` | 1 | GPU, XLA path: its handlers are declared command-buffer compatible (XLA captures them into CUDA graphs); 0: not |

Each is range-checked when read: not a number, nan, inf or outside its range
raises a ValueError naming the variable, the value and the range (timeouts
(0, 1e9] s, the GPU bound and the mismatch grace [0, 1e9] s, patience [0, 6e7] us, spins an integer
in [-1, 2^31-1], the arena (0, 2^20] MiB).

``JAX_SYMM_SKIP_VERSION_CHECK=1`` lets ``import jax_symm`` proceed on an
unsupported jax; it is read by ``_compat.check_jax_version``, which must run
before anything else.
"""

from __future__ import annotations

import math
import os

from . import _compat

# ---- lowering: JAX config options (part of jit's cache key) ----
disable = _compat.config_state(
    "jax_symm_disable", False, "Lower jax_symm ops to XLA's own collectives.")
singleton_calls = _compat.config_state(
    "jax_symm_singleton_calls", False,
    "Keep jax_symm's custom call for groups of one device.")
crossover_bytes = _compat.config_state(
    "jax_symm_crossover_bytes", -1,
    "GPU: per-rank message size above which jax_symm uses XLA's collective "
    "(-1: each op's cost-model default).")
force_window = _compat.config_state(
    "jax_symm_force_window", False,
    "GPU: take the window path for every call NCCL can serve (tests, benchmarks).")
program_nccl_path = _compat.config_state(
    "jax_symm_program_nccl_path", ("process", "process", "xla", "own"),
    "GPU: the NCCL path ('xla' or 'own') of programs lowered under it; 'process': "
    "the process's (JAX_SYMM_NCCL_PATH).")
use_symmetric_memory = _compat.config_state(
    "jax_symm_use_symmetric_memory", False,
    "Reroute lax collectives traced now to jax_symm.")

# The variables the benchmark sets.
CROSSOVER_ENV = "JAX_SYMM_CROSSOVER_BYTES"
FORCE_WINDOW_ENV = "JAX_SYMM_FORCE_WINDOW"
NCCL_PATH_ENV = "JAX_SYMM_NCCL_PATH"


# ---- transports' set-up: read when first needed ----
# A wait longer than this (about 31 years) is as good as none, and keeps
# every conversion to a time point in C++ far from overflow.
MAX_WAIT_S = 1e9


def _number(name: str, default: float, *, low: float, high: float = MAX_WAIT_S,
            low_open: bool = False, integer: bool = False, meaning: str = "") -> float:
    """The setting `name` as a number in [low, high] (or (low, high] with
    `low_open`); unset or blank: `default`. Anything else (not a number, nan,
    inf, out of range, a fraction where a count is meant) raises a ValueError
    that names the variable, the value and the range: a nan timeout would
    never expire, an inf one overflows a time point in C++."""
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = (math.isfinite(value) and (value > low if low_open else value >= low)
          and value <= high and (not integer or value == int(value)))
    if not ok:
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ValueError(
            f"jax_symm: {name}={text!r} is out of range: it must be "
            f"{'an integer' if integer else 'a finite number'} in {bound}"
            f"{' (' + meaning + ')' if meaning else ''}")
    return int(value) if integer else value


def timeout_s() -> float:
    """JAX_SYMM_TIMEOUT_S: the longest wait for a live peer at a CPU barrier."""
    return _number("JAX_SYMM_TIMEOUT_S", 300.0, low=0, low_open=True, meaning="seconds")


def gpu_timeout_s() -> float:
    """JAX_SYMM_GPU_TIMEOUT_S: the longest a GPU collective may make no
    progress before its communicator is aborted; 0 (the default): no bound,
    and no per-call cost (the bound costs GPU time per call)."""
    return _number("JAX_SYMM_GPU_TIMEOUT_S", 0.0, low=0, meaning="seconds, 0: no bound")


def bootstrap_timeout_s() -> float:
    """JAX_SYMM_BOOTSTRAP_TIMEOUT_S: the longest wait for another process."""
    return _number("JAX_SYMM_BOOTSTRAP_TIMEOUT_S", 120.0, low=0, low_open=True,
                   meaning="seconds")


def mismatch_grace_s() -> float:
    """JAX_SYMM_MISMATCH_GRACE_S: how long a wait for another process lasts
    before the processes' programs are compared (0: never)."""
    return _number("JAX_SYMM_MISMATCH_GRACE_S", 2.0, low=0, meaning="seconds, 0: never compare")


def spins() -> int:
    """JAX_SYMM_SPINS: busy-waits before a CPU barrier sleeps (-1: by core count)."""
    return _number("JAX_SYMM_SPINS", -1, low=-1, high=2**31 - 1, integer=True,
                   meaning="busy-wait iterations, -1: by core count")


def patience_s() -> float:
    """JAX_SYMM_PATIENCE_US: the longest wait for peers on XLA's thread (seconds)."""
    # Bounded by a minute: a longer one holds XLA's threads so long that the
    # pool it exists to protect starves (and 0 is a valid "move at once").
    return _number("JAX_SYMM_PATIENCE_US", 5000.0, low=0, high=60e6,
                   meaning="microseconds, 0: move to the pool at once") * 1e-6


def arena_bytes() -> int:
    """JAX_SYMM_ARENA_MB: the smallest arena registered per NCCL communicator."""
    # At most 1 TiB: no GPU has more, and the product must fit in size_t.
    return int(_number("JAX_SYMM_ARENA_MB", 64, low=0, high=1 << 20, low_open=True,
                       meaning="MiB") * (1 << 20))


def checked_crossover_bytes() -> int:
    """jax_symm_crossover_bytes, which must be -1 (the model's) or >= 0."""
    value = crossover_bytes.value
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ValueError(
            f"jax_symm: jax_symm_crossover_bytes (JAX_SYMM_CROSSOVER_BYTES)={value!r} is out of "
            "range: it must be an integer in [-1, inf) (bytes per rank, -1: each op's "
            "cost-model default)")
    return value


NCCL_PATHS = ("auto", "xla", "own")


def nccl_path() -> str:
    """JAX_SYMM_NCCL_PATH: which communicators and memory NCCL runs on (GPU):
    "xla" (XLA's), "own" (jax_symm's) or "auto"; read once per process."""
    value = os.environ.get(NCCL_PATH_ENV, "").strip().lower() or "auto"
    if value not in NCCL_PATHS:
        raise ValueError(f"jax_symm: {NCCL_PATH_ENV}={value!r} is not one of "
                         f"{', '.join(NCCL_PATHS)}")
    return value


NCCL_ALL_TO_ALL = ("auto", "send_recv")


def nccl_all_to_all() -> str:
    """JAX_SYMM_NCCL_ALL_TO_ALL: "auto" (ncclAlltoAll where NCCL has it, else
    grouped ncclSend/ncclRecv) or "send_recv" (always the grouped sends)."""
    value = os.environ.get("JAX_SYMM_NCCL_ALL_TO_ALL", "").strip().lower() or "auto"
    if value not in NCCL_ALL_TO_ALL:
        raise ValueError(f"jax_symm: JAX_SYMM_NCCL_ALL_TO_ALL={value!r} is not one of "
                         f"{', '.join(NCCL_ALL_TO_ALL)}")
    return value


def nccl_xla_capture() -> bool:
    """JAX_SYMM_NCCL_XLA_CAPTURE: whether the XLA path's handlers are
    declared command-buffer compatible (1, the default: XLA captures them into
    CUDA graphs; 0: launched one by one, about 10 us more per call)."""
    value = os.environ.get("JAX_SYMM_NCCL_XLA_CAPTURE", "").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"jax_symm: JAX_SYMM_NCCL_XLA_CAPTURE={value!r} must be 0 or 1")
    return value == "1"
