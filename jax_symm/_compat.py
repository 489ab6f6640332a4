"""Every use of JAX internals, in one place.

jax_symm's primitives need pieces of ``jax._src`` (the varying-axes type
system, axis environment, batching tables, replica groups) that move between
releases. Keeping them here means a JAX release breaks this file, not every op.
Supported: jax 0.10.1 to 0.12 (see check_jax_version).

A private name is used directly, so that a jax release that moves it fails at
import or at its first use, never by skipping what it did; a name that only
some supported releases have is reached through `since` (an explicit version
branch). Where jax_symm changes JAX's own objects is listed in `PATCHES` (and
by `jax_symm.info()`). tests/install/test_compat.py checks every private name used
here against the installed jax.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from typing import Any, Callable, Sequence

import numpy as np

import jax


# Keep in step with pyproject.toml's `jax>=0.10.1,<0.13`. 0.10.0 is out: its
# pxla.axis_groups reads SPMDAxisContext.names, which 0.10.0 no longer has.
MIN_JAX = (0, 10, 1)
MAX_JAX_EXCLUSIVE = (0, 13)


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, patch) of a jax version string ('0.12.0.1' -> (0, 12, 0))."""
    parts = []
    for p in version.split(".")[:3]:
        digits = re.match(r"\d+", p)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


JAX_VERSION = version_tuple(jax.__version__)


# XLA:GPU's collective memory space (xla::gpu::MemorySpaceColor::kCollective,
# ncclMemAlloc'd), as a custom call's `operands_memory_spaces` /
# `results_memory_spaces` frontend attributes name it: 7 from jax 0.12 (jax's
# own Mosaic GPU lowering spells it so); older XLA numbered it otherwise and
# its collectives extension has no windows, so jax_symm uses it from 0.12 only.
COLLECTIVE_MEMORY_SPACE = 7 if version_tuple(jax.__version__)[:2] >= (0, 12) else None


def check_jax_version(version: str | None = None) -> None:
    """Raises ImportError, saying what to install, for a jax jax_symm does not support.

    Called by ``import jax_symm`` so that an unsupported jax fails there, not
    with an internal AttributeError at the first collective.
    """
    if version is None:
        if os.environ.get("JAX_SYMM_SKIP_VERSION_CHECK", "0") not in ("", "0"):
            return
        version = jax.__version__
    found = version_tuple(version)
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
deflinear2 = ad.deflinear2


def collective_effects(axes: tuple) -> set:
    """A jax_symm collective's effects: lax's named-axis effects, nothing more.

    No ordering effect is needed, on any platform: GPU calls run in program
    order on each device's stream, and the CPU handlers never hold an XLA
    thread while they wait for peers (ffi/host_collectives.cc), so calls pair
    by call site whatever order XLA:CPU runs them in. Declaring no effect of
    our own keeps jax_symm equations as lax's are for remat (recomputed, not
    saved), DCE, scan, the fast dispatch path and the persistent cache.
    """
    return set(map(core.NamedAxisEffect, axes))


class _FunctionCache(dict):
    """A module's cache of lowered functions (jit bodies, remat, calls) that
    does not keep a function holding jax_symm calls.

    JAX lowers a function once per module and calls it from every point that
    uses it; XLA may run such calls concurrently, and calls of one call site
    cannot be told apart. Not caching those functions makes every point a
    lowering of its own, with call sites of its own.
    """

    def __init__(self, entries):
        super().__init__(entries)
        self.calls = 0      # jax_symm calls lowered into this module so far
        self.started = {}   # key -> calls when its lowering began (a cache miss)
        self.program = None  # what _programs records of this module's lowering

    def _miss(self, key):
        self.started.setdefault(key, self.calls)

    def __getitem__(self, key):
        try:
            return super().__getitem__(key)
        except KeyError:
            self._miss(key)
            raise

    def get(self, key, default=None):
        if key not in self:
            self._miss(key)
        return super().get(key, default)

    def __setitem__(self, key, value):
        # A lowering that began before this cache was installed was under way
        # when a jax_symm call was lowered: it holds one.
        if self.started.pop(key, -1) == self.calls:
            super().__setitem__(key, value)


# ---- patches: the places where jax_symm changes JAX's own objects ----


@dataclasses.dataclass
class Patch:
    """One change jax_symm makes to JAX, applied where `needed_on` says."""

    what: str
    needed_on: tuple = (MIN_JAX, MAX_JAX_EXCLUSIVE)  # [first, last) jax versions
    applied: bool = False

    @property
    def needed(self) -> bool:
        first, last = self.needed_on
        return first <= JAX_VERSION[:len(first)] and JAX_VERSION[:len(last)] < last


PATCHES: dict[str, Patch] = {
    "lax_collective_binds": Patch(
        "use_symmetric_memory(), on first use: the bind of lax's all_gather, "
        "all_gather_invariant, reduce_scatter, psum, psum_invariant and all_to_all primitives is "
        "wrapped, so that calls traced inside the scope bind jax_symm's primitives "
        "(jax has no hook for this)"),
    "module_function_cache": Patch(
        "a module that lowers a jax_symm call gets a ModuleContext."
        "cached_primitive_lowerings that does not keep functions holding jax_symm calls "
        "(so that each use of such a function gets call sites of its own)"),
}
_patch_lock = threading.Lock()


def patches() -> dict[str, dict]:
    """What jax_symm patches in JAX, and whether it did so in this process."""
    return {name: {"what": p.what, "needed": p.needed, "applied": p.applied}
            for name, p in PATCHES.items()}


def reroute_lax_binds(reroutes: dict[str, Callable], active: Callable[[], bool],
                      passed: object) -> None:
    """Patch 'lax_collective_binds' (once): while `active()`, a one-operand
    bind of lax's primitive `name` calls `reroutes[name]`, and lax's own bind
    where that returns `passed`."""
    patch = PATCHES["lax_collective_binds"]
    with _patch_lock:
        if patch.applied or not patch.needed:
            return
        for name, reroute in reroutes.items():
            prim = lax_primitive(name)
            original = prim.bind

            def bind(*args, _original=original, _reroute=reroute, **params):
                if active() and len(args) == 1:
                    out = _reroute(*args, **params)
                    if out is not passed:
                        return out
                return _original(*args, **params)

            prim.bind = bind
        patch.applied = True


def call_ordinal(ctx) -> int:
    """The number of this jax_symm call among those lowered into the same
    module so far (1, 2, ...). Every process lowering a program lowers its
    equations in one deterministic order, so (module, ordinal) names the call
    in every process alike, whatever other programs a process lowers
    meanwhile or in which order."""
    cache = module_cache(ctx)
    cache.calls += 1
    return cache.calls


def module_cache(ctx) -> _FunctionCache:
    """The module's cache of lowered functions, installed on first use (one
    object per module lowering: _programs keeps its record of it there)."""
    module_ctx = ctx.module_context
    cache = module_ctx.cached_primitive_lowerings
    if not isinstance(cache, _FunctionCache):  # patch 'module_function_cache'
        cache = _FunctionCache(cache)
        module_ctx.cached_primitive_lowerings = cache
        PATCHES["module_function_cache"].applied = True
    return cache


# JAX times each module's lowering (jaxpr to MLIR) through jax.monitoring:
# the event ends, in the lowering thread, when lower_jaxpr_to_module returns
# or raises. `fun_name` names the module (before sanitize_module_name).
def on_module_lowered(callback: Callable[[str], None]) -> None:
    """Calls callback(module name, as the module's sym_name has it) in the
    lowering thread whenever JAX has finished lowering a module (or failed
    to). Through jax.monitoring's public listener API, once per callback."""
    from jax._src import dispatch

    event = dispatch.JAXPR_TO_MLIR_MODULE_EVENT

    def listener(name, duration, **kwargs):
        if name == event:
            callback(sanitize_module_name(str(kwargs.get("fun_name", ""))))

    jax.monitoring.register_event_duration_secs_listener(listener)


def sanitize_module_name(name: str) -> str:
    """A module name as lower_jaxpr_to_module writes it into sym_name."""
    return mlir.sanitize_name(name).rstrip("_")


def module_name(ctx) -> str:
    """The name of the module being lowered (e.g. 'jit_step')."""
    try:
        return str(ctx.module_context.module.operation.attributes["sym_name"]).strip('"')
    except Exception:  # noqa: BLE001  (only part of a call's identity)
        return ""


def source_lines(ctx) -> str:
    """Where in user code the call was traced (file:line of every user frame)."""
    from jax._src import source_info_util

    tb = getattr(ctx, "traceback", None)
    if tb is None:
        return ""
    try:
        frames = source_info_util.user_frames(tb)
        return ";".join(f"{f.file_name}:{f.start_line}" for f in frames)
    except Exception:  # noqa: BLE001  (only part of a call's identity)
        return ""


def user_location(ctx) -> str:
    """The innermost user frame the call was traced from ("file.py:12"),
    jax_symm's own files left out; "" when unknown."""
    import os

    from jax._src import source_info_util

    tb = getattr(ctx, "traceback", None)
    if tb is None:
        return ""
    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep
    try:
        for f in source_info_util.user_frames(tb):
            if not os.path.abspath(f.file_name).startswith(ours):
                return f"{f.file_name}:{f.start_line}"
    except Exception:  # noqa: BLE001  (only in messages)
        pass
    return ""


# Bounds the text hashed per call (preceding operations of its block).
_PRECEDING_OPS = 256


# A dense elements attribute's value (a constant's data): "dense<2.0>",
# "dense<[1, 2]>", "dense<\"0x...\">", "dense_resource<blob>".
_DENSE_VALUE = re.compile(r"dense(_resource)?<[^<>]*>")


def preceding_ops(ctx) -> str:
    """The operations lowered so far in the block the call goes into (its
    program up to here: arithmetic, earlier calls, constants' types), as text
    without locations; the last few hundred at most. Constants' values are
    left out: a value that differs between processes (a factor of
    jax.process_index()) changes no collective's shape, and with it in the
    text the processes named one call site differently and never met."""
    from jax._src.lib.mlir import ir

    try:
        ops = list(ir.InsertionPoint.current.block.operations)[-_PRECEDING_OPS:]
        text = "\n".join(op.operation.get_asm(large_elements_limit=16) for op in ops)
    except Exception:  # noqa: BLE001  (only part of a call's identity)
        return ""
    return _DENSE_VALUE.sub("dense<>", text)


def config_state(name: str, default, help: str):
    """A JAX config option that keys jit's cache and the trace context; its
    environment variable is NAME.upper(). `default`: a bool, an int, or
    (default, *allowed strings). Reuses one defined already (reload)."""
    from jax._src import config as jax_config

    try:
        if isinstance(default, tuple):  # (default, *allowed values): a string option
            return jax_config.enum_state(name, list(default[1:]), default[0], help,
                                         include_in_jit_key=True, include_in_trace_context=True)
        make = jax_config.bool_state if isinstance(default, bool) else jax_config.int_state
        return make(name, default, help, include_in_jit_key=True,
                    include_in_trace_context=True)
    except Exception:  # defined already (the module was reloaded)
        return jax_config.config._value_holders[name]


def frontend_attributes(values: dict[str, str]) -> dict:
    """A custom call's `extra_attributes` holding XLA frontend attributes
    (built while lowering: the MLIR context must be active)."""
    from jax._src.lib.mlir import ir

    return {"mhlo.frontend_attributes": ir.DictAttr.get(
        {k: ir.StringAttr.get(v) for k, v in values.items()})}


def register_lowering(prim, rule, platform=None) -> None:
    # Not cacheable: JAX would otherwise lower identical equations (same shape
    # and parameters) once and reuse the result, so that independent calls
    # would share one call site.
    mlir.register_lowering(prim, rule, platform=platform, cacheable=False)


def pass_order_token(ctx) -> None:
    """Hands JAX's effect tokens through unchanged (jax_symm's lowerings use
    none of their own)."""
    ctx.set_tokens_out(ctx.tokens_in)


lower_fun = mlir.lower_fun


def with_avals(ctx, avals_in, avals_out):
    """A copy of a lowering context for a part of the call with other types."""
    return ctx.replace(avals_in=list(avals_in), avals_out=list(avals_out))


def reshape_to(ctx, x, aval):
    """An HLO reshape of `x` to `aval`'s shape (a group of one moves no data)."""
    from jax._src.lib.mlir.dialects import hlo

    return hlo.reshape(mlir.aval_to_ir_type(ctx.module_context, aval), x)


def canonicalize_axis(axis: int, ndim: int) -> int:
    """A non-negative axis for `ndim` dimensions; ValueError if out of range."""
    from jax._src.util import canonicalize_axis as canonical

    return canonical(axis, ndim)


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


# lax's check that a collective's arguments are not unreduced: in jax's main
# branch (read 2026-12), in no release up to 0.12.0.1 (0.10.2, 0.11.2 and
# 0.12.0.1 read), so expected from the next.
_UNREDUCED_CHECK_SINCE = (0, 13)


def since(version: tuple, module, name: str):
    """`module.name` on jax >= `version`, None before. On a jax that should
    have it and has not, AttributeError: a moved name fails loudly, never
    silently drops what it did."""
    if JAX_VERSION < version:
        return None
    if not hasattr(module, name):
        raise AttributeError(
            f"jax_symm: jax {jax.__version__} has no {module.__name__}.{name}, which "
            f"jax_symm expects from jax {'.'.join(map(str, version))} on; jax_symm/_compat.py "
            "needs updating for this jax.")
    return getattr(module, name)


def check_unreduced(avals, axes: tuple, api_name: str) -> None:
    check = since(_UNREDUCED_CHECK_SINCE, lax_parallel, "check_unreduced_args")
    if check is not None:
        check(avals, axes, api_name)


def axes_bound(axes: tuple) -> bool:
    """Whether every named axis in `axes` is bound here (shard_map, pmap)."""
    env = core.get_axis_env()
    return all(env.axis_exists(a) for a in axes if not isinstance(a, int))


def bound_axis_sizes() -> dict:
    """The named axes bound where tracing is now (shard_map's manual mesh
    axes, pmap's and vmap's axis names) -> their sizes; empty outside."""
    return dict(core.get_axis_env().axis_sizes)


def current_mesh_axes() -> tuple:
    """The axis names of the mesh tracing is under (shard_map's), or ()."""
    try:
        return tuple(jax.sharding.get_abstract_mesh().axis_names)
    except Exception:
        return ()


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
    return tuple(lax_parallel._maybe_skip_one_sized_axes(axes))


def input_kind(aval, axes: tuple, api_name: str) -> str:
    """'varying', 'unreduced', 'reduced' or 'invarying' for `aval` over `axes`."""
    return lax_parallel._get_from(aval, axes, api_name)


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
    return entry.rule  # a LoweringRuleEntry (since jax 0.5)


# lax's collective primitives jax_symm lowers to or reroutes (every supported jax has all).
_LAX_PRIMITIVES = {p.name: p for p in (
    lax_parallel.all_gather_p, lax_parallel.all_gather_invariant_p,
    lax_parallel.reduce_scatter_p, lax_parallel.psum_p, lax_parallel.psum_invariant_p,
    lax_parallel.all_to_all_p)}


def lax_primitive(name: str):
    """lax's collective primitive of that name ('all_gather', 'psum', ...)."""
    return _LAX_PRIMITIVES[name]


def distributed_client():
    """The jax.distributed key-value client, or None in a single process."""
    from jax._src import distributed

    return distributed.global_state.client


def distributed_process() -> tuple[int, int] | None:
    """(this process's index, the job's process count) while jax.distributed
    is up, else None. Read from its state, not from jax.process_index(), which
    may start a backend: this is asked on the interpreter's way out."""
    from jax._src import distributed

    state = distributed.global_state
    if state.client is None:
        return None
    return int(state.process_id), int(state.num_processes)


def process_count() -> int:
    return jax.process_count()


def registered_ffi_targets(platform: str) -> set[str] | None:
    """The custom-call targets XLA holds for `platform` ("cpu", "gpu"), read
    from jaxlib's own registry; None where this jaxlib cannot list them.
    (A target handed to `jax.ffi.register_ffi_target` before its backend
    exists waits in jaxlib's queue and is registered, or refused, only then:
    this lists what XLA actually accepted.)"""
    from jax._src.lib import xla_client

    listing = getattr(xla_client, "custom_call_targets", None)
    if listing is None:
        return None
    name = {"cpu": "Host", "gpu": "CUDA"}.get(platform, platform)
    return set(listing(name))
