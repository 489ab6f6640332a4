"""What each process of a multi-process CPU job lowered, and what a wait that
lasts says about it.

Processes must lower and run the same programs. When they do not -- a value
that differs between processes changed a collective's shape or dtype, or
Python control flow on ``jax.process_index()`` traced another collective, an
axis of its own or one collective more -- their call sites differ, and each
process waits for a window (at lowering) or at a barrier (running) that its
peers never reach: until JAX_SYMM_BOOTSTRAP_TIMEOUT_S or JAX_SYMM_TIMEOUT_S,
unless something tells it why. So:

- Every process publishes each jax_symm call it lowers to the job's
  key-value store, as it lowers it: the program (module name and mesh, and
  how many programs of that name and mesh this process has lowered: its
  *lowering*), the call's ordinal in it, its call site, op, operand and result types, axes,
  groups and user source line; and, once JAX has finished lowering the
  program, how many calls it holds (jax.monitoring's event for it). One
  entry of a few hundred bytes per lowered call; nothing per executed call.
- A process that has waited JAX_SYMM_MISMATCH_GRACE_S for a window (this
  module waits for windows in slices) or at a barrier (the C++ barrier lists
  such waits for one thread here) reads what the processes it waits for have
  published and compares. It fails at once, naming both sides, when such a
  peer has not lowered this call site but has lowered another call at the
  same point (same program name and mesh, same lowering, same ordinal), or
  finished that program with fewer calls. Before it raises it says in the
  store that it gave up on that program, and why, and fails the program's
  windows (a window's failure stops every rank waiting in it, in every
  process), so its peers stop with the same cause; a wait for a window that
  times out does the same.
- Nothing else counts as proof, and the wait goes on as before: a peer that
  has not lowered the program yet, or has lowered this very call site, or a
  call alike at the same point of another lowering of that name (threads may
  lower programs in different orders in different processes), or a call that
  is alike and differs only in the operations before it or its source line
  (two programs of one name lowered in opposite orders look like that). A wait that then times
  out says what the peer had published there.

Limits: two threads that lower programs of the same name and mesh but with
different collectives, in opposite orders in different processes and more
than the grace apart, look like a mismatch; so does a process that lowers a
program of some name and mesh more often than its peers (a cache miss in one
process only) before a program of that name that another process waits in.
A program lowered on a mesh of one process's own devices counts apart from
the job's shared ones (its mesh differs).
JAX_SYMM_MISMATCH_GRACE_S=0 turns the comparison off.

The store is reachable by whoever reaches the coordinator: every entry read
from it is checked (JSON of the expected fields, types and bounds; text is
quoted only up to a bound, printable characters only) and ignored otherwise.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import threading
import time
from typing import Callable, Iterable

from . import _bootstrap, _compat, _kinds, settings
from ._native import ext

_SITES = "sites/"     # + process + "/" + sequence: what that process lowered
_GAVE_UP = "gave_up/"  # + process + "/" + program digest: why it gave up on that program
_SLICE_S = 0.25       # a wait for a window, between two looks at the peers' programs
_RECHECK_S = 1.0      # how often a wait that lasts compares again
# Bounds on what is read from the store.
_MAX_ENTRY_CHARS = 16384
_MAX_TEXT = 300
_MAX_GROUP_IDS = 4096
_MAX_WHY_CHARS = 1500
_OPS = {k.lax_function for k in _kinds.KINDS.values()}


class ProgramMismatchError(RuntimeError):
    """The processes of a job lowered different programs: a collective of
    this process has no counterpart in a peer's program (a different call at
    that point, or none). The message names both sides."""


@dataclasses.dataclass(frozen=True)
class Call:
    """One lowered jax_symm call, as the processes publish and compare it."""

    module: str          # the program's module name ("jit_step")
    devices: str         # its mesh's devices: "4 devices <digest of their ids>"
    lowering: int        # programs of that name and mesh this process lowered, this one included
    ordinal: int         # its place among the program's jax_symm calls (1, 2, ...)
    site: int            # the call site (its window's identity)
    op: str              # lax's name for it ("psum")
    operand: str         # its operand's type, as lowered ("float32[4]")
    result: str
    axes: tuple          # mesh axis names
    groups: tuple        # the groups, as global device ids
    where: str           # the innermost user source line, or ""
    generations: tuple   # ((row, window generation), ...) for the rows this process serves

    def shape(self) -> tuple:
        """What must agree between processes at one point of one program."""
        return (self.op, self.operand, self.result, self.axes, self.groups)

    def text(self) -> str:
        axes = ", ".join(repr(a) for a in self.axes) or "?"
        groups = str([list(g) for g in self.groups])
        if len(groups) > 200:
            groups = groups[:200] + "...]"
        where = f", at {self.where}" if self.where else ""
        return (f"{self.op} of {self.operand} -> {self.result} over axis {axes} "
                f"(groups {groups}){where}")

    def program(self) -> tuple:
        return (self.module, self.devices, self.lowering)

    def point(self) -> str:
        return (f"collective {self.ordinal} of program '{self.module}' (on "
                f"{self.devices.split()[0]} devices; lowering {self.lowering} of it in its process)")

    def generation(self, row: int) -> int | None:
        return dict(self.generations).get(row)

    def to_json(self) -> str:
        return json.dumps({"t": "call", "m": self.module, "d": self.devices, "i": self.lowering,
                           "k": self.ordinal,
                           "s": self.site, "op": self.op, "a": self.operand, "r": self.result,
                           "x": list(self.axes), "g": [list(g) for g in self.groups],
                           "w": self.where, "n": [list(p) for p in self.generations]})


class _Program:
    """This process's record of one module's lowering."""

    def __init__(self, name: str, devices: str, lowering: int):
        self.name, self.devices, self.lowering = name, devices, lowering
        self.calls: list[Call] = []
        self.windows: list[tuple[int, list[int]]] = []  # prepared so far
        self.state = "open"  # then "done" or "abandoned" (its lowering failed)


_lock = threading.Lock()
_lowerings: dict[tuple, int] = {}  # (module name, devices) -> programs lowered here
_by_site: dict[int, Call] = {}    # call site -> the latest call lowered here with it
_call_program: dict[Call, _Program] = {}  # the program each call was lowered in
_sequence = itertools.count()
_local = threading.local()        # .open: programs this thread is lowering
_hooked = False
_monitor: threading.Thread | None = None


def grace_s() -> float:
    return settings.mismatch_grace_s()


def active() -> bool:
    return _compat.process_count() > 1 and grace_s() > 0


# ---- what this process lowered ----


def _publish(value: str) -> None:
    """One entry of this process's log. Best effort: a store that refuses it
    costs only the diagnosis, never the lowering."""
    try:
        import jax

        key = f"{_bootstrap.PREFIX}{_SITES}{jax.process_index()}/{next(_sequence):09d}"
        _compat.distributed_client().key_value_set(key, value)
    except Exception:  # noqa: BLE001
        pass


def _open_programs() -> list:
    if not hasattr(_local, "open"):
        _local.open = []
    return _local.open


def install() -> None:
    """Once per process, at set-up: learn when a program's lowering ends."""
    global _hooked
    with _lock:
        if _hooked:
            return
        _hooked = True
    _compat.on_module_lowered(_module_lowered)


def _module_lowered(name: str) -> None:
    """JAX finished lowering module `name` in this thread (or failed to)."""
    programs = getattr(_local, "open", None)
    if not programs:
        return
    failed = sys.exc_info()[0] is not None
    still = []
    for program in programs:
        if program.name != name:
            still.append(program)
        elif program.state == "open":
            program.state = "abandoned" if failed else "done"
            if not failed:
                _publish(json.dumps({"t": "done", "m": program.name, "d": program.devices,
                                     "i": program.lowering, "n": len(program.calls)}))
    _local.open = still


def note(ctx, kind: str, site: int, groups, axes: tuple, generations: dict) -> Call | None:
    """Records and publishes one call as it is lowered; None when there is
    nobody to compare with (one process, or the comparison is off)."""
    if not active():
        return None
    cache = _compat.module_cache(ctx)
    program = cache.program
    if program is None:
        # Programs are counted by name and mesh: one that a process lowers on
        # a mesh of its own devices (say, under the name of the program the
        # job shares) is no program of its peers'.
        name, devices = _compat.module_name(ctx), _devices(ctx)
        with _lock:
            n = _lowerings[(name, devices)] = _lowerings.get((name, devices), 0) + 1
            program = cache.program = _Program(name, devices, n)
        _open_programs().append(program)
    call = Call(module=program.name, devices=program.devices, lowering=program.lowering,
                ordinal=cache.calls,
                site=int(site), op=_kinds.kind(kind).lax_function,
                operand=_type(ctx.avals_in[0]), result=_type(ctx.avals_out[0]),
                axes=tuple(str(a) for a in axes),
                groups=tuple(tuple(int(g) for g in row) for row in groups),
                where=_compat.user_location(ctx),
                generations=tuple(sorted((int(r), int(g)) for r, g in generations.items())))
    program.calls.append(call)
    with _lock:
        _by_site[call.site] = call
        _call_program[call] = program
    _publish(call.to_json())
    return call


def _devices(ctx) -> str:
    """'4 devices 1a2b3c4d5e6f': how many devices the call's mesh has and a
    digest of their ids."""
    import hashlib

    mesh = getattr(ctx.module_context.axis_context, "mesh", None)
    ids = sorted(int(d.id) for d in mesh.devices.flat) if mesh is not None else []
    return f"{len(ids)} devices {hashlib.blake2b(str(ids).encode(), digest_size=6).hexdigest()}"


def _type(aval) -> str:
    """'float32[4,8]': dtype and shape, nothing else (no varying axes)."""
    return f"{aval.dtype}[{','.join(map(str, aval.shape))}]"


def prepared(call: Call | None, site: int, members: list) -> None:
    """A window of `call`'s program is ready in this process."""
    if call is not None:
        with _lock:
            _call_program[call].windows.append((int(site), list(members)))


# ---- what a peer lowered, from the store, checked ----


def _text(v, limit: int = _MAX_TEXT) -> str | None:
    if not isinstance(v, str) or len(v) > limit:
        return None
    return "".join(c if c.isprintable() else "?" for c in v)


def _int(v, low: int = 0, high: int = 2**63 - 1) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        return None
    return v


def _json_object(value, limit: int) -> dict | None:
    """`value` decoded as a JSON object of at most `limit` characters, else None."""
    if not isinstance(value, str) or len(value) > limit:
        return None
    try:
        d = json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's
        return None
    return d if isinstance(d, dict) else None


def _parse(value) -> Call | tuple | None:
    """A call, ("done", module, lowering, calls), or None if malformed."""
    d = _json_object(value, _MAX_ENTRY_CHARS)
    if d is None:
        return None
    module, devices = _text(d.get("m")), _text(d.get("d"), 64)
    lowering = _int(d.get("i"), 1, 2**31)
    if module is None or devices is None or lowering is None:
        return None
    if d.get("t") == "done":
        n = _int(d.get("n"), 0, 2**31)
        return None if n is None else ("done", (module, devices, lowering), n)
    if d.get("t") != "call":
        return None
    ordinal, site = _int(d.get("k"), 1, 2**31), _int(d.get("s"))
    op, operand, result, where = (_text(d.get(f)) for f in ("op", "a", "r", "w"))
    axes, groups, gens = d.get("x"), d.get("g"), d.get("n")
    if None in (ordinal, site, operand, result, where) or op not in _OPS:
        return None
    if not (isinstance(axes, list) and len(axes) <= 16
            and all(_text(a, 100) is not None for a in axes)):
        return None
    if not (isinstance(groups, list) and all(isinstance(g, list) for g in groups)
            and sum(len(g) for g in groups) <= _MAX_GROUP_IDS
            and all(_int(i, 0, 2**31) is not None for g in groups for i in g)):
        return None
    if not (isinstance(gens, list) and len(gens) <= _MAX_GROUP_IDS
            and all(isinstance(p, list) and len(p) == 2
                    and all(_int(i, 0, 2**62) is not None for i in p) for p in gens)):
        return None
    return Call(module=module, devices=devices, lowering=lowering, ordinal=ordinal, site=site,
                op=op,
                operand=operand, result=result, axes=tuple(_text(a, 100) for a in axes),
                groups=tuple(tuple(g) for g in groups), where=where,
                generations=tuple(tuple(p) for p in gens))


class _PeerLog:
    """What one peer has published, indexed."""

    def __init__(self, entries: Iterable[tuple[str, str]], prefix: str):
        self.calls: dict[tuple, Call] = {}          # (*program, ordinal) -> call
        self.done: dict[tuple, int] = {}            # program -> calls
        self.by_site: dict[int, list[Call]] = {}
        self.by_point: dict[tuple, list[Call]] = {}  # (module, devices, ordinal) -> calls
        self.ignored = 0
        for key, value in entries:
            tail = key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else ""
            entry = _parse(value) if tail.isascii() and tail.isdigit() else None
            if entry is None:
                self.ignored += 1
            elif isinstance(entry, tuple):
                self.done[entry[1]] = entry[2]
            else:
                self.calls[(*entry.program(), entry.ordinal)] = entry
                self.by_site.setdefault(entry.site, []).append(entry)
                self.by_point.setdefault((entry.module, entry.devices, entry.ordinal),
                                         []).append(entry)

    def has(self, call: Call, row: int) -> bool:
        """Whether the peer lowered this call site (this window's generation or a later one)."""
        mine = call.generation(row)
        for c in self.by_site.get(call.site, ()):
            theirs = c.generation(row)
            if mine is None or theirs is None or theirs >= mine:
                return True
        return False

    def program(self, program: tuple) -> list[Call]:
        n = self.done.get(program, 0)
        return [self.calls[(*program, k)] for k in range(1, n + 1) if (*program, k) in self.calls]


def _read_log(process: int) -> _PeerLog:
    prefix = f"{_bootstrap.PREFIX}{_SITES}{process}/"
    try:
        entries = _compat.distributed_client().key_value_dir_get(prefix)
    except Exception:  # noqa: BLE001  (then nothing is known of it)
        entries = []
    return _PeerLog(entries, prefix)


def _report_key(process: int, program: tuple) -> str:
    import hashlib

    digest = hashlib.blake2b(repr(program).encode(), digest_size=8).hexdigest()
    return f"{_bootstrap.PREFIX}{_GAVE_UP}{process}/{digest}"


def _read_report(process: int, program: tuple) -> str | None:
    """Why `process` gave up lowering or running `program`, if it did."""
    try:
        value = _compat.distributed_client().key_value_try_get(_report_key(process, program))
    except Exception:  # noqa: BLE001  (NOT_FOUND: none)
        return None
    d = _json_object(value, 8191)
    if d is None:
        return None
    module, devices = _text(d.get("m")), _text(d.get("d"), 64)
    lowering, why = _int(d.get("i"), 1, 2**31), _text(d.get("why"), 4 * _MAX_WHY_CHARS)
    if None in (module, devices, lowering, why) or (module, devices, lowering) != program:
        return None
    return why[:_MAX_WHY_CHARS]


# ---- the comparison ----

_ADVICE = ("Every process must lower and run the same programs: a value that differs "
           "between processes changed a collective's shape, dtype, kind or axes, or Python "
           "control flow (on jax.process_index(), say) traced different collectives.")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def diagnose(call: Call, row: int, peers: Iterable[int], waited_s: float) -> str | None:
    """Why `call` (row `row` of its groups) can never pair with `peers`, if
    what they published proves it; else None."""
    import jax

    me = jax.process_index()
    for p in sorted(set(peers) - {me}):
        report = _read_report(p, call.program())
        if report is not None:
            return (f"jax_symm: process {me} waited {waited_s:.1f} s at {call.point()}, "
                    f"{call.text()}, and process {p} gave up on this program: {report}")
        log = _read_log(p)
        if log.has(call, row):
            continue  # it lowered this very call site: late, or elsewhere, not different
        alike = log.by_point.get((call.module, call.devices, call.ordinal), ())
        if any(c.shape() == call.shape() for c in alike):
            continue  # a call alike at this point of some lowering: no proof
        head = (f"jax_symm: the processes run different programs, so a collective can never "
                f"pair: process {me} lowered {call.point()} as {call.text()}")
        tail = (f" {_ADVICE} (Found after waiting {waited_s:.1f} s for process {p}; "
                "JAX_SYMM_MISMATCH_GRACE_S sets when processes compare their programs.)")
        theirs = log.calls.get((*call.program(), call.ordinal))
        if theirs is not None:
            return f"{head}, while process {p} has {theirs.text()} there.{tail}"
        count = log.done.get(call.program())
        if count is not None and count < call.ordinal:
            listed = "; ".join(c.text() for c in log.program(call.program())[:4])
            return (f"{head}, while process {p}'s lowering {call.lowering} of "
                    f"'{call.module}' holds only {_plural(count, 'jax_symm collective')}"
                    f"{': ' + listed if listed else ''}.{tail}")
    return None


def summary(call: Call, row: int, process: int) -> str:
    """What `process` has published at `call`'s point, for a timeout's error."""
    log = _read_log(process)
    if log.has(call, row):
        return f"process {process} has lowered this call site."
    theirs = log.calls.get((*call.program(), call.ordinal))
    if theirs is not None:
        if theirs.shape() == call.shape():
            return (f"process {process} lowered {call.point()} alike ({theirs.text()}) but as "
                    "another call site: the operations before it or the source lines it was "
                    "traced from differ, or it lowered its programs of this name in another "
                    "order.")
        return f"process {process} has {theirs.text()} at {call.point()}."
    if call.program() in log.done:
        return (f"process {process}'s lowering {call.lowering} of '{call.module}' holds "
                f"{_plural(log.done[call.program()], 'jax_symm collective')}.")
    return (f"process {process} has published no {call.point()}"
            f"{f' ({log.ignored} malformed entries ignored)' if log.ignored else ''}.")


def _give_up(call: Call, why: str) -> None:
    """This process gives up on `call`'s program: it tells the job (peers
    waiting in that program read it) and fails the program's windows here
    (which stops the ranks waiting in them, in every process)."""
    import jax

    module, devices, lowering = call.program()
    with _lock:
        program = _call_program.get(call)
        if program is not None and program.state == "open":
            program.state = "abandoned"
        windows = list(program.windows) if program is not None else []
    try:
        _compat.distributed_client().key_value_set(
            _report_key(jax.process_index(), call.program()),
            json.dumps({"m": module, "d": devices, "i": lowering, "why": why[:_MAX_WHY_CHARS]}))
    except Exception:  # noqa: BLE001  (ALREADY_EXISTS: the first reason stays)
        pass
    for site, members in windows:
        ext.host_fail_window(site, members, why[:_MAX_WHY_CHARS])


# ---- waits ----


def open_window(call: Call | None, row: int, creator: int, name: str,
                prepare: Callable[[float], str]) -> None:
    """Waits for the window `name` of `call`'s row `row`, which process
    `creator` makes: in slices, comparing programs once the wait lasts.
    prepare(wait_s) returns "" once the window is ready, else why not yet."""
    if call is None:
        prepare(-1.0)
        return
    start = time.monotonic()
    timeout = settings.bootstrap_timeout_s()
    check_at = start + grace_s()
    while True:
        left = start + timeout - time.monotonic()
        why = prepare(max(0.0, min(_SLICE_S, left)))
        if not why:
            return
        now = time.monotonic()
        if now >= check_at:
            found = diagnose(call, row, [creator], now - start)
            if found:
                _give_up(call, found)
                raise ProgramMismatchError(found)
            check_at = now + _RECHECK_S
        if now - start >= timeout:
            import jax

            # The usual "to appear" adds nothing; anything else (a file
            # that never became a window) is said.
            last = "" if "to appear" in why or "to reach" in why else f" Last: {why}"
            message = (
                f"jax_symm: process {jax.process_index()} waited {timeout:g} s at "
                f"{call.point()}, {call.text()}, for its window /dev/shm{name}, which process "
                f"{creator} makes when it lowers the same call. What process {creator} has "
                f"published there: {summary(call, row, creator)} Either it has not lowered "
                "this program (every process must lower the same programs), or its program "
                "differs before this call (Python control flow on jax.process_index(), say, "
                "traced other operations), or it still holds an executable of this program "
                "from before jax.clear_caches() while this process built it anew "
                f"(JAX_SYMM_BOOTSTRAP_TIMEOUT_S sets this wait).{last}")
            _give_up(call, message)
            raise TimeoutError(message)


def start_monitor() -> None:
    """Once per multi-process job: a daemon thread diagnoses barrier waits
    that last (it sleeps in C++ until there is one)."""
    global _monitor
    import atexit

    with _lock:
        if _monitor is not None or not active():
            return
        _monitor = threading.Thread(target=_watch, name="jax_symm-programs", daemon=True)
    atexit.register(_stop_monitor)
    _monitor.start()


def _stop_monitor() -> None:
    """At exit, before the interpreter finalizes: a daemon thread that comes
    back from C++ during finalization is ended by force, and a C++ frame on
    its stack then aborts the process."""
    ext.host_stop_long_waits()
    if _monitor is not None:
        _monitor.join(5.0)


def _watch() -> None:
    import jax

    me = jax.process_index()
    owner = {d.id: d.process_index for d in jax.devices()}
    since: dict[tuple, float] = {}
    while True:
        waits = ext.host_long_waits(_RECHECK_S)
        if waits is None:
            return
        now = time.monotonic()
        listed = {(site, tuple(members)) for site, members in waits}
        since = {k: since.get(k, now) for k in listed}
        for site, members in listed:
            with _lock:
                call = _by_site.get(site)
            if call is None or list(members) not in [list(g) for g in call.groups]:
                continue
            row = [list(g) for g in call.groups].index(list(members))
            peers = {owner.get(m, me) for m in members}
            try:
                why = diagnose(call, row, peers, grace_s() + now - since[(site, members)])
                if why:
                    _give_up(call, why)
                    ext.host_fail_window(site, list(members), why[:_MAX_WHY_CHARS])
            except Exception:  # noqa: BLE001  (a diagnosis never takes the job down)
                pass
