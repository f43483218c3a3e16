"""A mixture-of-experts layer in Flax nnx whose expert products are ``jaxmm.ragged_dot``, trained
side by side with the same layer on ``lax.ragged_dot``.

The layer: a router picks the top ``k`` of ``E`` experts per token (softmax gates over the
chosen ones); the ``tokens · k`` (token, expert) pairs are sorted by expert, so that each
expert's rows are one consecutive group; two grouped products with a GELU between them
(``x_e W_in[e]``, then ``· W_out[e]``) compute every pair's expert output; the outputs are
scaled by their gates and summed back into their tokens (the unsort). Its task: regress the
outputs of a fixed random teacher layer of the same kind on random inputs.

Both runs start from the same parameters and see the same batches; their loss curves agree to
float32 rounding (the products are the same sums, taken in another order), and the step with
``jaxmm.ragged_dot`` is several times faster on CPU, where XLA has no ragged kernel.

Run: ``python examples/moe_ragged.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

import jaxmm


class MoE(nnx.Module):
    """Top-``k`` routed experts, each a GELU MLP ``d -> hidden -> d``; maps ``[T, d]`` to
    ``[T, d]``."""

    def __init__(self, d, hidden, experts, k, ragged_dot, rngs):
        self.k, self.experts, self.ragged_dot = k, experts, ragged_dot
        self.router = nnx.Linear(d, experts, use_bias=False, rngs=rngs)
        self.w_in = nnx.Param(jax.random.normal(rngs.params(), (experts, d, hidden)) / d**0.5)
        self.w_out = nnx.Param(jax.random.normal(rngs.params(), (experts, hidden, d)) / hidden**0.5)

    def __call__(self, x):
        with jax.named_scope("moe"):
            tokens = x.shape[0]
            gates, chosen = lax.top_k(self.router(x), self.k)  # [T, k]
            gates = jax.nn.softmax(gates, axis=-1)
            expert = chosen.reshape(-1)  # pair p = (token p // k, expert[p])
            order = jnp.argsort(expert, stable=True)  # the pairs of each expert consecutive
            token = order // self.k
            group_sizes = jnp.bincount(expert, length=self.experts).astype(jnp.int32)
            hidden = jax.nn.gelu(self.ragged_dot(x[token], self.w_in[...], group_sizes))
            out = self.ragged_dot(hidden, self.w_out[...], group_sizes)
            weighted = out * gates.reshape(-1)[order][:, None]
            return jnp.zeros((tokens, x.shape[1]), x.dtype).at[token].add(weighted)


def batches(steps, tokens, d, seed=0):
    """Random inputs and the outputs of a fixed random teacher MoE (lax's products)."""
    teacher = MoE(d, 2 * d, 8, 2, lax.ragged_dot, nnx.Rngs(seed + 1))
    keys = jax.random.split(jax.random.key(seed), steps)
    inputs = [jax.random.normal(key, (tokens, d)) for key in keys]
    return [(x, teacher(x)) for x in inputs]


def train(ragged_dot, steps=30, tokens=512, d=64, hidden=128, experts=8, k=2, data=None):
    """Adam on the mean squared error to the teacher; the loss at every step."""
    model = MoE(d, hidden, experts, k, ragged_dot, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    data = batches(steps, tokens, d) if data is None else data
    return [float(step(model, optimizer, x, y)) for x, y in data]


def step_ms(ragged_dot, tokens=4096, d=256, hidden=512, experts=8, k=2, repeats=5):
    """Median time of one jitted training step (forward, backward, Adam)."""
    model = MoE(d, hidden, experts, k, ragged_dot, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(0), (tokens, d))

    @nnx.jit
    def step(model, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    jax.block_until_ready(step(model, optimizer, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(model, optimizer, x))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main():
    print(f"JAX {jax.__version__}, {jax.devices()[0].platform}, {platform.machine()}")
    data = batches(30, 512, 64)
    ours, theirs = train(jaxmm.ragged_dot, data=data), train(lax.ragged_dot, data=data)
    print(f"{'step':>4} {'jaxmm loss':>12} {'lax loss':>12}")
    for i in range(0, len(ours), 5):
        print(f"{i:4d} {ours[i]:12.6f} {theirs[i]:12.6f}")
    gap = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True))
    print(f"largest relative gap between the curves: {gap:.2e}")
    jaxmm_ms, lax_ms = step_ms(jaxmm.ragged_dot), step_ms(lax.ragged_dot)
    print(
        "training step, 4096 tokens, d 256, hidden 512, 8 experts, top-2: "
        f"jaxmm {jaxmm_ms:.0f} ms, lax {lax_ms:.0f} ms ({jaxmm_ms / lax_ms:.2f}x)"
    )


if __name__ == "__main__":
    main()
