"""The host transport (XLA:CPU): shared-memory windows between the devices of
one host, in one or several processes.

Everything that must be agreed between processes happens here, at lowering,
which every process of a job passes for the same programs in the same order:
each lowered call gets a call-site number (the same in every process), and the
window of each (call site, group) is created by the process that serves the
group's rank 0 and opened by the others. Window names are keyed hashes of a
per-job secret that travels through jax.distributed's key-value store, so no
other user can predict or plant them (ffi/host_segment.h has the rest of the
defences). Handlers only look windows up; they never create one.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import secrets
import threading

import numpy as np
import jax

from . import _bootstrap, _compat, _liveness, settings
from ._native import ext, publish_local_devices

_lock = threading.Lock()
_sites = itertools.count(1)
_ready = False
_secret = b""


@functools.cache
def targets() -> dict[str, str]:
    """{op: FFI target name}, registered with XLA:CPU on first use."""
    names = {}
    # The instantiate stage ties a call site's windows to the executables that
    # use them: XLA destroys its state with the executable, releasing them.
    stages = ext.host_call_stages()
    jax.ffi.register_ffi_type("jax_symm_host_call_state",
                              {"type_id": stages["type_id"], "type_info": stages["type_info"]},
                              platform="cpu")
    for op, (name, capsule) in ext.host_targets().items():
        jax.ffi.register_ffi_target(
            name, {"instantiate": stages["instantiate"], "execute": capsule}, platform="cpu")
        names[op] = name
    return names


def setup() -> None:
    """Idempotent and thread-safe; the first CPU lowering of a jax_symm op calls it."""
    global _ready, _secret
    with _lock:
        if _ready:
            return
        targets()
        publish_local_devices("cpu")
        ext.host_reap_stale()  # segments of earlier jobs that died
        multi = _compat.process_count() > 1
        _secret = _job_secret(_bootstrap.agree_on("host_secret", lambda: secrets.token_hex(32)))
        ext.set_host_config(settings.timeout_s(), 0.05, settings.bootstrap_timeout_s(),
                            not multi, settings.spins())
        if multi:
            # Who takes part: one record for the job, one lock per process.
            _liveness.join("/jax_symm-" + _digest("job liveness record", 16).hex())
        atexit.register(ext.host_unlink_all)
        _ready = True


def _job_secret(text: str) -> bytes:
    """The key of the job's window names, checked: the key-value store is
    not ours alone, and a short or malformed value must not become a key."""
    if not isinstance(text, str) or len(text) != 64 or text.strip("0123456789abcdef"):
        raise RuntimeError(
            "jax_symm: the job's window-name secret in the jax.distributed key-value store "
            f"(key 'jax_symm/host_secret') is malformed: {str(text)[:80]!r}; it was not set by "
            "jax_symm's process 0 (is another program using this coordinator?)")
    return bytes.fromhex(text)


@functools.cache
def _process_hosts() -> dict[int, str]:
    return _bootstrap.host_names()


def unusable_reason(groups: np.ndarray) -> str | None:
    """Why these groups cannot use shared memory, if they cannot."""
    if _compat.process_count() == 1:
        return None
    by_id = {d.id: d.process_index for d in jax.devices()}
    hosts = _process_hosts()
    for row in groups:
        if len({hosts[by_id[int(g)]] for g in row}) > 1:
            return ("jax_symm: a group spans several hosts; the CPU transport is shared "
                    "memory, so these calls use XLA's own collectives.")
    return None


def slot_bytes(kind: str, chunk_bytes: int, world: int) -> int:
    """What one rank puts into a window per call: reduce-scatter sends world
    chunks, the others one. Rounded to a cache line so slots do not share one."""
    need = chunk_bytes * (world if kind == "reduce_scatter" else 1)
    return max(64, -(-need // 64) * 64)


def _digest(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode(), key=_secret, digest_size=size).digest()


def lower(kind: str, ctx, x, *, groups: np.ndarray, chunk_bytes: int):
    """Prepares this call site's windows and emits the custom call."""
    setup()
    with _lock:
        site = next(_sites)
    world = groups.shape[1]
    slot = slot_bytes(kind, chunk_bytes, world)
    # What the call is, as every process's lowering sees it: a process that
    # lowered a different program at this call site is refused, not paired.
    what = "|".join(map(str, (kind, ctx.avals_in[0], ctx.avals_out[0], chunk_bytes, slot,
                              ctx.name_stack)))
    me = jax.process_index()
    owner = {d.id: d.process_index for d in jax.devices()}
    for row in groups:
        members = [int(g) for g in row]
        mine = [r for r, gid in enumerate(members) if owner[gid] == me]
        if not mine:
            continue
        name = "/jax_symm-" + _digest(f"{site}|{kind}|{slot}|{members}", 16).hex()
        fingerprint = int.from_bytes(_digest(f"{what}|{members}", 8), "little")
        ext.host_prepare(site, kind, members, slot, fingerprint, name,
                         owner[members[0]] == me, mine)
    rule = jax.ffi.ffi_lowering(targets()[kind], has_side_effect=True)
    token, y = rule(
        _compat.with_token_avals(ctx), _compat.order_token(ctx), x,
        groups=np.ascontiguousarray(groups.reshape(-1), dtype=np.int64),
        group_size=np.int64(world),
        site=np.int64(site),
        chunk_bytes=np.int64(chunk_bytes),
    )
    _compat.set_order_token(ctx, token)
    return [y]
