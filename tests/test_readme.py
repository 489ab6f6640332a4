"""Every ```python block of README.md runs as written: each in a fresh
interpreter, in an empty temporary directory, with 8 virtual CPU devices."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


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
    path.write_text(code)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
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
