"""A tensor- and sequence-parallel transformer block, trained with jax.lax
collectives, run plainly and under `jax_symm.use_symmetric_memory()`.

Megatron-style: activations are split along the sequence between steps; each
sub-layer all-gathers the sequence before its column-parallel matmul and
reduce-scatters after its row-parallel one. The model code only knows
jax.lax; the scope reroutes its collectives to jax_symm.

    python examples/tp_transformer.py             # 8 virtual CPU devices or all GPUs
    python examples/tp_transformer.py --steps 20 --seq 512 --dim 512

It times the two side by side (their steps interleaved, so a busy spell of
the machine slows both alike) next to the same step with every collective
replaced by a local op of its shape, which shows what share of the step the
collectives are: where that share is small, a faster collective cannot make
the step measurably faster, and the example says so rather than print a
ratio that is the machine's noise.
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


# How `block` moves activations (timing variants of `main`; the model is "lax"):
#   "lax"       jax.lax (rerouted to jax_symm inside use_symmetric_memory)
#   "jax_symm"  jax_symm's all-gather / reduce-scatter called directly, while
#               the gradients' psums that autodiff adds stay XLA's
#   "local"     a local op of the same shape, no data moved: a wrong model,
#               timed only to show what share of a step the compute is
def _gather(x, how: str):
    import jax
    import jax.numpy as jnp

    if how == "local":
        return jnp.tile(x, (jax.lax.axis_size(AXIS), 1))
    if how == "jax_symm":
        import jax_symm
        return jax_symm.all_gather(x, AXIS, axis=0, tiled=True)
    return jax.lax.all_gather(x, AXIS, axis=0, tiled=True)


def _scatter(x, how: str):
    import jax

    if how == "local":
        return x[: x.shape[0] // jax.lax.axis_size(AXIS)]
    if how == "jax_symm":
        import jax_symm
        return jax_symm.psum_scatter(x, AXIS, scatter_dimension=0, tiled=True)
    return jax.lax.psum_scatter(x, AXIS, scatter_dimension=0, tiled=True)


def block(p, x, heads_per_device: int, how: str = "lax"):
    """One block on this device's shard: x is [seq / tp, dim]; `how`: how it
    gathers and scatters (see above)."""
    import jax
    import jax.numpy as jnp

    # Attention: gather the sequence, local heads, row-parallel projection.
    h = _gather(_layer_norm(x, p["ln1"]), how)
    qkv = h @ p["wqkv"]  # [seq, 3 * local heads * head_dim]
    s = h.shape[0]
    q, k, v = jnp.split(qkv.reshape(s, 3, heads_per_device, -1), 3, axis=1)
    q, k, v = (t[:, 0].transpose(1, 0, 2) for t in (q, k, v))  # [heads, seq, hd]
    att = jax.nn.softmax(q @ k.transpose(0, 2, 1) / jnp.sqrt(q.shape[-1]), axis=-1)
    o = (att @ v).transpose(1, 0, 2).reshape(s, -1)
    x = x + _scatter(o @ p["wo"], how)
    # MLP: the same pattern.
    h = _gather(_layer_norm(x, p["ln2"]), how)
    h = jax.nn.gelu(h @ p["w1"]) @ p["w2"]
    return x + _scatter(h, how)


def make_train_step(mesh, d: Dims, lr: float = 1e-2, how: str = "lax"):
    """A jitted (params, x, y) -> (loss, grads, new params) step (`how`: see
    `block`; the loss's and the gradients' psums are lax's in every variant)."""
    import jax
    from jax.sharding import PartitionSpec as P

    tp = mesh.shape[AXIS]
    if d.heads % tp or d.ffn % tp or d.seq % tp:
        raise ValueError(f"heads, ffn and seq must divide by the {tp} devices")

    def local_loss(p, x, y):
        out = block(p, x, d.heads // tp, how)
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


def time_interleaved(steps: dict, params, data, n: int) -> dict:
    """Seconds per step of each of `steps` ({name: jitted step}), n each, run
    in turns (the order rotating every round), so drift hits all alike."""
    names = list(steps)
    times = {k: [] for k in names}
    for i in range(n):
        x, y = data[i % len(data)]
        for k in names[i % len(names):] + names[:i % len(names)]:
            t = time.perf_counter()
            loss, _, _ = steps[k](params, x, y)
            loss.block_until_ready()
            times[k].append(time.perf_counter() - t)
    return times


def ratio_range(a: list, b: list, seed: int = 0) -> tuple:
    """median(a) / median(b) and its [p10, p90] by bootstrap over rounds."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (1000, len(a)))  # rounds resampled together
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    return float(np.median(a) / np.median(b)), *map(float, np.percentile(boot, [10, 90]))


def collectives_in(step, params, x, y) -> int:
    """Collectives in the compiled step: XLA's own (after its combiners
    merged what they could) and jax_symm's custom calls."""
    import re

    text = step.lower(params, x, y).compile().as_text()
    return len(re.findall(r"(?<![\w.%-])(?:all-gather|reduce-scatter|all-reduce|all-to-all)"
                          r"(?:-start)?\(|custom_call_target=\"jax_symm", text))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=8, help="virtual CPU devices (no GPU)")
    p.add_argument("--steps", type=int, default=30, help="timed steps of each (default 30)")
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
    print(f"jax {jax.__version__}, {mesh.size} x {jax.devices()[0].device_kind}, {d}, "
          f"{os.cpu_count()} host cores, load average {os.getloadavg()[0]:.1f}")
    outside = True  # use_symmetric_memory(disabled=...): traced outside the scope
    variants = [  # name, traced outside the scope, how it gathers and scatters
        ("lax", outside, "lax"),
        ("jax_symm", not outside, "lax"),
        ("jax_symm gathers/scatters only", outside, "jax_symm"),
        ("no collectives", outside, "local")]
    steps, losses, calls = {}, {}, {}
    for name, disabled, how in variants:
        with jax_symm.use_symmetric_memory(disabled=disabled):  # traced, compiled here
            steps[name] = make_train_step(mesh, d, how=how)
            calls[name] = collectives_in(steps[name], params, *data[0])
            losses[name] = train(steps[name], params, data, 2)[0]  # compile, warm up
        if name in ("lax", "jax_symm"):  # the two trainings must agree
            losses[name] += train(steps[name], params, data, 4)[0]
    times = time_interleaved(steps, params, data, a.steps)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    diff = max(abs(u - v) for u, v in zip(losses["lax"], losses["jax_symm"]))
    print(f"median step over {a.steps} interleaved steps of each; collectives in the "
          "compiled step; ratio to lax with its [p10, p90] by bootstrap:")
    for name, *_ in variants:
        r, lo, hi = ratio_range(times[name], times["lax"])
        ratio = f"x{r:.3f} [{lo:.3f}, {hi:.3f}]" if name != "lax" else ""
        n_calls = f"{calls[name]:2d} collectives" if name != "no collectives" else \
            f"{calls[name]:2d} (the psums)  "
        print(f"  {name:31s} {med[name]:7.3f} ms  {n_calls}  {ratio}")
    print(f"max loss difference lax / jax_symm over {len(losses['lax'])} steps: {diff:.3g}")
    r, lo, hi = ratio_range(times["jax_symm"], times["lax"])
    rg, log, hig = ratio_range(times["jax_symm gathers/scatters only"], times["lax"])
    comm = med["lax"] - med["no collectives"]
    print(f"step time jax_symm / lax = {r:.3f} [p10 {lo:.3f}, p90 {hi:.3f}]; XLA's "
          f"collectives take about {comm:.2f} ms of lax's {med['lax']:.2f} ms step "
          f"({100 * comm / med['lax']:.0f}%: its time less the step without collectives)")
    if hi < 1:
        print("verdict: the jax_symm step is faster on this machine")
        return
    print("verdict: the jax_symm step is " + (
        "SLOWER on this machine (its ratio's p10 is above 1)" if lo > 1 else
        "not measurably faster on this machine (its ratio's [p10, p90] reaches 1)")
        + ". Why, from the rows above:")
    gs = "jax_symm gathers/scatters only"
    extra = med["jax_symm"] - med[gs]
    print(f"  - jax_symm's {calls[gs] - calls['no collectives']} gathers and scatters, with the "
          f"psums left to XLA: x{rg:.3f} [{log:.3f}, {hig:.3f}] against lax"
          + (" (faster)" if hig < 1 else " (not resolved either)") + ";")
    print(f"  - XLA merges the loss's psum and the psums of the two replicated layer-norm "
          f"gradients into one all-reduce ({calls['lax']} collectives in lax's step); under "
          f"the scope these are three jax_symm all-reduces ({calls['jax_symm']}), which cost "
          f"{extra:+.2f} ms here: small independent calls that the device threads meet in "
          "different orders wait for their peers (up to JAX_SYMM_PATIENCE_US; README, "
          "\"What the ordering costs\");")
    print(f"  - the steps' spread: their times vary by more than the collectives' difference "
          f"on a busy machine (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          "cores); the collectives' share of lax's step is "
          f"{100 * comm / med['lax']:.0f}%, and larger --seq/--dim raise it.")


if __name__ == "__main__":
    main()
