"""Every use of JAX internals, in one place.

jax_symm's primitives need pieces of ``jax._src`` (the varying-axes type
system, axis environment, batching tables, replica groups) that move between
releases. Keeping them here means a JAX release breaks this file, not every op.
Supported: jax 0.10.1 to 0.12 (see check_jax_version).
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np

import jax

JAX_VERSION = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())

# Keep in step with pyproject.toml's `jax>=0.10.1,<0.13`. 0.10.0 is out: its
# pxla.axis_groups reads SPMDAxisContext.names, which 0.10.0 no longer has.
MIN_JAX = (0, 10, 1)
MAX_JAX_EXCLUSIVE = (0, 13)


def check_jax_version(version: str | None = None) -> None:
    """Raises ImportError, saying what to install, for a jax jax_symm does not support.

    Called by ``import jax_symm`` so that an unsupported jax fails there, not
    with an internal AttributeError at the first collective.
    """
    if version is None:
        if os.environ.get("JAX_SYMM_SKIP_VERSION_CHECK", "0") not in ("", "0"):
            return
        version = jax.__version__
    parts = []
    for p in version.split(".")[:3]:
        digits = re.match(r"\d+", p)
        parts.append(int(digits.group()) if digits else 0)
    found = tuple(parts)
    if found < MIN_JAX or found[:2] >= MAX_JAX_EXCLUSIVE:
        lo = ".".join(map(str, MIN_JAX))
        hi = ".".join(map(str, MAX_JAX_EXCLUSIVE))
        raise ImportError(
            f"jax_symm supports jax >= {lo} and < {hi}, but jax {version} is installed "
            f"(jax_symm uses JAX internals that change between releases). Install a "
            f"supported one: pip install 'jax>={lo},<{hi}' 'jaxlib>={lo},<{hi}' "
            f"(or set JAX_SYMM_SKIP_VERSION_CHECK=1 to try this jax anyway)")


# Before the jax._src imports below, which may themselves fail on a jax
# outside the supported range.
check_jax_version()

from jax._src import core  # noqa: E402
from jax._src.interpreters import ad, batching, mlir, pxla  # noqa: E402
from jax._src.lax import parallel as lax_parallel  # noqa: E402

Primitive = core.Primitive
named_axis_effect = core.NamedAxisEffect
deflinear2 = ad.deflinear2
register_lowering = mlir.register_lowering
lower_fun = mlir.lower_fun
ir_type_of = mlir.aval_to_ir_type


def reshape_to(ctx, x, aval):
    """An HLO reshape of `x` to `aval`'s shape (a group of one moves no data)."""
    from jax._src.lib.mlir.dialects import hlo

    return hlo.reshape(mlir.aval_to_ir_type(ctx.module_context, aval), x)


def typeof(x: Any) -> core.AbstractValue:
    return core.typeof(x)


def varying_axes(aval: core.AbstractValue) -> frozenset:
    """The manual mesh axes along which `aval` varies (its vma set)."""
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", frozenset()))


def update_aval(aval: core.AbstractValue, shape: Sequence[int], vma: frozenset):
    """`aval` with a new shape and varying-axes set."""
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return aval.update(shape=tuple(shape), manual_axis_type=mat.update(varying=vma))
    return aval.update(shape=tuple(shape), vma=vma)


def collective_vma(prim_name: str, axes: tuple, aval) -> frozenset:
    """lax's rule: a collective's input must vary over its axes; output keeps them."""
    return lax_parallel.collective_vma_rule(prim_name, axes, aval)


def pvary(x, axes: tuple):
    """Marks `x` as varying over `axes` (no data moves)."""
    return core.pvary(x, axes)


def check_vma_enabled() -> bool:
    """Whether shard_map is tracking varying axes (check_vma=True)."""
    from jax._src import config

    return bool(config._check_vma.value)


def is_tracer(x: Any) -> bool:
    return isinstance(x, core.Tracer)


def pvary_for_collective(axes: tuple, x):
    """Inserts the pvary that lax inserts before a collective (auto pcast)."""
    return lax_parallel.insert_collective_pvary(axes, x)


def check_axis_names(axes: tuple, api_name: str) -> None:
    lax_parallel._check_axis_names(axes, api_name)


def check_unreduced(avals, axes: tuple, api_name: str) -> None:
    fn = getattr(lax_parallel, "check_unreduced_args", None)
    if fn is not None:
        fn(avals, axes, api_name)


def axes_bound(axes: tuple) -> bool:
    """Whether every named axis in `axes` is bound here (shard_map, pmap)."""
    env = core.get_axis_env()
    return all(env.axis_exists(a) for a in axes if not isinstance(a, int))


def partially_manual() -> bool:
    """Whether tracing is inside a shard_map that is manual over only some of
    its mesh's axes (``axis_names=``, or vmap with ``spmd_axis_name``)."""
    try:
        mesh = jax.sharding.get_abstract_mesh()
    except Exception:
        return False
    manual = set(getattr(mesh, "manual_axes", ()) or ())
    return bool(manual) and manual != set(getattr(mesh, "axis_names", ()) or ())


def mesh_axes(axes: tuple) -> bool:
    """Whether every axis in `axes` is an axis of the current (shard_map or
    pmap) mesh, not e.g. a vmap axis name."""
    try:
        names = set(jax.sharding.get_abstract_mesh().axis_names)
    except Exception:
        return False
    return all(a in names for a in axes)


def axis_size(axes: tuple) -> int:
    """Product of the sizes of the named axes (trace-time constant)."""
    return int(lax_parallel._axis_size(axes))


def skip_one_sized_axes(axes: tuple) -> tuple:
    """lax.psum_scatter drops axes of size one before binding."""
    fn = getattr(lax_parallel, "_maybe_skip_one_sized_axes", None)
    return tuple(fn(axes)) if fn is not None else axes


def input_kind(aval, axes: tuple, api_name: str) -> str:
    """'varying', 'unreduced', 'reduced' or 'invarying' for `aval` over `axes`."""
    fn = getattr(lax_parallel, "_get_from", None)
    return fn(aval, axes, api_name) if fn is not None else "varying"


def register_collective_batcher(prim, rule) -> None:
    """Registers a batcher that also sees the vmapped axis (a 'fancy' batcher)."""
    batching.fancy_primitive_batchers[prim] = rule


def spmd_device_ids(axis_ctx) -> np.ndarray:
    """Global device ids of the lowering's mesh, in mesh (logical) order."""
    mesh = getattr(axis_ctx, "mesh", None)
    try:
        devices = mesh.devices if mesh is not None else None
    except (AttributeError, ValueError, NotImplementedError):
        # An AbstractMesh raises ValueError("AbstractMesh does not implement devices").
        devices = None
    if devices is None or getattr(devices, "dtype", None) != object:
        raise NotImplementedError(
            "jax_symm needs a concrete device mesh at lowering time; pass a "
            "jax.sharding.Mesh to jax.shard_map (or set one with jax.set_mesh) "
            "rather than an AbstractMesh.")
    return np.vectorize(lambda d: d.id, otypes=[np.int64])(devices).reshape(-1)


def replica_groups(axis_ctx, axes: tuple) -> np.ndarray:
    """Groups over `axes` as a (num_groups, group_size) array of global ids.

    lax emits the same groups as logical ids with use_global_device_ids; the
    executable's device assignment maps logical id i to mesh.devices.flat[i].
    """
    logical = np.asarray(pxla.axis_groups(axis_ctx, axes), dtype=np.int64)
    return spmd_device_ids(axis_ctx)[logical]


def lax_lowering(prim, platform: str | None = None):
    """The lowering rule that lax registered for `prim` (for fallbacks)."""
    rules = mlir._platform_specific_lowerings.get(platform) if platform else None
    entry = rules[prim] if rules is not None and prim in rules else mlir._lowerings[prim]
    return getattr(entry, "rule", entry)  # a LoweringRuleEntry since jax 0.5


def lax_primitive(name: str):
    """lax's collective primitive `<name>_p`, or None if this jax has none."""
    return getattr(lax_parallel, f"{name}_p", None)


all_gather_p = lax_parallel.all_gather_p
reduce_scatter_p = lax_parallel.reduce_scatter_p
psum_p = lax_parallel.psum_p


def distributed_client():
    """The jax.distributed key-value client, or None in a single process."""
    from jax._src import distributed

    return distributed.global_state.client


def process_count() -> int:
    return jax.process_count()
