"""The test launcher and the bench build their children's environments from one
module (`jax_symm._child_environment`): same request, same shared facts; where
they differ (an inherited device count, the bench's method flags) they differ
as documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types

import pytest

from jax_symm import _child_environment as child_env
from jax_symm import testing
from jax_symm.bench import cli, methods

ROOT = child_env.PACKAGE_ROOT
FLAG = child_env.DEVICE_COUNT_FLAG


def test_package_root_is_the_imported_jax_symm():
    import jax_symm
    assert os.path.dirname(os.path.abspath(jax_symm.__file__)) == os.path.join(ROOT, "jax_symm")


def _found(path: str) -> str:
    return child_env._found_by_child(dict(os.environ), path)


def test_pythonpath_keeps_the_users_order_and_reaches_this_jax_symm(tmp_path):
    """The user's entries stay in their order; this jax_symm's root is added
    only where a child would not find this jax_symm otherwise, and then after
    the user's entries, unless one of them holds another jax_symm."""
    user = os.pathsep.join(["", str(tmp_path / "a"), "", str(tmp_path / "b")])
    path = child_env.pythonpath(user)
    entries = path.split(os.pathsep)
    assert entries[:2] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert entries[2:] in ([], [ROOT])  # appended only if needed
    assert _found(path) == os.path.join(ROOT, "jax_symm")
    # A user entry that holds another jax_symm: only then does ours go first.
    other = tmp_path / "other"
    (other / "jax_symm").mkdir(parents=True)
    (other / "jax_symm" / "__init__.py").write_text("")
    path = child_env.pythonpath(str(other))
    assert path.split(os.pathsep) == [ROOT, str(other)]
    assert _found(path) == os.path.join(ROOT, "jax_symm")


def test_platforms_and_device_counts():
    assert child_env.jax_platforms("cpu") == "cpu"
    assert child_env.jax_platforms("gpu") == "cuda"
    with pytest.raises(ValueError, match="'tpu'"):
        child_env.jax_platforms("tpu")
    flags = f"--a {FLAG}=3 --b"
    assert child_env.has_device_count(flags) and not child_env.has_device_count("--a")
    assert child_env.without_device_count(flags) == "--a  --b"
    assert child_env.with_device_count("", 4) == f"{FLAG}=4"
    assert child_env.with_device_count("--a", 4) == f"--a {FLAG}=4"
    changes = child_env.changes({"PYTHONPATH": "/p"})
    assert changes["PYTHONPATH"].split(os.pathsep)[0] == "/p"
    assert json.loads(changes[child_env.PARENT_IMPORTS_ENV])["jax_symm_file"] == \
        os.path.join(ROOT, "jax_symm", "__init__.py")


def _bench_args(platform: str, devices: int | None = None):
    return types.SimpleNamespace(platform=platform, devices=devices, collective_mem_mb=None)


def _default_group():
    return [m for m in methods.groups(list(methods.METHODS.values()))[0]
            if not m.xla_flags and not m.collective_mem]


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_both_launchers_build_the_shared_part_alike(monkeypatch, platform):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/x", "", "/y"]))
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    monkeypatch.setenv("XLA_FLAGS", "--keep_me")
    shared = child_env.changes(dict(os.environ), platform=platform)
    ours = testing._child_env(None, platform, 2)
    bench, bench_changes = cli._child_env(_bench_args(platform), _default_group(), None, None)
    for key, value in shared.items():
        assert ours[key] == bench[key] == bench_changes[key] == value, key
    assert shared["JAX_PLATFORMS"] == {"cpu": "cpu", "gpu": "cuda"}[platform]
    assert bench["XLA_FLAGS"].startswith("--keep_me") and ours["XLA_FLAGS"].startswith("--keep_me")
    # The launcher's extra: a log file that holds a crashed worker's last lines.
    assert ours["PYTHONUNBUFFERED"] == "1"


def test_bench_keeps_an_inherited_device_count_the_launcher_replaces(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--keep_me {FLAG}=5")
    bench, _ = cli._child_env(_bench_args("cpu", 4), _default_group(), None, None)
    assert bench["XLA_FLAGS"] == f"--keep_me {FLAG}=5"
    ours = testing._child_env(None, "cpu", 3)
    assert f"{FLAG}=5" not in ours["XLA_FLAGS"] and "--keep_me" in ours["XLA_FLAGS"]
    if not testing._has_num_cpu_devices_option():  # else the worker sets the count
        assert ours["XLA_FLAGS"].endswith(f"{FLAG}=3")
    monkeypatch.setenv("XLA_FLAGS", "")
    bench, _ = cli._child_env(_bench_args("auto", 4), _default_group(), None, None)
    assert bench["XLA_FLAGS"] == f"{FLAG}=4"
    assert "JAX_PLATFORMS" not in _  # auto: the worker's own default


def test_a_bench_group_adds_its_flags_after_the_shared_part(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")
    group = next(g for g in methods.groups(list(methods.METHODS.values())) if g[0].xla_flags)
    env, changes = cli._child_env(_bench_args("gpu"), group, 8, 1 << 20)
    assert changes["XLA_FLAGS"] == " ".join([f"{FLAG}=8", *group[0].xla_flags])
    assert changes["PYTHONPATH"] == child_env.pythonpath(os.environ.get("PYTHONPATH", ""))
    assert changes["JAX_PLATFORMS"] == "cuda"
    assert all(env[k] == v for k, v in changes.items())


# --- Children import what their parent imports -----------------------------

def _overlay(tmp_path):
    """A PYTHONPATH overlay that holds jax: a link to the installed jax package,
    so the code is the same but every module's __file__ says where it came
    from (as a jax installed into a folder on PYTHONPATH would)."""
    import jax
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    os.symlink(os.path.dirname(os.path.abspath(jax.__file__)), overlay / "jax")
    return overlay


# The workers' function and the parent, as a user's files in their own folder.
_WORKERS = """
def where():
    import jax, jax_symm
    return {"jax": jax.__file__, "jax_version": jax.__version__,
            "jax_symm": jax_symm.__file__}
"""

_PARENT = """
import json, sys
{insert}
import jax, jax_symm
from jax_symm.testing import run_multiprocess

out = run_multiprocess("user_workers:where", num_processes=2, devices_per_process=2,
                       timeout_s=150)
parent = {{"jax": jax.__file__, "jax_version": jax.__version__, "jax_symm": jax_symm.__file__}}
print("RESULT", json.dumps({{"parent": parent, "children": list(out)}}))
"""


def _installed_package() -> str:
    """The installed jax_symm's folder (with its compiled extension)."""
    from importlib import metadata
    return str(metadata.distribution("jax_symm").locate_file("jax_symm"))


@pytest.mark.multiprocess
@pytest.mark.timeout(240)
@pytest.mark.parametrize("jax_symm_from", ["install", "folder_added_at_run_time"])
def test_every_child_imports_the_overlays_jax(tmp_path, jax_symm_from):
    """A parent whose jax comes from a PYTHONPATH overlay: every child of
    run_multiprocess imports that jax (not the one next to jax_symm) and the
    parent's jax_symm, also when the parent found jax_symm in a folder it put
    on sys.path itself (which its children must then be given, after the
    overlay)."""
    overlay = _overlay(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    (user / "user_workers.py").write_text(_WORKERS)
    insert = ""
    if jax_symm_from == "folder_added_at_run_time":
        extra = tmp_path / "extra"
        shutil.copytree(_installed_package(), extra / "jax_symm",
                        ignore=shutil.ignore_patterns("__pycache__"))
        insert = f"sys.path.insert(1, {str(extra)!r})"
    (user / "parent.py").write_text(_PARENT.format(insert=insert))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(overlay)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("_JAX_SYMM_PARENT_IMPORTS", None)  # this process may be a child itself
    proc = subprocess.run([sys.executable, "parent.py"], cwd=user, env=env,
                          capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    parent, children = result["parent"], result["children"]
    assert parent["jax"].startswith(str(overlay))
    if jax_symm_from == "folder_added_at_run_time":
        assert parent["jax_symm"].startswith(str(extra))
    assert len(children) == 2
    for child in children:
        assert child == parent  # the overlay's jax, the parent's jax_symm


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_a_child_with_another_jax_says_so(tmp_path):
    """Children given a PYTHONPATH that shadows the parent's jax (through
    `env=`) fail at `import jax_symm`, naming both jax files."""
    from jax_symm.testing import MultiProcessError, run_multiprocess
    import jax

    overlay = _overlay(tmp_path)
    with pytest.raises(MultiProcessError) as e:
        run_multiprocess("os:getpid", num_processes=2, timeout_s=120,
                         env={"PYTHONPATH": str(overlay)})
    text = str(e.value)
    assert "ChildImportError" in text and "imports another jax_symm or jax than its parent" in text
    assert os.path.abspath(jax.__file__) in text and str(overlay / "jax") in text


def test_the_check_names_a_different_jax_version(monkeypatch):
    import jax
    parent = child_env.parent_imports()
    child_env.check_parent_imports({child_env.PARENT_IMPORTS_ENV: json.dumps(parent)})
    parent["jax_version"] = "0.0.1"  # not any real jax this runs with
    with pytest.raises(child_env.ChildImportError,
                       match=rf"jax_version: parent '0.0.1', this child '{jax.__version__}'"):
        child_env.check_parent_imports({child_env.PARENT_IMPORTS_ENV: json.dumps(parent)})


@pytest.mark.parametrize("text", ["[]", "not json", "[" * 100000, '"a string"'])
def test_a_malformed_parent_record_is_a_child_import_error(text):
    with pytest.raises(child_env.ChildImportError, match="is not what jax_symm's launchers write"):
        child_env.check_parent_imports({child_env.PARENT_IMPORTS_ENV: text})
