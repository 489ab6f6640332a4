"""A tensor- and sequence-parallel transformer block, trained with jax.lax
collectives, run plainly and under `jax_symm.use_symmetric_memory()`.

Megatron-style: activations are split along the sequence between steps; each
sub-layer all-gathers the sequence before its column-parallel matmul and
reduce-scatters after its row-parallel one. The model code only knows
jax.lax; the scope reroutes its collectives to jax_symm.

    python examples/tp_transformer.py             # 8 virtual CPU devices or all GPUs
    python examples/tp_transformer.py --steps 20 --seq 512 --dim 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

AXIS = "tp"


@dataclass(frozen=True)
class Dims:
    seq: int = 64
    dim: int = 64
    heads: int = 8
    ffn: int = 256


def init_params(key, d: Dims):
    import jax
    import jax.numpy as jnp

    k = jax.random.split(key, 4)
    scale = lambda fan_in: 1.0 / jnp.sqrt(fan_in)
    return {
        "ln1": jnp.ones((d.dim,), jnp.float32),
        "ln2": jnp.ones((d.dim,), jnp.float32),
        "wqkv": jax.random.normal(k[0], (d.dim, 3 * d.dim), jnp.float32) * scale(d.dim),
        "wo": jax.random.normal(k[1], (d.dim, d.dim), jnp.float32) * scale(d.dim),
        "w1": jax.random.normal(k[2], (d.dim, d.ffn), jnp.float32) * scale(d.dim),
        "w2": jax.random.normal(k[3], (d.ffn, d.dim), jnp.float32) * scale(d.ffn),
    }


def param_specs():
    from jax.sharding import PartitionSpec as P

    # Column-parallel weights split their outputs, row-parallel their inputs.
    return {"ln1": P(), "ln2": P(), "wqkv": P(None, AXIS), "wo": P(AXIS, None),
            "w1": P(None, AXIS), "w2": P(AXIS, None)}


def _layer_norm(x, g):
    import jax.numpy as jnp

    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * g


def block(p, x, heads_per_device: int):
    """One block on this device's shard: x is [seq / tp, dim]."""
    import jax
    import jax.numpy as jnp

    # Attention: gather the sequence, local heads, row-parallel projection.
    h = jax.lax.all_gather(_layer_norm(x, p["ln1"]), AXIS, axis=0, tiled=True)
    qkv = h @ p["wqkv"]  # [seq, 3 * local heads * head_dim]
    s = h.shape[0]
    q, k, v = jnp.split(qkv.reshape(s, 3, heads_per_device, -1), 3, axis=1)
    q, k, v = (t[:, 0].transpose(1, 0, 2) for t in (q, k, v))  # [heads, seq, hd]
    att = jax.nn.softmax(q @ k.transpose(0, 2, 1) / jnp.sqrt(q.shape[-1]), axis=-1)
    o = (att @ v).transpose(1, 0, 2).reshape(s, -1)
    x = x + jax.lax.psum_scatter(o @ p["wo"], AXIS, scatter_dimension=0, tiled=True)
    # MLP: the same pattern.
    h = jax.lax.all_gather(_layer_norm(x, p["ln2"]), AXIS, axis=0, tiled=True)
    h = jax.nn.gelu(h @ p["w1"]) @ p["w2"]
    return x + jax.lax.psum_scatter(h, AXIS, scatter_dimension=0, tiled=True)


def make_train_step(mesh, d: Dims, lr: float = 1e-2):
    """A jitted (params, x, y) -> (loss, grads, new params) step."""
    import jax
    from jax.sharding import PartitionSpec as P

    tp = mesh.shape[AXIS]
    if d.heads % tp or d.ffn % tp or d.seq % tp:
        raise ValueError(f"heads, ffn and seq must divide by the {tp} devices")

    def local_loss(p, x, y):
        out = block(p, x, d.heads // tp)
        return jax.lax.psum(((out - y) ** 2).sum(), AXIS) / (d.seq * d.dim)

    loss = jax.shard_map(local_loss, mesh=mesh,
                         in_specs=(param_specs(), P(AXIS), P(AXIS)), out_specs=P())

    @jax.jit
    def step(p, x, y):
        value, grads = jax.value_and_grad(loss)(p, x, y)
        new = jax.tree_util.tree_map(lambda w, g: w - lr * g, p, grads)
        return value, grads, new

    return step


def train(step, params, data, steps: int):
    """Runs `steps` steps; returns losses, last grads, and per-step seconds."""
    losses, times, grads = [], [], None
    for i in range(steps):
        x, y = data[i % len(data)]
        t = time.perf_counter()
        loss, grads, params = step(params, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    return losses, grads, times


def setup(d: Dims, n_batches: int = 2, seed: int = 0):
    """Mesh over all devices, sharded parameters and fresh random batches."""
    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()), (AXIS,))
    key = jax.random.key(seed)
    params = jax.device_put(init_params(key, d),
                            {k: NamedSharding(mesh, s) for k, s in param_specs().items()})
    rng = np.random.default_rng(seed)
    sharded = NamedSharding(mesh, P(AXIS))
    data = [tuple(jax.device_put(rng.standard_normal((d.seq, d.dim)).astype(np.float32),
                                 sharded) for _ in range(2)) for _ in range(n_batches)]
    return mesh, params, data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=8, help="virtual CPU devices (no GPU)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1024)
    a = p.parse_args()
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={a.devices}"

    import jax
    import jax_symm

    d = Dims(a.seq, a.dim, a.heads, a.ffn)
    mesh, params, data = setup(d)
    print(f"jax {jax.__version__}, {mesh.size} x {jax.devices()[0].device_kind}, {d}")
    results = {}
    for name, scope in [("lax", jax_symm.use_symmetric_memory(disabled=True)),
                        ("jax_symm", jax_symm.use_symmetric_memory())]:
        with scope:
            step = make_train_step(mesh, d)
            train(step, params, data, 2)  # compile and warm up
            losses, _, times = train(step, params, data, a.steps)
        results[name] = (losses, statistics.median(times) * 1e3)
        print(f"{name:9s} final loss {losses[-1]:.6f}  median step {results[name][1]:.3f} ms")
    diff = max(abs(u - v) for u, v in zip(results["lax"][0], results["jax_symm"][0]))
    print(f"max loss difference over {a.steps} steps: {diff:.3g}; "
          f"step time jax_symm / lax = {results['jax_symm'][1] / results['lax'][1]:.3f}")


if __name__ == "__main__":
    main()
