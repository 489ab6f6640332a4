"""Which path serves a call on GPU: jax_symm's symmetric window, or XLA's own
collective. A cost model, to be replaced by measured crossovers once a
multi-GPU machine has run the benchmark (`jax-symm-bench` plots both paths).

The window path copies the input into the window and the result out of it,
through HBM; XLA's path copies nothing. What the window buys is NCCL's
symmetric kernels, faster than its ring kernels. So the window path is worth
taking while the time the symmetric kernel saves exceeds the copies:

    saved(S)  = a_op + b * S          (published 8 x H100 figures, below)
    copies(S) = copied_bytes(S) * 2 / HBM bandwidth      (read + write)
    crossover = the S where the two meet (per-rank message bytes)

- Published (8 x H100, NCCL 2.27, symmetric vs ring, device time): all-gather
  2 MiB per rank 20.2 -> 10.9 us, 8 MiB 43.4 -> 27.4 us; reduce-scatter 2 MiB
  18.6 -> 10.8 us. So all-gather saves 9.3 us at 2 MiB and 16.0 us at 8 MiB:
  b = 1.12 us per MiB, a = 7.1 us; reduce-scatter, assumed to have the same
  slope, a = 5.6 us. All-reduce has no published figure; it is assumed to save
  what reduce-scatter does, and so is all-to-all (NCCL has no symmetric
  all-to-all kernel yet: an assumption to be replaced by a measurement).
- H100 HBM3: 3.35 TB/s, so copying a MiB costs 2 MiB / 3.35 TB/s = 0.63 us.
- Copies per call: all-gather S in and W*S out; reduce-scatter W*S in and S
  out; all-reduce S in and S out; all-to-all W*S in (it receives straight
  into XLA's output, but the table's rule counts W*S out too: its crossover
  is on the low side).

On 8 GPUs this gives all-gather 1.6 MiB, reduce-scatter 1.2 MiB per rank. For
all-reduce the copies (1.25 us per MiB) barely outgrow the assumed saving, so
its crossover is capped at 8 MiB, the largest published size.

The XLA path (`_nccl_path`: XLA's communicator and collective memory) copies
nothing: the symmetric kernel's saving is all gain there, so it has no
crossover (every size is served) unless the setting names one.
"""

from __future__ import annotations

_MIB = 1 << 20
_COPY_US_PER_MIB = 2 / 3.35e12 * _MIB * 1e6   # read + write one MiB through HBM
_SAVED_SLOPE_US_PER_MIB = (16.0 - 9.3) / 6     # all-gather, 2 -> 8 MiB
_SAVED_AT_ZERO_US = {
    "all_gather": 9.3 - 2 * _SAVED_SLOPE_US_PER_MIB,
    "reduce_scatter": 7.8 - 2 * _SAVED_SLOPE_US_PER_MIB,
    "all_reduce": 7.8 - 2 * _SAVED_SLOPE_US_PER_MIB,
    "all_to_all": 7.8 - 2 * _SAVED_SLOPE_US_PER_MIB,
}
_CAP_BYTES = 8 * _MIB


def copied_mib_per_mib(kind: str, world: int) -> float:
    """MiB the window path copies per MiB of per-rank message: the input
    into the window, the output out of it (`_kinds.Kind.copied_chunks`)."""
    from . import _kinds

    return float(_kinds.kind(kind).copied_chunks(world))


def model_crossover_bytes(kind: str, world: int) -> int:
    """The per-rank message size up to which the window path should win."""
    cost_slope = copied_mib_per_mib(kind, world) * _COPY_US_PER_MIB
    if cost_slope <= _SAVED_SLOPE_US_PER_MIB:
        return _CAP_BYTES
    mib = _SAVED_AT_ZERO_US[kind] / (cost_slope - _SAVED_SLOPE_US_PER_MIB)
    return min(int(mib * _MIB), _CAP_BYTES)


NO_CROSSOVER = 1 << 62  # a path without copies serves every size


def crossover_bytes(kind: str, world: int, copies: bool = True) -> int:
    """The setting if given (jax_symm_crossover_bytes >= 0), else the model's
    for a path that copies (`copies`), else none."""
    from . import settings

    value = settings.checked_crossover_bytes()
    if value >= 0:
        return value
    return model_crossover_bytes(kind, world) if copies else NO_CROSSOVER


def use_window(kind: str, world: int, message_bytes: int, copies: bool = True) -> bool:
    return message_bytes <= crossover_bytes(kind, world, copies)
