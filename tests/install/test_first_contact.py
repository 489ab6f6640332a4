"""What a new user meets first: the jax version check and a source checkout
that shadows the installed package; the pins in pyproject.toml and
`python -m jax_symm.info`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import json
import textwrap

import pytest

import jax_symm
from jax_symm import _child_environment, _compat

_PKG = os.path.dirname(os.path.abspath(jax_symm.__file__))


@pytest.mark.parametrize("version", ["0.10.0", "0.9.2", "0.13.0", "1.0.0"])
def test_unsupported_jax_is_refused_with_what_to_install(version):
    with pytest.raises(ImportError, match=r"jax_symm supports jax >= 0\.10\.1 and < 0\.13.*"
                                          r"pip install 'jax>=0\.10\.1,<0\.13'"):
        _compat.check_jax_version(version)


@pytest.mark.parametrize("version", ["0.10.1", "0.10.2", "0.11.2", "0.12.0rc1", "0.12.9.dev20260101"])
def test_supported_jax_passes(version):
    _compat.check_jax_version(version)


def test_pyproject_pins_match_the_version_check():
    """Run time pins jax to the range that `check_jax_version` accepts; the
    build pins jaxlib to that range's floor, whose FFI headers every admitted
    jaxlib accepts (an unbounded or newest-jaxlib build pin compiled handlers
    that older jaxlibs refuse)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    lo = ".".join(map(str, _compat.MIN_JAX))
    hi = ".".join(map(str, _compat.MAX_JAX_EXCLUSIVE))
    pins = {r for r in project["project"]["dependencies"] if r.startswith("jax")}
    assert pins == {f"jax>={lo},<{hi}"}
    build = {r for r in project["build-system"]["requires"] if r.startswith("jax")}
    assert build == {f"jaxlib=={lo}"}


@pytest.mark.timeout(150)
def test_python_m_info_prints_json_without_warnings(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning",  # the jax_symm under test
               **_child_environment.changes(os.environ, platform="cpu"))
    proc = subprocess.run([sys.executable, "-m", "jax_symm.info"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert out["jax_symm"] == jax_symm.__version__ and out["backend"] == "cpu"


def _run_with_source_copy(tmp_path, body: str, hide_installed: bool):
    """Runs `body` in a fresh interpreter whose `import jax_symm` finds a copy
    of the pure-Python package (no compiled extension) first, as a source
    checkout in the cwd does when jax_symm is installed non-editable."""
    src = tmp_path / "checkout"
    shutil.copytree(_PKG, src / "jax_symm",
                    ignore=shutil.ignore_patterns("_jax_symm*", "__pycache__"))
    prelude = f"""
        import importlib.metadata, os, sys
        import jax, numpy  # from wherever they are installed
        # An editable install's finder would win over sys.path; a plain
        # `pip install .` has none, so the copy below shadows it.
        sys.meta_path[:] = [f for f in sys.meta_path
                            if "editable" not in type(f).__module__.lower()]
        sys.path.insert(0, {str(src)!r})
        if {hide_installed!r}:
            def _no_dist(name):
                raise importlib.metadata.PackageNotFoundError(name)
            importlib.metadata.files = _no_dist
            sys.path[1:] = [p for p in sys.path[1:]
                            if not os.path.isdir(os.path.join(p or ".", "jax_symm"))]
    """
    code = textwrap.dedent(prelude) + textwrap.dedent(body)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(150)
def test_source_checkout_uses_installed_extension(tmp_path):
    proc = _run_with_source_copy(tmp_path, """
        import numpy as np
        import jax_symm
        from jax.sharding import PartitionSpec as P
        assert jax_symm.__file__.startswith(sys.path[0]), jax_symm.__file__
        assert "checkout" not in jax_symm._native.ext.__file__
        mesh = jax.make_mesh((4,), ("tp",))
        x = jax.device_put(np.arange(8.0), jax.NamedSharding(mesh, P("tp")))
        f = jax.jit(jax.shard_map(lambda v: jax_symm.psum(v, "tp"),
                                  mesh=mesh, in_specs=P("tp"), out_specs=P()))
        print("TEXT", "jax_symm_host_all_reduce" in f.lower(x).as_text())
        print("OUT", np.asarray(f(x)).tolist())
    """, hide_installed=False)
    assert proc.returncode == 0, proc.stderr
    assert "TEXT True" in proc.stdout
    assert "OUT [12.0, 16.0]" in proc.stdout


@pytest.mark.timeout(150)
def test_no_extension_anywhere_fails_at_import_saying_what_to_do(tmp_path):
    proc = _run_with_source_copy(tmp_path, """
        import jax_symm
    """, hide_installed=True)
    assert proc.returncode != 0
    err = proc.stderr
    # At `import jax_symm`, not inside a JAX trace at the first collective.
    assert "ImportError: jax_symm's compiled extension" in err, err
    assert "pip install ." in err and "pip install -e ." in err, err
    assert "jax._src" not in err, err


@pytest.mark.parametrize("op", ["all_gather", "psum_scatter", "psum"])
def test_singleton_calls_on_cpu_are_refused_saying_why(op):
    """A one-device group with jax_symm_singleton_calls on reached the host
    transport and failed there ("a host window needs 2 to 65536 ranks, not 1")."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
    fn = getattr(jax_symm, op)
    call = (lambda a: fn(a, "x", tiled=True)) if op != "psum" else (lambda a: fn(a, "x"))
    f = jax.jit(jax.shard_map(call, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    x = np.random.default_rng().standard_normal(8).astype(np.float32)
    with jax_symm.settings.singleton_calls(True):
        with pytest.raises(NotImplementedError,
                           match=r"jax_symm_singleton_calls.*only the GPU transport.*"
                                 r"jax_symm_singleton_calls', False"):
            f(x)
        with jax_symm.settings.disable(True):  # disabled: XLA's, as for any call
            np.testing.assert_array_equal(f(x), x)
    np.testing.assert_array_equal(f(x), x)  # setting off: the reshape, as before
