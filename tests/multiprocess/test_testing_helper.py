"""jax_symm.testing.run_multiprocess finds the functions users write where
they write them (a script, a test module, 'module:function' from the cwd) and
hands back the workers' output on success too."""

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


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_function_of_a_test_module_and_output_on_success(capsys):
    out = run_multiprocess(report, num_processes=2, devices_per_process=1,
                           args=("hello",), timeout_s=120, echo_output=True)
    assert list(out) == [(report.__module__, 0, 2), (report.__module__, 1, 2)]
    assert "hello: process 1 of 2" in out.logs[1]
    printed = capsys.readouterr().out
    assert "[process 0] hello: process 0 of 2" in printed
    assert "[process 1] hello: process 1 of 2" in printed


@pytest.mark.multiprocess
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


@pytest.mark.multiprocess
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


# ------------------------------------------------ platform="gpu" (checked on CPU)


def test_gpu_plan_gives_each_process_its_own_gpus_where_there_are_enough():
    from jax_symm.testing import gpu_plan

    plan = gpu_plan(2, 2, ["0", "1", "2", "3"])
    assert not plan.shared and plan.visible == ("0,1", "2,3")
    assert all(e == {"NCCL_NVLS_ENABLE": "0"} for e in plan.env)


def test_gpu_plan_shares_gpus_with_one_nccl_host_id_per_process():
    from jax_symm.testing import gpu_plan

    plan = gpu_plan(4, 1, ["0"], job="j")
    assert plan.shared and plan.visible == ("0",) * 4
    ids = [e["NCCL_HOSTID"] for e in plan.env]
    assert len(set(ids)) == 4 and all("j" in i for i in ids)
    for e in plan.env:
        assert e["NCCL_NVLS_ENABLE"] == "0" and e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        assert e["NCCL_SOCKET_IFNAME"] == "lo" and e["NCCL_IB_DISABLE"] == "1"
    # Asked for explicitly, even where there would be enough GPUs.
    assert gpu_plan(2, 1, ["0", "1"], share_gpus=True).shared


def test_gpu_plan_refuses_what_cannot_work():
    from jax_symm.testing import gpu_plan

    with pytest.raises(RuntimeError, match="no GPU is visible"):
        gpu_plan(2, 1, [])
    with pytest.raises(ValueError, match="share_gpus=True"):
        gpu_plan(4, 1, ["0", "1"], share_gpus=False)
    with pytest.raises(ValueError, match="one GPU each"):
        gpu_plan(2, 2, ["0"])


def test_run_multiprocess_on_gpu_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        run_multiprocess(report, num_processes=2, platform="gpu")
    with pytest.raises(ValueError, match="platform must be"):
        run_multiprocess(report, platform="tpu")
    with pytest.raises(ValueError, match="share_gpus applies"):
        run_multiprocess(report, share_gpus=True)


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_heartbeat_timeout_reaches_jax_distributed_initialize():
    """A job started with a heartbeat bound runs (jax.distributed.initialize
    takes it); a bound that is not a whole number of seconds is refused."""
    out = run_multiprocess(report, num_processes=2, devices_per_process=1, args=("hb",),
                           timeout_s=120, heartbeat_timeout_s=7)
    assert [p for _, p, _ in out] == [0, 1]
    for bad in (0, 1.5, "10"):
        with pytest.raises(ValueError, match="heartbeat_timeout_s"):
            run_multiprocess(report, heartbeat_timeout_s=bad)
