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


def on_mesh(x, mesh, axes, split: int, concat: int, tiled: bool) -> np.ndarray:
    """The all-to-all over mesh `axes` of every device's input: x's rows are
    the devices' inputs in mesh order (sharded over every mesh axis); each
    group over `axes` exchanges; the outputs are stacked the same way."""
    names, dims = mesh.axis_names, tuple(mesh.shape[a] for a in mesh.axis_names)
    locals_ = np.split(np.asarray(x), mesh.devices.size, axis=0)
    out = [None] * len(locals_)
    groups: dict = {}
    for k in range(len(locals_)):
        coords = dict(zip(names, np.unravel_index(k, dims)))
        key = tuple(coords[a] for a in names if a not in axes)
        index = int(np.ravel_multi_index([coords[a] for a in axes],
                                         [mesh.shape[a] for a in axes]))
        groups.setdefault(key, {})[index] = k
    for members in groups.values():
        ranks = [members[i] for i in range(len(members))]
        for k, y in zip(ranks, all_to_all([locals_[k] for k in ranks], split, concat, tiled)):
            out[k] = y
    return np.concatenate(out, axis=0)
