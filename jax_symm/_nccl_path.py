"""Which of the NCCL transport's two paths serves this process's GPU calls,
and what the XLA path asks of XLA for one call.

- The **XLA path**: XLA owns the communicator and the memory. Lowering
  places the buffers NCCL's symmetric kernels need in XLA's collective memory
  (ncclMemAlloc'd); the handler's Prepare stage asks XLA, through its FFI
  collectives extension, for the call's communicator and for windows on those
  buffers; Execute enqueues one NCCL call from XLA's buffer to XLA's buffer.
  No copies. It needs the extension with windows (minor >= 2: jaxlib 0.12.1
  ships minor 3) and the memory-space attributes jax 0.12 lowers.
- The **own path**: jax_symm's communicators and registered arenas, a copy
  in and out of the arena (ffi/nccl_collectives.cc). Any admitted jaxlib.

The choice is made once per process (`choice`): every process of a job runs
the same jaxlib and environment, so all choose alike.
"""

from __future__ import annotations

import dataclasses
import functools
import os


from . import _compat, settings

WINDOWS_MINOR = 2  # request_window / get_window (ffi/xla_collectives.h kWindowsMinor)

# Which buffers of a call lie in windows (the handler's `windows` attribute).
WINDOW_OPERAND = 1
WINDOW_RESULT = 2


@dataclasses.dataclass(frozen=True)
class PathChoice:
    path: str  # "xla" or "own"
    why: str


def collectives_extension(header_dir: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of XLA's FFI collectives extension in the running jaxlib,
    as the header it ships declares it, or None where it ships none (jaxlib <
    0.11)."""
    from ._native import shipped_header_defines

    found = shipped_header_defines("collectives_c_api.h", header_dir)
    major = found.get("XLA_FFI_Extension_Collectives_MajorVersion")
    minor = found.get("XLA_FFI_Extension_Collectives_MinorVersion")
    return None if major is None or minor is None else (major, minor)


def decide(requested: str, extension: tuple[int, int] | None,
           memory_spaces: bool) -> PathChoice:
    """The path for `requested` ("auto", "xla" or "own"), given the running
    jaxlib's extension version and whether jax lowers memory spaces for custom
    calls. A requested XLA path that cannot be had is an error, not a quiet
    fallback."""
    if requested == "own":
        return PathChoice("own", "JAX_SYMM_NCCL_PATH=own")
    missing = None
    if extension is None:
        missing = "the running jaxlib has no FFI collectives extension (jaxlib >= 0.12.1 has)"
    elif extension[0] != 0 or extension[1] < WINDOWS_MINOR:
        missing = (f"the running jaxlib's FFI collectives extension is {extension[0]}."
                   f"{extension[1]}, without windows (0.{WINDOWS_MINOR} or newer has them: "
                   "jaxlib >= 0.12.1)")
    elif not memory_spaces:
        missing = "this jax cannot place a custom call's buffers in XLA's collective memory"
    if missing is None:
        return PathChoice("xla", f"XLA's collectives extension {extension[0]}.{extension[1]} "
                          "has windows: XLA's communicator and collective memory, no copies")
    if requested == "xla":
        raise RuntimeError(f"jax_symm: JAX_SYMM_NCCL_PATH=xla, but {missing}. Use "
                           "JAX_SYMM_NCCL_PATH=own or auto.")
    return PathChoice("own", f"{missing}: jax_symm's own communicators and arenas, "
                      "with a copy in and out")


@functools.cache
def choice() -> PathChoice:
    """This process's path, decided once."""
    return _decide(settings.nccl_path())


@functools.cache
def _decide(requested: str) -> PathChoice:
    return decide(requested, collectives_extension(), _compat.COLLECTIVE_MEMORY_SPACE is not None)


def current() -> PathChoice:
    """The path of the program being lowered: this process's, unless the
    `jax_symm_program_nccl_path` option names one for it (the benchmark lowers both
    paths side by side in one process this way; a JAX option, so part of
    jit's cache key)."""
    requested = settings.program_nccl_path.value
    return _decide(requested) if requested in ("xla", "own") else choice()


def window_buffers(kind: str, nccl_version: int) -> int:
    """Which buffers of a call the XLA path puts in windows (WINDOW_OPERAND |
    WINDOW_RESULT): from NCCL 2.29.2 only the all-gather's receive and the
    reduce-scatter's send buffer need one for the full symmetric kernel set;
    before, both. The all-reduce needs both, one buffer aliased; the
    all-to-all gets both."""
    from ._native import ext

    half = nccl_version >= ext.nccl_version_floors()["half_window"]
    if kind == "all_gather":
        return WINDOW_RESULT | (0 if half else WINDOW_OPERAND)
    if kind == "reduce_scatter":
        return WINDOW_OPERAND | (0 if half else WINDOW_RESULT)
    if kind == "all_reduce":
        return WINDOW_OPERAND | WINDOW_RESULT
    if kind == "all_to_all":
        # NCCL (to 2.32) has no symmetric all-to-all kernel; registered
        # buffers on both sides are what its copy-engine all-to-all (2.30.7+)
        # and user-buffer paths can use.
        return WINDOW_OPERAND | WINDOW_RESULT
    raise ValueError(f"jax_symm: no window rule for kind {kind!r}")


def needs_pdl_fence(nccl_version: int) -> bool:
    """Whether the XLA path must break programmatic dependent launch before
    NCCL's kernel (NCCL < 2.30.7, ffi/nccl_versions.h): its input comes straight
    from the kernel that wrote it, with no copy between them."""
    from ._native import ext

    return nccl_version < ext.nccl_version_floors()["pdl_fixed"]


def memory_space_attributes(windows: int) -> dict[str, str]:
    """The custom call's frontend attributes that place its windowed buffers
    in XLA's collective memory (operand 0, result 0)."""
    space = _compat.COLLECTIVE_MEMORY_SPACE
    out = {}
    if windows & WINDOW_OPERAND:
        out["operands_memory_spaces"] = f"{{0:{space}}}"
    if windows & WINDOW_RESULT:
        out["results_memory_spaces"] = f"{{0:{space}}}"
    return out


def windowed_bytes(kind: str, windows: int, chunk_bytes: int, world: int) -> int:
    """Bytes of a call's buffers in collective memory (an aliased buffer once)."""
    from . import _kinds

    k = _kinds.kind(kind)
    operand = chunk_bytes * k.in_chunks(world) if windows & WINDOW_OPERAND else 0
    result = chunk_bytes * k.out_chunks(world) if windows & WINDOW_RESULT else 0
    return max(operand, result) if kind == "all_reduce" else operand + result


COLLECTIVE_MEM_ENV = "XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB"


def collective_memory_reason(nbytes: int) -> str | None:
    """Why a call whose windowed buffers take `nbytes` cannot fit XLA's
    collective memory, or None. XLA grows that pool as needed unless
    XLA_PYTHON_CLIENT_COLLECTIVE_MEM_SIZE_MB fixes its size; a fixed pool
    smaller than one call's buffers can never hold them, so lowering says so
    (naming the variable and a size) rather than XLA failing at run time."""
    text = os.environ.get(COLLECTIVE_MEM_ENV, "").strip()
    if not text:
        return None
    try:
        mib = float(text)
    except ValueError:
        return None  # XLA's to refuse
    if mib <= 0 or nbytes <= mib * (1 << 20):
        return None
    need = -(-nbytes // (1 << 20))
    return (f"jax_symm: this call's buffers in XLA's collective memory take {nbytes} bytes, "
            f"more than {COLLECTIVE_MEM_ENV}={text} MiB holds; set it to at least {need} "
            "(the program's other collective buffers need room too), unset it to let XLA grow "
            "the pool, or use JAX_SYMM_NCCL_PATH=own")
