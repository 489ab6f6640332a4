"""A numpy all-to-all: the reference the all-to-all tests check lax and
jax_symm against (no JAX here, so worker processes can import it first)."""

from __future__ import annotations

import numpy as np


def all_to_all(locals_: list, split_axis: int, concat_axis: int, tiled: bool) -> list:
    """What `jax.lax.all_to_all` gives each member of a group whose inputs are
    `locals_` (in axis-index order): member i gets chunk i of every member's
    split axis, in the members' order along `concat_axis`."""
    world = len(locals_)
    if tiled:
        chunks = [np.split(x, world, axis=split_axis) for x in locals_]
        return [np.concatenate([c[i] for c in chunks], axis=concat_axis)
                for i in range(world)]
    return [np.stack([x.take(i, axis=split_axis) for x in locals_], axis=concat_axis)
            for i in range(world)]
