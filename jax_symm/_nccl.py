"""The NCCL transport (XLA:GPU): NCCL, communicators, symmetric arenas and
the custom call that uses them.

Everything happens while a program is lowered, which every process does for
the same program in the same order: that is the collective point where
communicators are created and arenas grow. Handlers (ffi/nccl_collectives.cc)
never do either; they check the buffers XLA passes against the arena named
here and enqueue NCCL work.

The contract with C++: the FFI target names and handlers come from
`ext.nccl_targets()`; the attributes are those `lower` emits; the arena size
a call needs is computed once, here (`arena_bytes_needed`).
"""

from __future__ import annotations

import atexit
import base64
import functools
import os
import socket
import sys
import threading
import time
import warnings

import numpy as np
import jax

from . import _bootstrap, _compat, _dispatch, _kinds, _nccl_path, _peer_watch, settings
from ._native import ext, publish_local_devices, register_ffi_target
from ._transport import Call, Refusal

# {op: FFI target name}, as the C++ module names its handlers.
NCCL_TARGETS = {op: name for op, (name, _) in ext.nccl_targets().items()}

_ready_groups: set[tuple[int, ...]] = set()
_setup_lock = threading.Lock()  # two threads lowering at once create a group once


def _wheel_nccl() -> str:
    """The nvidia-nccl wheel's libnccl.so.2, the copy JAX's plugin loads."""
    try:
        import nvidia.nccl as pkg
    except ImportError:
        return ""
    for base in list(getattr(pkg, "__path__", [])):
        path = os.path.join(base, "lib", "libnccl.so.2")
        if os.path.exists(path):
            return path
    return ""


# The XLA path's clique: jax_symm's calls get a communicator of their own per
# group, apart from the one XLA's own collectives use (communication id 0), so
# that the two never interleave work on one communicator.
XLA_COMMUNICATION_ID = 0x6A73


@functools.cache
def xla_targets() -> dict[str, str]:
    """{op: FFI target name} of the XLA path, registered on first use."""
    names = {}
    for op, (name, stages) in ext.nccl_xla_targets(settings.nccl_xla_capture()).items():
        register_ffi_target(name, dict(stages), platform="CUDA")
        names[op] = name
    return names


@functools.cache
def load() -> dict:
    """Loads NCCL (JAX's copy) and registers the GPU handlers; idempotent."""
    ext.nccl_set_all_to_all_send_recv(settings.nccl_all_to_all() == "send_recv")
    info = ext.nccl_load(_wheel_nccl())
    for name, capsule in ext.nccl_targets().values():
        register_ffi_target(name, capsule, platform="CUDA")
    if _nccl_path.choice().path == "xla":
        xla_targets()
    publish_local_devices("gpu")
    ext.nccl_set_abort_callback(_on_abort)
    # Before any communicator exists: only those made under a bound get the
    # progress beacon that enforces it (nccl_comms.cc; it costs GPU time).
    ext.nccl_set_stall_timeout(settings.gpu_timeout_s())
    atexit.register(shutdown)
    return info  # without symmetric windows, lowering warns (unusable_reason)


class NcclCommunicatorAborted(RuntimeError):
    """A communicator of jax_symm's failed (a peer died, a collective made no
    progress for JAX_SYMM_GPU_TIMEOUT_S, or NCCL reported another
    asynchronous error) and its watchdog aborted it."""

    def __init__(self, *args):
        # Raised asynchronously in the main thread, the class is called with
        # no arguments: the message is the watchdog's latest.
        super().__init__(*(args or (_abort_messages[-1] if _abort_messages else
                                    "jax_symm: an NCCL communicator was aborted",)))


_abort_messages: list[str] = []


def _on_abort(message: str) -> None:
    """On the watchdog's thread, once per aborted communicator.

    Calls that run the handler again fail on their own, but XLA replays
    calls captured into a CUDA graph without calling the handler: so the
    main thread is also interrupted with NcclCommunicatorAborted, which it
    raises as soon as it runs Python again (once the step in flight, whose
    outputs are not valid, has drained).
    """
    import ctypes

    first = not _abort_messages
    _abort_messages.append(message)
    print(f"[{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}] {message}",
          file=sys.stderr, flush=True)
    if first:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(threading.main_thread().ident),
            ctypes.py_object(NcclCommunicatorAborted))


def version_string(code: int) -> str:
    return f"{code // 10000}.{code // 100 % 100}.{code % 100}"


def floor(name: str) -> int:
    """The NCCL version (code) from which a rule of jax_symm's holds
    (ffi/nccl_versions.h: "symmetric_windows", "all_to_all", "half_window",
    "multi_node_symmetric", "pdl_fixed")."""
    return ext.nccl_version_floors()[name]


def usable() -> bool:
    return bool(load()["symmetric_windows"])


def shutdown() -> None:
    """Stops the watchdog; in one process, frees windows and communicators. In
    a multi-process job nothing is torn down (a collective teardown could wait
    forever for a peer that exited first or died, and ncclCommAbort for CUDA
    graphs XLA still holds): the process's exit frees it."""
    ext.nccl_shutdown(_compat.process_count() == 1)
    _ready_groups.clear()


def _unique_id(members: tuple[int, ...], owner: int, me: int) -> bytes:
    """The group's NCCL id, made by `owner` (the process of its rank 0)."""
    if _compat.process_count() == 1:
        return ext.nccl_unique_id()
    key = "nccl_id/" + "-".join(map(str, members))
    make = lambda: base64.b64encode(ext.nccl_unique_id()).decode()
    if owner == me:
        return base64.b64decode(_bootstrap.publish(key, make))
    return base64.b64decode(_bootstrap.fetch(key, owner, "the group's NCCL unique id"))


def _local_rows(groups: np.ndarray) -> list[int]:
    me = jax.process_index()
    by_id = {d.id: d for d in jax.devices()}
    return [g for g in range(groups.shape[0])
            if any(by_id[int(i)].process_index == me for i in groups[g])]


def ensure_groups(groups: np.ndarray) -> None:
    """Creates the communicators of every group with a device in this process."""
    load()
    me = jax.process_index()
    by_id = {d.id: d for d in jax.devices()}
    if _compat.process_count() > 1:
        devices_of: dict[int, list[int]] = {}
        for d in jax.devices():
            devices_of.setdefault(d.process_index, []).append(d.id)
        _peer_watch.start(devices_of)
        process_nccl_hosts()  # now, while every process is here (info() reads it later)
    with _setup_lock:
        _ensure_groups_locked(groups, me, by_id)


def _ensure_groups_locked(groups: np.ndarray, me: int, by_id: dict) -> None:
    for g in _local_rows(groups):
        members = tuple(int(i) for i in groups[g])
        if members in _ready_groups:
            continue
        local = [(gid, by_id[gid].local_hardware_id, rank)
                 for rank, gid in enumerate(members) if by_id[gid].process_index == me]
        uid = _unique_id(members, by_id[members[0]].process_index, me)
        ext.nccl_init_group(list(members), local, uid)
        _ready_groups.add(members)


def ensure_arenas(groups: np.ndarray, nbytes: int) -> np.ndarray:
    """Per group, the size of an arena of at least `nbytes` (0 if not local)."""
    sizes = np.zeros(groups.shape[0], dtype=np.int64)
    for g in _local_rows(groups):
        sizes[g] = ext.nccl_ensure_arena([int(i) for i in groups[g]], int(nbytes),
                                         settings.arena_bytes())
    return sizes


@functools.cache
def warn_if_concurrent_command_buffers() -> None:
    """Every call on a communicator uses its arena from offset 0, which XLA
    cannot see; in XLA's CONCURRENT command-buffer mode independent calls may
    become parallel graph branches and race on it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if ("command_buffer_scheduling_mode=CONCURRENT" in flags
            or "xla_gpu_graph_enable_concurrent_region=true" in flags):
        warnings.warn(
            "jax_symm: XLA's concurrent command-buffer mode may run independent "
            "jax_symm calls at once on one communicator; this is not supported. Use "
            "the default scheduling mode.", RuntimeWarning, stacklevel=2)


def groups_info() -> list[dict]:
    """This process's communicators: members, local devices, arenas, whether
    every arena got a symmetric window, whether NCCL runs its symmetric
    kernels there (a window, and for NCCL < 2.29 all ranks on one NCCL host),
    and whether their collectives have a stall bound (`stall_watch`)."""
    out = []
    version = load()["version"]
    # Never waits for other processes (info() must answer when a peer is gone):
    # the identities were agreed when the first communicator was made.
    known = _compat.process_count() == 1 or _identities is not None
    for g in ext.nccl_groups():
        g = dict(g)
        spans = known and groups_span_nccl_hosts(np.asarray([g["members"]], dtype=np.int64))
        g["symmetric_kernels"] = (bool(g["symmetric_windows"]) and known
                                  and (version >= floor("multi_node_symmetric") or not spans))
        out.append(g)
    return out


def aborted() -> list[str]:
    """Why the watchdog aborted communicators of this process, if it did."""
    return list(ext.nccl_aborted())


# What NCCL sums (ffi/nccl_types.h; it has no 16-bit integer type): other
# sums stay with XLA.
_SUMMABLE = _kinds.SUM_DTYPES["nccl"]


def unusable_reason(kind: str, dtype) -> str | None:
    """None if NCCL can serve this call at all; otherwise a one-line
    user-facing reason why XLA's collective is used instead."""
    try:
        info = load()
    except RuntimeError as e:
        return (f"jax_symm: NCCL could not be loaded ({e}); jax_symm.{kind} uses XLA's "
                "own collective.")
    if not info["symmetric_windows"]:
        return (f"jax_symm: NCCL {version_string(info['version'])} has no symmetric windows "
                f"(needs >= {version_string(floor('symmetric_windows'))}); jax_symm.{kind} "
                "uses XLA's own collective.")
    if kind == "all_to_all" and not info.get("all_to_all", "ncclAlltoAll"):
        return (f"jax_symm: NCCL {version_string(info['version'])} has neither ncclAlltoAll "
                "nor ncclSend/ncclRecv; jax_symm.all_to_all uses XLA's own collective.")
    if _kinds.kind(kind).sums and np.dtype(dtype) not in _SUMMABLE:
        return (f"jax_symm: NCCL cannot sum {np.dtype(dtype).name} (it has no such type); "
                f"jax_symm.{kind} uses XLA's own collective.")
    return None


# ---- whether NCCL runs its symmetric kernels for a group ----
#
# The window path copies into and out of the arena; that pays only where NCCL
# then runs its symmetric kernels. NCCL 2.28 runs them only for communicators
# on one node (as NCCL counts nodes: by host hash) whose GPUs are all on
# NVLink; 2.29+ says so itself with a NULL window. Processes that share a
# GPU with their own NCCL_HOSTID are separate nodes to NCCL. Every process
# must route a call the same way, so the rule reads only what all processes
# agree on: the NCCL host identity of every process.

_identity_lock = threading.Lock()
_identities: dict[int, str] | None = None


def nccl_host_identity() -> str:
    """What NCCL hashes to tell hosts apart: NCCL_HOSTID if set, else the host
    name and the boot id (src/misc/utils.cc)."""
    override = os.environ.get("NCCL_HOSTID")
    if override:
        return "NCCL_HOSTID=" + override
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}|{boot}"


def process_nccl_hosts() -> dict[int, str]:
    """Process index -> NCCL host identity, agreed through the key-value store
    once (the first GPU lowering of every process reaches here in step)."""
    global _identities
    with _identity_lock:
        if _identities is None:
            _identities = _bootstrap.per_process("nccl_host", nccl_host_identity(),
                                                  "NCCL host identity")
        return _identities


def groups_span_nccl_hosts(groups: np.ndarray) -> bool:
    """Whether a group has ranks on several NCCL hosts (so no symmetric kernels
    before NCCL 2.29, and only multi-node ones from 2.29)."""
    if _compat.process_count() == 1:
        return False
    hosts = process_nccl_hosts()
    owner = {d.id: d.process_index for d in jax.devices()}
    return any(len({hosts[owner[int(g)]] for g in row}) > 1 for row in groups)


def window_reason(kind: str, dtype, groups: np.ndarray, message_bytes: int):
    """(why XLA's collective serves this call or None, whether to warn).

    Every process reaches the same answer: it depends on the NCCL that is
    loaded, settings, the call and the agreed host identities only.
    """
    why = unusable_reason(kind, dtype)
    if why is not None:
        return why, True
    if settings.force_window.value:
        return None, False
    own = _nccl_path.current().path == "own"
    if groups_span_nccl_hosts(groups):
        return (f"jax_symm: a group of this jax_symm.{kind} has ranks on several NCCL hosts "
                "(different hosts, or processes with their own NCCL_HOSTID), where NCCL runs "
                "no symmetric kernels (and from NCCL 2.29 registers no window), so jax_symm "
                "buys nothing; it uses XLA's own collective (jax_symm_force_window=True takes "
                "jax_symm's path anyway, without windows on the XLA path)."), True
    if not _dispatch.use_window(kind, int(groups.shape[1]), message_bytes, copies=own):
        return "above the crossover", False
    return None, False


def arena_bytes_needed(kind: str, chunk_bytes: int, world: int) -> int:
    """What one call stages in its arena: the larger of its input and output
    (`_kinds.Kind.staged_chunks`). The handler checks the buffers against the
    arena, never this rule."""
    return chunk_bytes * _kinds.kind(kind).staged_chunks(world)


def _call_attributes(groups: np.ndarray, chunk_bytes: int) -> dict:
    """The attributes every call carries, on either path (ffi/ffi_call.h
    CallAttrs)."""
    return dict(groups=np.ascontiguousarray(groups.reshape(-1), dtype=np.int64),
                group_size=np.int64(groups.shape[1]), chunk_bytes=np.int64(chunk_bytes))


def lower(kind: str, ctx, x, *, groups: np.ndarray, chunk_bytes: int) -> list:
    """Creates communicators and grows arenas for `groups` (a (num_groups,
    group_size) int64 array of global device ids), then emits the custom call.

    No side effect is declared: identical calls may be merged or dropped, on
    every device alike, and XLA stays free to capture them into CUDA graphs.
    """
    if _nccl_path.current().path == "xla":
        return lower_xla(kind, ctx, x, groups=groups, chunk_bytes=chunk_bytes)
    warn_if_concurrent_command_buffers()
    ensure_groups(groups)
    world = int(groups.shape[1])
    arenas = ensure_arenas(groups, arena_bytes_needed(kind, chunk_bytes, world))
    rule = jax.ffi.ffi_lowering(NCCL_TARGETS[kind])
    _compat.pass_order_token(ctx)  # one stream per device keeps program order
    return list(rule(
        ctx, x,
        **_call_attributes(groups, chunk_bytes),
        arena_bytes=arenas,
    ))


def lower_xla(kind: str, ctx, x, *, groups: np.ndarray, chunk_bytes: int) -> list:
    """The XLA path's custom call: the buffers NCCL's symmetric kernels need
    placed in XLA's collective memory (the all-reduce's one buffer aliased),
    XLA's communicator and windows asked for in the handler's Prepare stage.
    Nothing is set up here: XLA makes the communicator and the memory."""
    version = load()["version"]
    # Groups over several NCCL hosts reach here only when forced (window_reason):
    # NCCL has no symmetric memory there, and from 2.29 XLA's registration of
    # a window fails outright, so their buffers stay in default memory.
    windows = 0 if groups_span_nccl_hosts(groups) else _nccl_path.window_buffers(kind, version)
    windowed = _nccl_path.windowed_bytes(kind, windows, chunk_bytes, int(groups.shape[1]))
    too_big = _nccl_path.collective_memory_reason(windowed)
    if too_big is not None:
        raise ValueError(too_big)
    attributes = _nccl_path.memory_space_attributes(windows)
    rule = jax.ffi.ffi_lowering(
        xla_targets()[kind],
        operand_output_aliases={0: 0} if kind == "all_reduce" else None,
        extra_attributes=_compat.frontend_attributes(attributes))
    _compat.pass_order_token(ctx)  # one stream per device keeps program order
    return list(rule(
        ctx, x,
        **_call_attributes(groups, chunk_bytes),
        windows=np.int64(windows),
        communication_id=np.int64(XLA_COMMUNICATION_ID),
        window_flags=np.int64(ext.nccl_version_floors()["win_coll_symmetric"]),
        pdl_fence=np.int64(_nccl_path.needs_pdl_fence(version)),
    ))


class NcclTransport:
    """The transport of XLA:GPU (see `_transport.Transport`): it serves a call
    where NCCL can and its symmetric kernels pay for the window's copies (the
    crossover of `_dispatch`)."""

    platform = "cuda"
    serves_one_rank = True  # a 1-rank communicator (jax_symm_singleton_calls)

    def refusal(self, call: Call) -> Refusal | None:
        why, warn = window_reason(call.kind.name, call.dtype, call.groups, call.chunk_bytes)
        return None if why is None else Refusal(why, warn)

    def lower(self, call: Call, ctx, x) -> list:
        return lower(call.kind.name, ctx, x, groups=call.groups, chunk_bytes=call.chunk_bytes)


TRANSPORT = NcclTransport()
