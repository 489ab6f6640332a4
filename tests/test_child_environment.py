"""The test launcher and the bench build their children's environments from one
module (`jax_symm._child_environment`): same request, same shared facts; where
they differ (an inherited device count, the bench's method flags) they differ
as documented."""

from __future__ import annotations

import os
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


def test_pythonpath_puts_this_jax_symm_first_and_keeps_the_rest():
    assert child_env.pythonpath("") == ROOT
    assert child_env.pythonpath(os.pathsep.join(["", "/a", "", "/b"])) == \
        os.pathsep.join([ROOT, "/a", "/b"])


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
    assert child_env.changes({"PYTHONPATH": "/p"}) == {"PYTHONPATH": f"{ROOT}{os.pathsep}/p"}


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
    assert changes["PYTHONPATH"].split(os.pathsep)[0] == ROOT
    assert changes["JAX_PLATFORMS"] == "cuda"
    assert all(env[k] == v for k, v in changes.items())
