"""How a child JAX process's environment is built, for every launcher.

The test launcher (`jax_symm.testing.run_multiprocess`) and the bench's
workers (`jax_symm.bench.cli`) both start fresh interpreters that must import
this jax_symm, on a chosen platform, with a chosen number of virtual CPU
devices. The spelling of each of those facts lives here, once; each launcher
adds its own extras on top (and says why).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Mapping

# The directory this jax_symm was imported from (the folder that holds the
# `jax_symm` package: a site-packages, a source checkout, a --target folder).
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_INIT_FILE = os.path.join(PACKAGE_ROOT, "jax_symm", "__init__.py")

# What the parent imported, for the child to check (`check_parent_imports`).
# Private: set by `changes` for its children only, never by users.
PARENT_IMPORTS_ENV = "_JAX_SYMM_PARENT_IMPORTS"

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"

# jax_symm's platform names -> JAX_PLATFORMS, which names the CUDA plugin.
_JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}


def jax_platforms(platform: str) -> str:
    """JAX_PLATFORMS for `platform` ("cpu" or "gpu")."""
    try:
        return _JAX_PLATFORMS[platform]
    except KeyError:
        raise ValueError(f"platform must be one of {sorted(_JAX_PLATFORMS)}, "
                         f"not {platform!r}") from None


def _entries(text: str) -> list[str]:
    return [p for p in text.split(os.pathsep) if p]


def _found_by_child(env: Mapping[str, str], path: str) -> str | None:
    """Where a fresh interpreter of ours, with `env` and PYTHONPATH=`path`, in
    an empty working directory (as the launchers start their children), would
    import jax_symm from (its package folder), without importing it."""
    probe = ("import importlib.util as u; s = u.find_spec('jax_symm'); "
             "print(s.submodule_search_locations[0] if s and s.submodule_search_locations "
             "else '')")
    with tempfile.TemporaryDirectory(prefix="jax_symm_probe_") as cwd:
        out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL,
                             env={**env, "PYTHONPATH": path})
    return out.stdout.strip() or None if out.returncode == 0 else None


def _same_folder(a: str | None, b: str) -> bool:
    return a is not None and os.path.normcase(os.path.abspath(a)) == \
        os.path.normcase(os.path.abspath(b))


@functools.lru_cache(maxsize=16)
def _pythonpath(inherited: str, env_key: tuple) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(env_key)
    ours = os.path.join(PACKAGE_ROOT, "jax_symm")
    user = _entries(inherited)
    # Tried in order, the least intrusive first. Unchanged: the usual case (an
    # install the child finds where the parent did, or an overlay that holds
    # both). Appended: the parent found this jax_symm somewhere its children
    # would not look (a checkout in its working directory, a folder put on
    # sys.path at run time); after the user's entries it shadows none of them.
    # Prepended: only where a user entry holds another jax_symm; the child's
    # own check (`check_parent_imports`) still catches a jax it would shadow.
    for candidate in (user, user + [PACKAGE_ROOT], [PACKAGE_ROOT] + user):
        if candidate is not user and PACKAGE_ROOT in user:
            continue
        path = os.pathsep.join(candidate)
        if _same_folder(_found_by_child(env, path), ours):
            return path
    return os.pathsep.join([PACKAGE_ROOT] + user)


def pythonpath(inherited: str, env: Mapping[str, str] | None = None) -> str:
    """A child's PYTHONPATH: `inherited`'s entries in their order, with this
    jax_symm's root added only where a child would not import this jax_symm
    without it (appended where that suffices, else first). `env` is the
    child's environment (default ours), which decides what it would find."""
    env = dict(os.environ if env is None else env)
    # What decides an interpreter's sys.path besides PYTHONPATH (PYTHONHOME,
    # PYTHONNOUSERSITE, a venv...): the cache's key.
    key = tuple(sorted((k, v) for k, v in env.items()
                       if k.startswith(("PYTHON", "VIRTUAL_ENV")) and k != "PYTHONPATH"))
    return _pythonpath(inherited, key)


def parent_imports() -> dict[str, str]:
    """What this process imported, which its children must import too."""
    import jax

    return {"jax_symm_file": _INIT_FILE,
            "jax_file": os.path.abspath(jax.__file__), "jax_version": jax.__version__,
            "python": sys.executable}


class ChildImportError(ImportError):
    """A child process imported another jax_symm or jax than its parent."""


def check_parent_imports(environ: Mapping[str, str] | None = None) -> None:
    """In a child: raises ChildImportError if this jax_symm, or the jax it
    imports, is not its parent's (the same files; and the same version, once
    jax is imported). `import jax_symm` calls it before importing jax, so a
    wrong jax is named before it can fail elsewhere, and again after. Does
    nothing in a process no launcher started."""
    environ = os.environ if environ is None else environ
    text = environ.get(PARENT_IMPORTS_ENV)
    if not text:
        return
    try:
        parent = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json recurses
        parent = None
    if not isinstance(parent, dict):
        raise ChildImportError(f"jax_symm: {PARENT_IMPORTS_ENV} is set but is not what "
                               "jax_symm's launchers write (a JSON object of the parent's "
                               f"imports): {text[:100]!r}. Unset it, or start this process "
                               "with jax_symm.testing.run_multiprocess.")
    child = {"jax_symm_file": _INIT_FILE}
    jax = sys.modules.get("jax")
    if jax is not None:
        child.update(jax_file=os.path.abspath(jax.__file__), jax_version=jax.__version__)
    else:  # not imported yet: where it would come from (its version: the next call)
        spec = importlib.util.find_spec("jax")
        child["jax_file"] = os.path.abspath(spec.origin) if spec and spec.origin else None
    wrong = [k for k in child if child[k] != parent.get(k)]
    if not wrong:
        return
    lines = "\n".join(f"  {k}: parent {parent.get(k)!r}, this child {child[k]!r}"
                      for k in wrong)
    raise ChildImportError(
        "jax_symm: this child process (started by jax_symm.testing.run_multiprocess or "
        "the bench) imports another jax_symm or jax than its parent:\n"
        f"{lines}\n"
        f"  child PYTHONPATH: {environ.get('PYTHONPATH', '')!r}\n"
        f"  child interpreter: {sys.executable} (parent: {parent.get('python')})\n"
        "Its results would not be the parent's code. Give the children the parent's "
        "PYTHONPATH (an `env=` or a PYTHONPATH set for the children only can shadow "
        "the parent's packages), and install jax_symm next to the jax it runs with.")


def has_device_count(xla_flags: str) -> bool:
    """Whether `xla_flags` already sets the number of virtual CPU devices."""
    return DEVICE_COUNT_FLAG in xla_flags


def without_device_count(xla_flags: str) -> str:
    """`xla_flags` less any virtual-CPU-device count."""
    return re.sub(DEVICE_COUNT_FLAG + r"=\S*", "", xla_flags).strip()


def with_device_count(xla_flags: str, devices: int) -> str:
    """`xla_flags` plus a count of `devices` virtual CPU devices (appended: it
    does not remove a count already there, see `without_device_count`)."""
    return f"{xla_flags} {DEVICE_COUNT_FLAG}={devices}".strip()


def changes(base: Mapping[str, str], *, platform: str | None = None) -> dict[str, str]:
    """What every child changes from `base`, its parent's environment: this
    jax_symm reachable on PYTHONPATH (`pythonpath`), what this process
    imported (checked by the child's `import jax_symm`) and, if `platform` is
    given, JAX_PLATFORMS. (XLA_FLAGS is each launcher's: they differ on an
    inherited device count.)"""
    out = {"PYTHONPATH": pythonpath(base.get("PYTHONPATH", ""), base),
           PARENT_IMPORTS_ENV: json.dumps(parent_imports())}
    if platform is not None:
        out["JAX_PLATFORMS"] = jax_platforms(platform)
    return out
