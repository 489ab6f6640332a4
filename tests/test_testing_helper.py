"""jax_symm.testing.run_multiprocess finds the functions users write where
they write them (a script, a test module, 'module:function' from the cwd) and
hands back the workers' output on success too (issue #13, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from jax_symm.testing import run_multiprocess


def report(tag):
    """A test-module-level worker: prints, and returns who it ran as."""
    import jax

    print(f"{tag}: process {jax.process_index()} of {jax.process_count()}", flush=True)
    return (__name__, jax.process_index(), jax.device_count())


@pytest.mark.timeout(150)
def test_function_of_a_test_module_and_output_on_success(capsys):
    out = run_multiprocess(report, num_processes=2, devices_per_process=1,
                           args=("hello",), timeout_s=120, echo_output=True)
    assert list(out) == [(report.__module__, 0, 2), (report.__module__, 1, 2)]
    assert "hello: process 1 of 2" in out.logs[1]
    printed = capsys.readouterr().out
    assert "[process 0] hello: process 0 of 2" in printed
    assert "[process 1] hello: process 1 of 2" in printed


@pytest.mark.timeout(150)
def test_module_function_string_from_the_callers_cwd(tmp_path, monkeypatch):
    (tmp_path / "my_workers_h13.py").write_text(textwrap.dedent("""
        def work(x):
            import jax
            return x * (jax.process_index() + 1)
    """))
    monkeypatch.chdir(tmp_path)
    out = run_multiprocess("my_workers_h13:work", num_processes=2, devices_per_process=1,
                           args=(7,), timeout_s=120)
    assert out == [7, 14]
    assert out.logs == out.logs and len(out.logs) == 2  # quiet on success unless asked


@pytest.mark.timeout(150)
def test_function_of_a_script_run_as_main(tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text(textwrap.dedent("""
        import jax_symm.testing

        def work(x):
            import jax, numpy as np, jax_symm
            from jax.sharding import PartitionSpec as P
            mesh = jax.make_mesh((jax.device_count(),), ("x",))
            f = jax.jit(jax.shard_map(lambda v: jax_symm.psum(v, "x"), mesh=mesh,
                                      in_specs=P("x"), out_specs=P()))
            local = np.full((1,), x * (jax.process_index() + 1), np.float32)
            g = jax.make_array_from_process_local_data(jax.NamedSharding(mesh, P("x")), local)
            return float(np.asarray(f(g).addressable_data(0))[0])

        print("module body ran as", __name__)
        if __name__ == "__main__":
            print("MAIN GUARD RAN")
            out = jax_symm.testing.run_multiprocess(work, num_processes=2, devices_per_process=1,
                                                    args=(5.0,), timeout_s=120, echo_output=True)
            print("RESULT", list(out))
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT [15.0, 15.0]" in proc.stdout, proc.stdout
    assert "[process 0] module body ran as __mp_main__" in proc.stdout
    assert proc.stdout.count("MAIN GUARD RAN") == 1  # the parent's only


def test_local_function_is_refused_with_what_to_do():
    def local(x):
        return x

    with pytest.raises(ValueError, match="define it at the top level"):
        run_multiprocess(local)
    with pytest.raises(ValueError, match="define it at the top level"):
        run_multiprocess(lambda: 0)
