"""Every ```python block of README.md runs as written: each in a fresh
interpreter, in an empty temporary directory, on CPU with no device count
given from outside (a block sets its own: run on one device, a block makes no
jax_symm call and would pass all the same). A block that calls jax_symm in
its own process must have made a jax_symm call: XLA still holds the call
sites' host windows when it ends (`info()["host_windows"]`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jax_symm import _child_environment

# Appended to a block: how many host windows (one per jax_symm call site whose
# program is alive) this process holds; 0 means it made no jax_symm call.
_WINDOWS_CHECK = """

import jax_symm as _jax_symm_for_the_test
print("README_TEST_HOST_WINDOWS", len(_jax_symm_for_the_test.info()["host_windows"]))
"""

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "README.md")


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = open(README, encoding="utf-8").read()
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 3


@pytest.mark.timeout(150)
@pytest.mark.parametrize("line,code", python_blocks(),
                         ids=[f"line{line}" for line, _ in python_blocks()])
def test_readme_block_runs(line, code, tmp_path):
    # A file of its own (not `python -c`): a block may be a script that
    # jax_symm.testing's workers load by path.
    path = tmp_path / f"readme_block_line{line}.py"
    # In-process blocks: whether they made a jax_symm call, told after them.
    in_process = "jax_symm" in code and "run_multiprocess" not in code
    path.write_text(code + (_WINDOWS_CHECK if in_process else ""))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=_child_environment.without_device_count(os.environ.get("XLA_FLAGS", "")))
    try:
        proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"README.md block at line {line} timed out:\n{code}\n{e.stdout}\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(f"README.md block at line {line} failed (exit {proc.returncode}):\n"
                    f"----- block -----\n{code}----- stdout -----\n{proc.stdout}"
                    f"----- stderr -----\n{proc.stderr[-6000:]}")
    assert proc.stdout.strip(), f"README.md block at line {line} printed nothing"
    if in_process:
        windows = int(re.search(r"^README_TEST_HOST_WINDOWS (\d+)$", proc.stdout, re.M).group(1))
        assert windows > 0, f"README.md block at line {line} made no jax_symm call:\n{code}"
