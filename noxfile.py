"""The README's tests against other jax releases, each in a fresh virtualenv.

    nox -s newest_jax      # newest jax pip gives the newest Python here (>= 3.12)
    nox -s jax_floor       # the oldest jax jax_symm supports (jax_symm._compat.MIN_JAX)
    nox -s older_jax       # jax 0.11.2 installed first, then `pip install .` as the README says
    nox -s newest_jax -- -x tests/tools/test_demo.py     # arguments after -- go to pytest

Each session runs the README's test command, `pip install ".[test]" && pytest`,
in its own virtualenv under .nox/ (`nox -r` reuses it). `.ci/run` runs
`newest_jax` after the default test run whenever this file finds a Python
>= 3.12 (`python noxfile.py newest-python` prints it, or nothing).
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sys

# Oldest Python each session accepts: jax >= 0.12 needs 3.12 (its
# Requires-Python), jax 0.10 needs 3.11.
NEWEST_JAX_MIN_PYTHON = (3, 12)
FLOOR_MIN_PYTHON = (3, 11)


def _floor_jax() -> str:
    """jax_symm._compat.MIN_JAX, read from the source (the one home of the floor;
    importing jax_symm here would need jax in nox's own interpreter)."""
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "jax_symm", "_compat.py"), encoding="utf-8").read()
    found = re.search(r"^MIN_JAX = \((\d+), (\d+), (\d+)\)", src, re.M)
    if found is None:
        raise RuntimeError("noxfile.py: no `MIN_JAX = (a, b, c)` line in jax_symm/_compat.py")
    return ".".join(found.groups())


def _version(python: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return tuple(int(p) for p in out.stdout.split())


@functools.cache
def pythons() -> dict[tuple[int, ...], str]:
    """Every CPython 3 on this machine: pyenv's versions (their real paths, not
    the shims, which only serve the versions pyenv is told to) and python3.N on
    PATH. version -> path."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3")))
    candidates += [p for n in range(10, 20) if (p := shutil.which(f"python3.{n}"))]
    found: dict[tuple[int, ...], str] = {}
    for path in candidates:
        version = _version(path)
        if version is not None and version[0] == 3:
            found.setdefault(version, path)
    return found


def newest_python(at_least: tuple[int, int]) -> str | None:
    """The newest Python here that is at least `at_least`, or None."""
    usable = [v for v in pythons() if v[:2] >= at_least]
    return pythons()[max(usable)] if usable else None


def oldest_python(at_least: tuple[int, int]) -> str | None:
    usable = [v for v in pythons() if v[:2] >= at_least]
    return pythons()[min(usable)] if usable else None


def _readme_tests(session, constraints: list[str] = ()) -> None:
    """The README's test command in the session's virtualenv."""
    env = {}
    if constraints:
        # PIP_CONSTRAINT also reaches the isolated build environment, so the
        # extension compiles against the same jaxlib it runs with.
        path = os.path.join(session.create_tmp(), "constraints.txt")
        with open(path, "w") as f:
            f.write("\n".join(constraints) + "\n")
        env["PIP_CONSTRAINT"] = path
    session.run("python", "-m", "pip", "install", ".[test]", env=env)
    session.run("python", "-c", "import jax, jax_symm, sys; print('python', sys.version.split()[0],"
                " 'jax', jax.__version__, 'jax_symm from', jax_symm.__file__)")
    session.run("pytest", *session.posargs)


if __name__ == "__main__":
    # `python noxfile.py newest-python`: the interpreter newest_jax would use,
    # or nothing (exit 1), for .ci/run.
    if sys.argv[1:] != ["newest-python"]:
        sys.exit("usage: python noxfile.py newest-python")
    found = newest_python(NEWEST_JAX_MIN_PYTHON)
    if found:
        print(found)
    sys.exit(0 if found else 1)

import nox  # noqa: E402  (not needed by the discovery above, which .ci/run calls)

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["newest_jax"]
# Use the interpreters found here; never download one (nox >= 2025 can).
if hasattr(nox.options, "download_python"):
    nox.options.download_python = "never"


@nox.session(python=newest_python(NEWEST_JAX_MIN_PYTHON) or
             f"python{NEWEST_JAX_MIN_PYTHON[0]}.{NEWEST_JAX_MIN_PYTHON[1]}")
def newest_jax(session):
    """The README's tests on the newest jax pip resolves (within pyproject's
    pin), under the newest Python >= 3.12 on this machine."""
    _readme_tests(session)


# What the older_jax session runs, and why these: the user it stands for
# already has an older jax, and pip's isolated build compiles against a jaxlib
# of its own choosing. What can break there is whether XLA accepts the
# handlers (every CPU custom call below registers them), whether the ops give
# lax's results, and whether child processes import the same jax and
# jax_symm as their parent. The whole suite runs on two other jax releases
# (the default run and newest_jax); CI's 30 minutes leave room for this part.
OLDER_JAX = "0.11.2"
OLDER_JAX_TESTS = ["tests/install/test_build.py", "tests/ops/test_parity.py",
                   "tests/multiprocess/test_multiprocess.py", "tests/install/test_first_contact.py"]


@nox.session(python=oldest_python(NEWEST_JAX_MIN_PYTHON) or
             f"python{NEWEST_JAX_MIN_PYTHON[0]}.{NEWEST_JAX_MIN_PYTHON[1]}")
def older_jax(session):
    """A user with an older admitted jax: jax 0.11.2 installed first, then the
    README's `pip install ".[test]"` exactly as written (build isolation), then
    the tests above (arguments after -- replace them)."""
    session.run("python", "-m", "pip", "install", f"jax=={OLDER_JAX}")
    session.run("python", "-m", "pip", "install", ".[test]")
    session.run("python", "-c", "import jax, sys; v = jax.__version__; print('jax', v); "
                f"sys.exit(0 if v == {OLDER_JAX!r} else 'pip replaced jax {OLDER_JAX}: ' + v)")
    session.run("pytest", *(session.posargs or OLDER_JAX_TESTS))


@nox.session(python=oldest_python(FLOOR_MIN_PYTHON) or
             f"python{FLOOR_MIN_PYTHON[0]}.{FLOOR_MIN_PYTHON[1]}")
def jax_floor(session):
    """The README's tests on the oldest supported jax and jaxlib."""
    floor = _floor_jax()
    _readme_tests(session, [f"jax=={floor}", f"jaxlib=={floor}"])
