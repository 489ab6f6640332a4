"""The seam between the shared lowering (`_lowering`) and a transport.

A transport serves jax_symm's calls on one XLA platform: `_host` on XLA:CPU
(shared-memory windows), `_nccl` on XLA:GPU (NCCL symmetric windows). Each
module holds one instance of its class as `TRANSPORT`; `_routing` lists them.
The lowering asks a transport only what this interface says: whether it
serves a group of one device, why it cannot serve a call, and to lower it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol

import numpy as np

from ._kinds import Kind


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
    """One call, as a transport sees it: in NCCL's layout (the gathered or
    scattered dimension leading), `chunk_bytes` per rank and chunk."""

    kind: Kind
    dtype: np.dtype
    groups: np.ndarray  # (num_groups, group_size) int64 global device ids
    chunk_bytes: int
    axes: tuple = ()    # the mesh axis names it runs over (for messages)

    @property
    def world(self) -> int:
        return int(self.groups.shape[1])


class Refusal(NamedTuple):
    """Why XLA's own collective serves a call instead, and whether to warn."""

    why: str
    warn: bool


class Transport(Protocol):
    platform: str          # the lowering platform it registers for ("cpu", "cuda")
    serves_one_rank: bool  # whether a group of one device can keep the custom call

    def refusal(self, call: Call) -> Refusal | None:
        """None if it serves `call`; otherwise why XLA's collective does.
        Every process must reach the same answer for the same program."""

    def lower(self, call: Call, ctx, x) -> list:
        """Prepares what `call` needs (a collective point) and emits the custom call."""
