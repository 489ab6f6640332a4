"""One call of each kind on this process's NCCL path (JAX_SYMM_NCCL_PATH),
against lax, on fresh random data with poisoned outputs: a first look at a
path on a GPU before its test suites run (benchmarks/device_paths.sh).
Prints one PROBE line per check."""

import os
import re
import traceback

import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import jax_symm
from jax_symm import _nccl, _nccl_path


def main() -> None:
    print("PROBE path", _nccl_path.choice(), "jax", jax.__version__,
          "nccl", _nccl.version_string(_nccl.load()["version"]), flush=True)
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng()
    ops = {"all_gather": (lambda a: jax_symm.all_gather(a, "x", tiled=True),
                          lambda a: jax.lax.all_gather(a, "x", tiled=True)),
           "psum_scatter": (lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
                            lambda a: jax.lax.psum_scatter(a, "x", tiled=True)),
           "psum": (lambda a: jax_symm.psum(a, "x"), lambda a: jax.lax.psum(a, "x"))}
    for elems in (1024, 1 << 20):
        for name, (ours, ref) in ops.items():
            try:
                x = jax.device_put(rng.standard_normal(elems * mesh.size).astype(np.float32))
                f = jax.jit(jax.shard_map(ours, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
                g = jax.jit(jax.shard_map(ref, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
                text = f.lower(x).as_text()
                calls = re.findall(r"custom_call @(jax_symm_nccl\w+)", text)
                hlo = f.lower(x).compile().as_text()
                copies = len(re.findall(r"= \S+ copy(-start)?\(", hlo))
                jnp.full((64 << 20,), jnp.nan, jnp.float32).block_until_ready()
                got = np.asarray(f(x))
                want = np.asarray(g(x))
                ok = np.allclose(got, want, rtol=1e-5, atol=1e-5) and not np.isnan(got).any()
                print(f"PROBE {name} {elems * 4} B: {'OK' if ok else 'WRONG'} calls={calls} "
                      f"hlo_copies={copies} spaces={'memory_spaces' in text}", flush=True)
            except Exception:  # noqa: BLE001 (every case reports)
                print(f"PROBE {name} {elems * 4} B: ERROR\n{traceback.format_exc()[-2500:]}",
                      flush=True)


def _chain(fn, k, mesh):
    def body(a):
        for _ in range(k):
            a = fn(a)
        return a
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P("x")))


def time_paths(sizes=(4 << 10, 1 << 20, 64 << 20), k=20, repeats=30) -> None:
    """Per-call time of each op at world 1 (singleton calls): lax, jax_symm on
    the own path and on the XLA path, timed side by side in this process (each
    repeat runs every method, in rotating order). Per call: (t(k) - t(1)) /
    (k - 1), medians over the repeats; host clock around block_until_ready."""
    import time

    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(0)
    ops = {"all_gather": (lambda a: jax_symm.all_gather(a, "x", tiled=True),
                          lambda a: jax.lax.all_gather(a, "x", tiled=True)),
           "psum_scatter": (lambda a: jax_symm.psum_scatter(a, "x", tiled=True),
                            lambda a: jax.lax.psum_scatter(a, "x", tiled=True)),
           "psum": (lambda a: jax_symm.psum(a, "x"), lambda a: jax.lax.psum(a, "x"))}
    print(f"TIME capture={os.environ.get('JAX_SYMM_NCCL_XLA_CAPTURE', '0')} "
          f"(us per call; k={k}, {repeats} repeats)", flush=True)
    for nbytes in sizes:
        x = jax.device_put(rng.standard_normal(nbytes // 4 * mesh.size).astype(np.float32))
        for name, (ours, ref) in ops.items():
            methods = {}
            for label, fn, path in (("lax", ref, None), ("own", ours, "own"), ("xla", ours, "xla")):
                ctx = jax_symm.settings.program_nccl_path(path or "process")
                with ctx:
                    chains = {kk: _chain(fn, kk, mesh) for kk in (1, k)}
                    for f in chains.values():
                        f(x).block_until_ready()  # compile and warm up, under the option
                methods[label] = (path, chains)
            samples = {label: {1: [], k: []} for label in methods}
            for r in range(repeats):
                order = list(methods)[r % 3:] + list(methods)[:r % 3]
                for label in order:
                    path, chains = methods[label]
                    with jax_symm.settings.program_nccl_path(path or "process"):
                        for kk, f in chains.items():
                            t = time.perf_counter()
                            f(x).block_until_ready()
                            samples[label][kk].append(time.perf_counter() - t)
            per = {label: (np.median(s[k]) - np.median(s[1])) / (k - 1) * 1e6
                   for label, s in samples.items()}
            print(f"TIME {name:12s} {nbytes:>9d} B  lax {per['lax']:8.1f}  own {per['own']:8.1f}"
                  f"  xla {per['xla']:8.1f}  xla/own {per['xla'] / per['own']:5.2f}"
                  f"  xla/lax {per['xla'] / per['lax']:5.2f}", flush=True)


if __name__ == "__main__":
    import os
    import sys

    time_paths() if "--time" in sys.argv else main()
