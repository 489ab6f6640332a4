"""The host transport (XLA:CPU): shared-memory windows between the devices of
one host, in one or several processes.

Everything that must be agreed between processes happens here, at lowering,
which every process of a job passes for the same programs (in any order, from
any thread): each lowered call gets a call-site identity made from what it is
and where it sits in its program -- the same in every process, whatever else a
process lowers -- and the window of each (call site, group) is created by the
process that serves the group's rank 0 and opened by the others. Window names are keyed hashes of a
per-job secret that travels through jax.distributed's key-value store, so no
other user can predict or plant them (ffi/host_segment.h has the rest of the
defences). Handlers only look windows up; they never create one.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import secrets
import threading

import numpy as np
import jax

from . import _bootstrap, _compat, _kinds, _liveness, _programs, settings
from ._native import ext, publish_local_devices, register_ffi_target
from ._transport import Call, Refusal

_lock = threading.Lock()
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
        register_ffi_target(
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
        _secret = _job_secret(_bootstrap.agree_on("host_secret", lambda: secrets.token_hex(32),
                                                   "the job's window-name secret"))
        ext.set_host_config(settings.timeout_s(), 0.05, settings.bootstrap_timeout_s(),
                            not multi, settings.spins(), settings.patience_s(),
                            settings.mismatch_grace_s() if multi else 0.0)
        if multi:
            # Who takes part: one record for the job, one lock per process.
            _liveness.join("/jax_symm-" + _digest("job liveness record", 16).hex())
            # What each process lowered, for a wait that lasts to compare.
            _programs.install()
            _programs.start_monitor()
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


_hosts: dict[int, str] | None = None


def _process_hosts() -> dict[int, str]:
    """Every process's host name, fetched once: under the lock, since two
    threads lowering at once would both publish this process's key (the
    key-value store refuses the second: ALREADY_EXISTS)."""
    global _hosts
    with _lock:
        if _hosts is None:
            _hosts = _bootstrap.host_names()
        return _hosts


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
    """What one rank puts into a window per call: its input (a reduce-scatter's
    is world chunks, the others' one). Rounded to a cache line so slots do
    not share one."""
    need = chunk_bytes * _kinds.kind(kind).in_chunks(world)
    return max(64, -(-need // 64) * 64)


def _digest(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode(), key=_secret, digest_size=size).digest()


def call_site(kind: str, ctx, groups: np.ndarray, chunk_bytes: int, slot: int) -> tuple[int, str]:
    """(the call site's identity, what the call is).

    The identity is a keyed digest of the program (its module name, where
    the call was traced in user code, and the lowered operations that precede
    the call in its block, constants by type, not value: a value that differs
    between processes must not split a call site), the call's place in it (its ordinal among the
    module's jax_symm calls), and the call itself (kind, types, sizes, name
    stack, groups). Every process lowering the program computes the same
    value, in whatever order it lowers its programs, so lowering order does
    not matter; two programs that agree in all of this share call sites
    (README, "Supported, and not"). A 63-bit value: a positive int64 attribute.
    """
    what = "|".join(map(str, (kind, ctx.avals_in[0], ctx.avals_out[0], chunk_bytes, slot,
                              ctx.name_stack)))
    where = "|".join(map(str, (_compat.module_name(ctx), _compat.call_ordinal(ctx),
                               _compat.source_lines(ctx), groups.tolist(),
                               _compat.preceding_ops(ctx))))
    # Not keyed by the job's secret: the same program must get the same
    # identity in every job, or the persistent compilation cache never hits.
    # (Window names, which other users must not guess, are keyed.)
    text = f"{where}|{what}".encode()
    site = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1
    return site, what


def lower(kind: str, ctx, x, *, groups: np.ndarray, chunk_bytes: int, axes: tuple = ()):
    """Prepares this call site's windows and emits the custom call."""
    setup()
    world = groups.shape[1]
    slot = slot_bytes(kind, chunk_bytes, world)
    site, what = call_site(kind, ctx, groups, chunk_bytes, slot)
    me = jax.process_index()
    owner = {d.id: d.process_index for d in jax.devices()}
    windows = []
    for index, row in enumerate(groups):
        members = [int(g) for g in row]
        mine = [r for r, gid in enumerate(members) if owner[gid] == me]
        if not mine:
            continue
        # Each making of this window is a generation of its own, counted alike
        # in every process (they lower the same programs and drop them with
        # their executables alike): a process that lowers anew after
        # jax.clear_caches() can never open the previous window while its
        # creator still has to remove it.
        generation = ext.host_window_generation(site, members)
        windows.append((index, members, mine, generation))
    # Published before any wait, for peers that compare programs.
    call = _programs.note(ctx, kind, site, groups, axes,
                          {index: generation for index, _, _, generation in windows})
    for index, members, mine, generation in windows:
        name = "/jax_symm-" + _digest(f"{site}|{kind}|{slot}|{members}|{generation}", 16).hex()
        # Checked by every opener against the window's header: a digest
        # collision or a stale segment is refused, not paired.
        fingerprint = int.from_bytes(_digest(f"{what}|{members}|{generation}", 8), "little")
        creator = owner[members[0]]
        prepare = functools.partial(ext.host_prepare, site, kind, members, slot, fingerprint,
                                    name, creator == me, mine, generation)
        if creator == me:
            prepare()
        else:  # waits for the creator, comparing programs if that lasts
            _programs.open_window(call, index, creator, name,
                                  lambda wait_s: prepare(wait_s=wait_s))
        _programs.prepared(call, site, members)
    # No token: the handler never holds an XLA thread while it waits, so the
    # calls need no order (ffi/host_collectives.cc).
    rule = jax.ffi.ffi_lowering(targets()[kind], has_side_effect=True)
    out = rule(
        ctx, x,
        groups=np.ascontiguousarray(groups.reshape(-1), dtype=np.int64),
        group_size=np.int64(world),
        site=np.int64(site),
        chunk_bytes=np.int64(chunk_bytes),
    )
    _compat.pass_order_token(ctx)
    return out


class HostTransport:
    """The transport of XLA:CPU (see `_transport.Transport`)."""

    platform = "cpu"
    # A window pairs two or more ranks: a group of one device has no window.
    serves_one_rank = False

    def refusal(self, call: Call) -> Refusal | None:
        why = unusable_reason(call.groups)
        return None if why is None else Refusal(why, warn=True)

    def lower(self, call: Call, ctx, x) -> list:
        return lower(call.kind.name, ctx, x, groups=call.groups, chunk_bytes=call.chunk_bytes,
                     axes=call.axes)


TRANSPORT = HostTransport()
