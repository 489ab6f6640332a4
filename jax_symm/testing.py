"""Run a function in several JAX processes on this host and collect the results.

    from jax_symm.testing import run_multiprocess
    results = run_multiprocess("my_workers:check", num_processes=2,
                               devices_per_process=2, args=(seed,))

Each process is a fresh ``python -m jax_symm.testing --worker ...`` that, before
any JAX backend exists, selects its platform, joins ``jax.distributed``
(process 0 hosts the coordinator on a free 127.0.0.1 port), calls
``fn(*args, **kwargs)`` and pickles the return value back to the parent. The
result is the list of return values ordered by process id.

- ``platform="cpu"`` (the default): ``devices_per_process`` CPU devices per
  process (2 unless given) and gloo for XLA's own collectives.
- ``platform="gpu"``: the GPUs of this host (``CUDA_VISIBLE_DEVICES`` if set,
  else every GPU ``nvidia-smi -L`` lists). Where there are enough, each
  process sees ``devices_per_process`` GPUs of its own (1 unless given).
  Where there are fewer GPUs than processes (or with ``share_gpus=True``)
  processes share GPUs: each gets its own ``NCCL_HOSTID``, so NCCL takes the
  processes for separate hosts and joins them over its socket transport on
  loopback, and memory preallocation is off. That is a *correctness* mode:
  no NVLink, no NCCL symmetric kernels, no meaningful timings (a
  ``RuntimeWarning`` says so). NVLink multicast stays off either way
  (``NCCL_NVLS_ENABLE=0``).

``fn`` is a top-level function, passed as the function itself or as
``"module:function"``, and is found in a fresh interpreter the way jax's own
multi-process test runner finds it:

- a function of a script run as ``__main__`` (``python my_test.py``): workers
  load the script from its path under another module name (``__mp_main__``,
  as :mod:`multiprocessing` does), so its ``if __name__ == "__main__":`` block
  does not run again;
- a function of a module (a pytest test module included): workers import it by
  name with the directory it was imported from on ``sys.path`` (so modules
  next to a test file, e.g. ``tests/`` that has no ``__init__.py``, work), and
  load it from its file if that fails;
- a ``"module:function"`` string: the caller's working directory is on the
  workers' ``sys.path``; add others with ``sys_path`` or ``PYTHONPATH`` in ``env``.

Workers' combined stdout/stderr is kept: ``echo_output=True`` prints it after
the run, and the returned list carries it as ``.logs`` either way.

On any failure (a worker raised, exited non-zero, or ``timeout_s`` passed) every
worker's process group is terminated (SIGTERM, SIGKILL after a short grace) and
:class:`MultiProcessError` is raised, carrying every process's exit status and
the tail of its combined stdout/stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from . import _child_environment

__all__ = ["GpuPlan", "MultiProcessError", "MultiProcessResults", "free_port", "gpu_plan",
           "run_multiprocess"]

_TAIL_LINES = 60
_TERM_GRACE_S = 2.0
_POLL_S = 0.05
_LOG_LIMIT = 1 << 20  # bytes of each worker's output kept on success
_MAIN_ALIAS = "__mp_main__"  # a __main__ script's name in the workers
_FILE_SEP = "@file:"  # "module:qualname@file:/path/to/module.py"


class MultiProcessError(RuntimeError):
    """A multi-process run failed; the message holds every worker's status and log tail.

    Attributes: ``pids`` (worker pids, by process id; each led its own process
    group), ``returncodes`` (exit status by process id; negative: killed by that
    signal), ``logs`` (log tail by process id), ``timed_out``.
    """

    def __init__(self, message: str, *, pids: Sequence[int] = (),
                 returncodes: Sequence[int | None] = (), logs: Sequence[str] = (),
                 timed_out: bool = False):
        super().__init__(message)
        self.pids = list(pids)
        self.returncodes = list(returncodes)
        self.logs = list(logs)
        self.timed_out = timed_out


class MultiProcessResults(list):
    """The workers' return values, by process id (a plain list otherwise), with
    ``logs``: each worker's combined stdout/stderr (its last MiB)."""

    def __init__(self, values: Sequence[Any] = (), logs: Sequence[str] = ()):
        super().__init__(values)
        self.logs = list(logs)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _fn_spec(fn: Callable[..., Any] | str) -> tuple[str, list[str]]:
    """(worker spec, extra sys.path entries) for `fn`.

    The spec is "module:qualname", optionally followed by "@file:<path>": the
    file to load the module from (under `module`) if importing it by name fails.
    """
    if isinstance(fn, str):
        if ":" not in fn:
            raise ValueError(f"expected 'module:function', got {fn!r}")
        return fn, [os.getcwd()]  # as `python -c` / a REPL would find the module
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    module_file = getattr(module, "__file__", None)
    if not module_name or "<" in qualname:
        raise ValueError(
            f"{fn!r} cannot be found by a fresh interpreter: define it at the top level "
            "of your script or test module (not inside another function or a lambda), "
            "or pass 'module:function'")
    if module_name == "__main__":
        if not module_file:
            raise ValueError(
                f"{fn!r} is defined in an interactive session (no file); define it in a "
                "module or script, or pass 'module:function'")
        path = os.path.abspath(module_file)
        return f"{_MAIN_ALIAS}:{qualname}{_FILE_SEP}{path}", [os.path.dirname(path)]
    paths = []
    spec = f"{module_name}:{qualname}"
    if module_file:
        # The sys.path root the module was found under: strip one directory per
        # package level (and one more for a package's __init__.py).
        root = os.path.dirname(os.path.abspath(module_file))
        levels = module_name.count(".")
        if os.path.basename(module_file).startswith("__init__."):
            levels += 1
        for _ in range(levels):
            root = os.path.dirname(root)
        paths.append(root)
        if module_file.endswith(".py"):
            spec += _FILE_SEP + os.path.abspath(module_file)
    return spec, paths


def _child_env(env: Mapping[str, str] | None, platform: str, devices: int) -> dict[str, str]:
    """The environment every worker starts from (per-process parts: `GpuPlan`)."""
    out = dict(os.environ)
    out.update(env or {})
    out.update(_child_environment.changes(out, platform=platform))
    # Ours only: workers write to a log file, read back after a crash or a
    # timeout, which must hold their last lines.
    out["PYTHONUNBUFFERED"] = "1"
    if platform == "cpu":
        # Ours only: the worker sets its device count itself (jax_num_cpu_devices),
        # so a count inherited through XLA_FLAGS (e.g. from a test conftest)
        # would fight it; the flag stays only for a jax without that option.
        flags = _child_environment.without_device_count(out.get("XLA_FLAGS", ""))
        if not _has_num_cpu_devices_option():
            flags = _child_environment.with_device_count(flags, devices)
        out["XLA_FLAGS"] = flags
    return out


# What every GPU worker gets: NVLink multicast can take a shared host's GPUs
# out of service, so it stays off whatever the caller's environment says.
_GPU_ENV = {"NCCL_NVLS_ENABLE": "0"}
# Processes sharing a GPU: NCCL's socket transport on loopback, no InfiniBand,
# and XLA allocating on demand so that several processes fit on one GPU.
_SHARED_GPU_ENV = {"NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "1",
                   "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
SHARED_GPU_WARNING = (
    "jax_symm.testing: {procs} processes share {gpus} GPU(s), each with its own "
    "NCCL_HOSTID: a correctness mode (NCCL's socket transport over loopback, no NVLink, "
    "no symmetric kernels); its timings are not a speed measurement.")


@dataclass(frozen=True)
class GpuPlan:
    """Which GPUs each worker sees, and the environment that goes with it."""

    shared: bool
    visible: tuple[str, ...]              # CUDA_VISIBLE_DEVICES, by process id
    env: tuple[dict[str, str], ...]       # per-process variables, by process id


def visible_gpus() -> list[str]:
    """This host's GPUs as CUDA_VISIBLE_DEVICES entries: the variable's own
    entries if it is set, else one index per GPU that ``nvidia-smi -L`` lists."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is not None:
        return [g.strip() for g in text.split(",") if g.strip() and g.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    return [str(i) for i, line in enumerate(
        line for line in listing.stdout.splitlines() if line.startswith("GPU "))]


def gpu_plan(num_processes: int, devices_per_process: int, gpus: Sequence[str],
             share_gpus: bool | None = None, job: str = "") -> GpuPlan:
    """Assigns `gpus` to `num_processes` workers of `devices_per_process` GPUs.

    Each process gets GPUs of its own where there are enough. Otherwise (or
    with ``share_gpus=True``) processes share them round-robin, one GPU each,
    every process with its own ``NCCL_HOSTID`` (unique to `job` and the
    process). ``share_gpus=False`` with too few GPUs is an error.
    """
    gpus = list(gpus)
    if not gpus:
        raise RuntimeError(
            "jax_symm.testing: platform='gpu' but no GPU is visible (CUDA_VISIBLE_DEVICES "
            "is empty, or nvidia-smi lists none)")
    enough = num_processes * devices_per_process <= len(gpus)
    if share_gpus is False and not enough:
        raise ValueError(
            f"jax_symm.testing: {num_processes} processes x {devices_per_process} GPUs need "
            f"{num_processes * devices_per_process} GPUs, but {len(gpus)} are visible; pass "
            "share_gpus=True to run them on shared GPUs (a correctness mode)")
    shared = bool(share_gpus) or not enough
    if not shared:
        visible = tuple(",".join(gpus[i * devices_per_process:(i + 1) * devices_per_process])
                        for i in range(num_processes))
        return GpuPlan(False, visible, tuple(dict(_GPU_ENV) for _ in range(num_processes)))
    if devices_per_process != 1:
        raise ValueError(
            "jax_symm.testing: processes that share GPUs see one GPU each (NCCL refuses two "
            f"ranks of one communicator on one GPU in one process); got devices_per_process="
            f"{devices_per_process}")
    visible = tuple(gpus[i % len(gpus)] for i in range(num_processes))
    env = tuple(dict(_GPU_ENV, **_SHARED_GPU_ENV, NCCL_HOSTID=f"jax_symm-{job}-process{i}")
                for i in range(num_processes))
    return GpuPlan(True, visible, env)


def _has_num_cpu_devices_option() -> bool:
    import jax

    return "jax_num_cpu_devices" in jax.config.values


def _tail(path: str, lines: int = _TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _read_log(path: str) -> str:
    """A worker's output (its last _LOG_LIMIT bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _LOG_LIMIT))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the worker leads its own session / group
    except (ProcessLookupError, PermissionError):
        pass


def _kill_all(procs: Sequence[subprocess.Popen]) -> None:
    """SIGTERM every worker's process group, then SIGKILL what is left; reap.

    Workers still running first get SIGUSR1, on which they write the Python
    stacks of all their threads to their log (see the worker's faulthandler).
    """
    running = [p for p in procs if p.poll() is None]
    for p in running:
        try:
            p.send_signal(signal.SIGUSR1)
        except ProcessLookupError:
            pass
    if running:
        time.sleep(0.5)
    for p in procs:
        _kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + _TERM_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        # Also kills grandchildren that outlived a group leader which did exit.
        _kill_group(p, signal.SIGKILL)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class _Outcome:
    ok: bool
    value: Any = None
    error: str = ""


# Outcomes travel as plain dicts: in the worker this module is __main__, so a
# pickled _Outcome would not load in the parent.
def _read_outcome(path: str) -> _Outcome | None:
    try:
        with open(path, "rb") as f:
            return _Outcome(**pickle.load(f))
    except FileNotFoundError:
        return None
    except Exception as e:  # truncated or unpicklable on this side
        return _Outcome(ok=False, error=f"could not read the worker's result: {e!r}")


def _status(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def run_multiprocess(fn: Callable[..., Any] | str, *, num_processes: int = 2,
                     devices_per_process: int | None = None, args: Sequence[Any] = (),
                     kwargs: Mapping[str, Any] | None = None, timeout_s: float = 120.0,
                     env: Mapping[str, str] | None = None,
                     sys_path: Sequence[str] = (),
                     echo_output: bool = False, platform: str = "cpu",
                     share_gpus: bool | None = None,
                     failure_grace_s: float = 0.0,
                     heartbeat_timeout_s: int | None = None) -> MultiProcessResults:
    """Runs ``fn(*args, **kwargs)`` in `num_processes` JAX processes; returns their results.

    Every process sees `devices_per_process` devices (CPU: 2 unless given;
    ``platform="gpu"``: 1 unless given, see the module docstring for shared
    GPUs and `share_gpus`) and the job all of them. `args`/`kwargs`
    and the return values must be picklable. `env` adds to (overrides) the
    parent's environment; `sys_path` entries are prepended to the workers'
    ``sys.path``. Returns the list of return values by process id, whose
    ``.logs`` holds each worker's output; ``echo_output=True`` also prints that
    output (prefixed ``[process i]``) to stdout. Raises
    :class:`MultiProcessError` when a worker raises or exits non-zero, or
    after `timeout_s` seconds; no worker outlives the call. After the first
    failure the others get `failure_grace_s` more seconds to finish on their
    own (fault tests: how survivors react to a dead peer) before they are
    stopped. `heartbeat_timeout_s` is passed to ``jax.distributed.initialize``
    (``heartbeat_timeout_seconds``, jax's default 100 s when None): how long
    jax's coordination service waits for a silent process before it declares
    it dead and ends the others.
    """
    if platform not in ("cpu", "gpu"):
        raise ValueError(f"platform must be 'cpu' or 'gpu', not {platform!r}")
    if share_gpus is not None and platform != "gpu":
        raise ValueError("share_gpus applies to platform='gpu' only")
    if devices_per_process is None:
        devices_per_process = 1 if platform == "gpu" else 2
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError("num_processes and devices_per_process must be >= 1")
    if heartbeat_timeout_s is not None and not (
            isinstance(heartbeat_timeout_s, int) and heartbeat_timeout_s >= 1):
        raise ValueError(f"heartbeat_timeout_s must be a whole number of seconds >= 1, "
                         f"not {heartbeat_timeout_s!r}")
    spec, paths = _fn_spec(fn)
    paths = [os.path.abspath(p) for p in sys_path] + paths
    child_env = _child_env(env, platform, devices_per_process)
    port = free_port()
    per_process: list[dict[str, str]] = [{} for _ in range(num_processes)]
    if platform == "gpu":
        plan = gpu_plan(num_processes, devices_per_process, visible_gpus(), share_gpus,
                        job=f"{os.getpid()}-{port}")
        if plan.shared:
            warnings.warn(SHARED_GPU_WARNING.format(procs=num_processes,
                                                    gpus=len(set(plan.visible))),
                          RuntimeWarning, stacklevel=2)
        per_process = [dict(e, CUDA_VISIBLE_DEVICES=v) for e, v in zip(plan.env, plan.visible)]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="jax_symm_mp_") as tmp:
        in_path = os.path.join(tmp, "input.pkl")
        with open(in_path, "wb") as f:
            pickle.dump((tuple(args), dict(kwargs or {})), f)
        logs = [os.path.join(tmp, f"process{i}.log") for i in range(num_processes)]
        outs = [os.path.join(tmp, f"process{i}.pkl") for i in range(num_processes)]
        try:
            for i in range(num_processes):
                cmd = [sys.executable, "-m", "jax_symm.testing", "--worker",
                       "--fn", spec, "--process-id", str(i),
                       "--num-processes", str(num_processes),
                       "--devices", str(devices_per_process), "--platform", platform,
                       "--coordinator", f"127.0.0.1:{port}",
                       "--input", in_path, "--output", outs[i]]
                for p in paths:
                    cmd += ["--path", p]
                if heartbeat_timeout_s is not None:
                    cmd += ["--heartbeat-timeout-s", str(heartbeat_timeout_s)]
                with open(logs[i], "wb") as log:
                    procs.append(subprocess.Popen(
                        cmd, stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, env={**child_env, **per_process[i]},
                        start_new_session=True,
                        # Not the caller's directory: `python -m` puts the cwd first on
                        # sys.path, where a source checkout would shadow the install.
                        cwd=tmp))

            deadline = time.monotonic() + timeout_s
            failed: list[int] = []
            failed_at = None
            timed_out = False
            while True:
                codes = [p.poll() for p in procs]
                failed = [i for i, rc in enumerate(codes) if rc not in (None, 0)]
                if failed and failed_at is None:
                    failed_at = time.monotonic()
                if all(rc is not None for rc in codes) or (not failed and all(
                        rc == 0 for rc in codes)):
                    break
                if failed_at is not None and time.monotonic() - failed_at >= failure_grace_s:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(_POLL_S)

            outcomes = [_read_outcome(o) for o in outs]
            codes = [p.poll() for p in procs]
            if not failed and not timed_out and all(o is not None and o.ok for o in outcomes):
                texts = [_read_log(log) for log in logs]
                if echo_output:
                    for i, text in enumerate(texts):
                        for line in text.splitlines():
                            print(f"[process {i}] {line}")
                    sys.stdout.flush()
                return MultiProcessResults([o.value for o in outcomes], texts)

            # Failure: stop everyone first, then collect what each one left.
            _kill_all(procs)
            codes_before_kill = codes
            codes = [p.poll() for p in procs]
            outcomes = [_read_outcome(o) for o in outs]
            if timed_out:
                head = (f"multi-process run of {spec} timed out after {timeout_s:g} s "
                        f"({num_processes} processes x {devices_per_process} {platform} "
                        "devices)")
            else:
                head = (f"multi-process run of {spec} failed "
                        f"({num_processes} processes x {devices_per_process} {platform} "
                        "devices)")
            parts = [head]
            for i, p in enumerate(procs):
                status = _status(codes[i])
                if codes_before_kill[i] is None and codes[i] in (
                        -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM):
                    status += " (stopped by the launcher)"
                parts.append(f"\n===== process {i} (pid {p.pid}): {status} =====")
                tail = _tail(logs[i])
                o = outcomes[i]
                if o is None and codes_before_kill[i] == 0:
                    status += " without a result"
                if o is not None and not o.ok and o.error.rstrip() not in tail:
                    parts.append(f"--- raised ---\n{o.error.rstrip()}")
                parts.append(f"--- last {_TAIL_LINES} lines of output ---\n{tail}")
            raise MultiProcessError(
                "\n".join(parts), pids=[p.pid for p in procs], returncodes=codes,
                logs=[_tail(log) for log in logs], timed_out=timed_out)
        finally:
            if any(p.poll() is None for p in procs):
                _kill_all(procs)
            for p in procs:  # whatever a worker left behind in its group
                _kill_group(p, signal.SIGKILL)


# ---------------------------------------------------------------- worker side


def _load_file(module_name: str, path: str):
    """Imports the file `path` as module `module_name` (a script's guard
    ``if __name__ == "__main__"`` stays false)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so pickle finds classes defined there
    spec.loader.exec_module(module)
    return module


def _resolve(spec: str) -> Callable[..., Any]:
    spec, _, path = spec.partition(_FILE_SEP)
    module_name, _, qualname = spec.partition(":")
    if module_name == _MAIN_ALIAS and path:
        obj: Any = _load_file(module_name, path)
    else:
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            if not path:
                raise
            obj = _load_file(module_name, path)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _cleanup_shared_memory() -> None:
    """Unlinks jax_symm's shared-memory segments (atexit does not run on os._exit)."""
    native = sys.modules.get("jax_symm._native")
    if native is not None:
        try:
            native.ext.host_unlink_all()
        except Exception:
            pass


def _write_outcome(path: str, outcome: _Outcome) -> bool:
    """Pickles `outcome` to `path` atomically; False if the value did not pickle."""
    tmp = path + ".tmp"
    ok = True
    try:
        with open(tmp, "wb") as f:
            pickle.dump(vars(outcome), f)
    except Exception:
        ok = False
        err = "the return value could not be pickled:\n" + traceback.format_exc()
        with open(tmp, "wb") as f:
            pickle.dump(vars(_Outcome(ok=False, error=err)), f)
    os.replace(tmp, path)  # the parent never sees a half-written file
    return ok  # the parent never sees a half-written file


def _hard_exit(code: int) -> None:
    # No atexit / interpreter teardown: with jax.distributed up, a normal exit
    # can block on peers that will never arrive.
    _cleanup_shared_memory()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _worker_main(argv: Sequence[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m jax_symm.testing")
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--fn", required=True)
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--devices", type=int, required=True)
    ap.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--path", action="append", default=[])
    ap.add_argument("--heartbeat-timeout-s", type=int, default=None)
    a = ap.parse_args(argv)

    # Stacks on SIGUSR1 (sent by the launcher before it kills a stuck worker),
    # written from the C signal handler, so even a thread blocked in XLA dumps.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.enable(all_threads=True)  # and on crashes (SIGSEGV, SIGABRT, ...)
    for p in reversed(a.path):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.environ["JAX_PLATFORMS"] = _child_environment.jax_platforms(a.platform)

    try:
        import jax  # backends are created lazily: the config below still applies

        if a.platform == "cpu":
            if "jax_num_cpu_devices" in jax.config.values:
                jax.config.update("jax_num_cpu_devices", a.devices)
            # (otherwise the parent put --xla_force_host_platform_device_count in XLA_FLAGS)
            if "jax_cpu_collectives_implementation" in jax.config.values:
                jax.config.update("jax_cpu_collectives_implementation", "gloo")
        heartbeat = ({} if a.heartbeat_timeout_s is None
                     else {"heartbeat_timeout_seconds": a.heartbeat_timeout_s})
        jax.distributed.initialize(coordinator_address=a.coordinator,
                                   num_processes=a.num_processes, process_id=a.process_id,
                                   **heartbeat)
        # After initialize, which installs jax's own (preemption) SIGTERM hook:
        # exit at once, unlinking jax_symm's shared memory. (A thread blocked
        # in C++ never gets here; the launcher's SIGKILL follows.)
        signal.signal(signal.SIGTERM, lambda *_: _hard_exit(128 + signal.SIGTERM))
        with open(a.input, "rb") as f:
            args, kwargs = pickle.load(f)
        value = _resolve(a.fn)(*args, **kwargs)
    except BaseException:
        err = traceback.format_exc()
        print(f"[jax_symm.testing] process {a.process_id} raised:\n{err}",
              file=sys.stderr, flush=True)
        _write_outcome(a.output, _Outcome(ok=False, error=err))
        _hard_exit(1)
        return

    if not _write_outcome(a.output, _Outcome(ok=True, value=value)):
        _hard_exit(1)
    try:
        jax.distributed.shutdown()
    except Exception:  # the result is what matters; keep the error in the log
        print(f"[jax_symm.testing] process {a.process_id}: jax.distributed.shutdown() "
              f"failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
