"""Every residual setting side by side, on two float32 models: what it saves, how far its gradient
is from the exact one, and whether it trains as well.

The models:

- *MLP*: the Flax MLP of ``residual_memory.py`` (ReLU, every layer an ``nnx.Linear`` with jaxmm's
  ``dot_general``), learning to classify generated inputs by a fixed random teacher network.
- *Transformer block*: token and position embeddings, one pre-norm causal self-attention block
  (the q, k, v and output projections ``nnx.Linear`` with jaxmm's ``dot_general``; the attention
  scores and the weighted sum ``jnp.einsum``) and a ReLU MLP (jaxmm), then a jaxmm output
  projection, learning next-token prediction on generated copy sequences (random tokens, then
  the same tokens again: the second half is predictable only by attending to the first).

For each residual setting (exact, bfloat16, float16, float8_e4m3fn, float8_e5m2; per tensor and
per channel), from the same initialisation and on the same batches:

- *saved*: bytes the compiled forward pass keeps for the backward pass (XLA's memory analysis of
  the program that returns ``jax.vjp``'s closure), and that relative to exact;
- *gradient error*: each parameter gradient's relative error (Frobenius norm) against the exact
  gradient at initialisation; the largest over parameters, and which parameter;
- *training*: ``--steps`` Adam steps (optax); the final loss (mean of the last 20 steps) and the
  largest relative gap between the loss and exact's over the run.

Run: ``python examples/residual_training.py`` (a few minutes on 2 CPU cores; ``--size tiny``
runs tiny models with the exact and one narrow setting only, as a smoke test).
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from residual_memory import MLP, SETTINGS, dot_general_for, relative_errors, saved_bytes  # noqa: E402


class TransformerBlock(nnx.Module):
    """Embeddings, one causal self-attention block and an MLP, then logits over the vocabulary."""

    def __init__(self, vocab, length, width, heads, dot_general, rngs):
        def linear(a, b):
            return nnx.Linear(a, b, dot_general=dot_general, rngs=rngs)

        self.heads = heads
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, width)))
        self.norm1, self.norm2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
        self.q, self.k, self.v, self.o = (linear(width, width) for _ in range(4))
        self.up, self.down = linear(width, 4 * width), linear(4 * width, width)
        self.head = linear(width, vocab)

    def __call__(self, tokens):
        x = self.embed(tokens) + self.position[None, : tokens.shape[-1]]
        h = self.norm1(x)
        batch, length, width = h.shape
        q, k, v = (
            y.reshape(batch, length, self.heads, width // self.heads)
            for y in (self.q(h), self.k(h), self.v(h))
        )
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // self.heads)
        causal = jnp.tril(jnp.ones((length, length), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, width)
        x = x + self.o(attended)
        x = x + self.down(jax.nn.relu(self.up(self.norm2(x))))
        return self.head(x)


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))


def mlp_task(size):
    """(model constructor, loss, batch maker): an MLP imitating a fixed random teacher."""
    widths = {"full": (64, 256, 256, 256, 10), "tiny": (8, 16, 10)}[size]
    batch = {"full": 256, "tiny": 16}[size]
    teacher = [
        jax.random.normal(jax.random.key(100 + i), (a, b)) / np.sqrt(a)
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
    ]

    def make_batch(step):
        x = jax.random.normal(jax.random.fold_in(jax.random.key(1), step), (batch, widths[0]))
        h = x
        for w in teacher[:-1]:
            h = jax.nn.relu(h @ w)
        return x, jnp.argmax(h @ teacher[-1], axis=-1)

    def loss(model, x, labels):
        return cross_entropy(model(x), labels)

    return (lambda dot: MLP(widths, dot, nnx.Rngs(0))), loss, make_batch


def transformer_task(size):
    """(model constructor, loss, batch maker): next-token prediction on copy sequences."""
    vocab, half, width, heads, batch = {
        "full": (64, 16, 128, 4, 64),
        "tiny": (8, 4, 16, 2, 4),
    }[size]

    def make_batch(step):
        key = jax.random.fold_in(jax.random.key(2), step)
        first = jax.random.randint(key, (batch, half), 0, vocab)
        tokens = jnp.concatenate([first, first], axis=1)
        return tokens[:, :-1], tokens[:, 1:]

    def loss(model, tokens, targets):
        return cross_entropy(model(tokens), targets)

    def build(dot):
        return TransformerBlock(vocab, 2 * half - 1, width, heads, dot, nnx.Rngs(0))

    return build, loss, make_batch


def run_setting(build, model_loss, make_batch, dot_general, steps, learning_rate):
    """Saved bytes, the gradient at initialisation and the loss curve of one setting."""
    graphdef, params = nnx.split(build(dot_general))

    def loss(params, *batch):
        return model_loss(nnx.merge(graphdef, params), *batch)

    first_batch = make_batch(0)
    optimizer = optax.adam(learning_rate)

    @jax.jit
    def train(params):
        """The gradient at initialisation, and the loss at every step (one compiled program)."""

        def step(carry, i):
            params, state = carry
            value, grads = jax.value_and_grad(loss)(params, *make_batch(i))
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
        return jax.grad(loss)(params, *first_batch), losses

    grads, losses = train(params)
    paths = [path for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    names = [jax.tree_util.keystr(p, simple=True, separator=".") for p in paths]
    return {
        "saved": saved_bytes(loss, params, *first_batch),
        "grads": grads,
        "losses": np.asarray(losses),
        "names": [n.removesuffix(".value") for n in names],
    }


def compare(task, size="full", steps=300, learning_rate=1e-3, settings=SETTINGS):
    """One row per setting: saved bytes, the gradient error per parameter and the training."""
    build, model_loss, make_batch = task(size)
    results = {
        name: run_setting(
            build, model_loss, make_batch, dot_general_for(d, s), steps, learning_rate
        )
        for name, d, s in settings
    }
    exact = results[settings[0][0]]
    rows = []
    # A parameter whose exact gradient vanishes (the key bias: softmax ignores a shift common to
    # all keys) has no meaningful relative error; it is left out.
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(exact["grads"])]
    kept = [n > 1e-6 * max(norms) for n in norms]
    for name, result in results.items():
        errors = relative_errors(result["grads"], exact["grads"])
        errors = [e for e, k in zip(errors, kept) if k]
        result["names"] = [n for n, k in zip(result["names"], kept) if k]
        gap = np.abs(result["losses"] - exact["losses"]) / exact["losses"]
        rows.append(
            {
                "setting": name,
                "saved_bytes": result["saved"],
                "saved_ratio": result["saved"] / exact["saved"],
                "grad_errors": dict(zip(result["names"], errors)),
                "final_loss": float(np.mean(result["losses"][-20:])),
                "first_loss": float(result["losses"][0]),
                "max_loss_gap": float(np.max(gap)),
                "finite": bool(np.all(np.isfinite(result["losses"]))),
            }
        )
    return rows


def print_table(title, rows):
    print(f"\n{title}")
    print(
        f"{'residuals':<13} {'saved':>9} {'vs exact':>8} {'grad err (max)':>15}"
        f" {'worst parameter':<18} {'final loss':>10} {'max loss gap':>12}"
    )
    for r in rows:
        worst = max(r["grad_errors"], key=r["grad_errors"].get)
        print(
            f"{r['setting']:<13} {r['saved_bytes'] / 2**20:8.2f}M {r['saved_ratio']:8.3f}"
            f" {r['grad_errors'][worst]:15.1e} {worst:<18} {r['final_loss']:10.4f}"
            f" {100 * r['max_loss_gap']:11.2f}%"
        )
    print("gradient relative error per parameter:")
    names = list(rows[0]["grad_errors"])
    for r in rows[1:]:
        print(f"  {r['setting']:<13} " + " ".join(f"{r['grad_errors'][n]:.0e}" for n in names))
    print("  parameters:  " + ", ".join(names))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    print(
        f"{platform.machine()}, {jax.devices()[0].device_kind}, {jax.device_count()} device(s);"
        f" JAX {jax.__version__}, Flax {flax.__version__}, optax {optax.__version__};"
        f" {args.steps} Adam steps"
    )
    results = {}
    settings = SETTINGS if args.size == "full" else [SETTINGS[0], SETTINGS[5]]
    for title, task in [("MLP", mlp_task), ("Transformer block", transformer_task)]:
        rows = compare(task, args.size, args.steps, settings=settings)
        first = rows[0]["first_loss"]
        print_table(f"{title}: loss {first:.4f} at step 0", rows)
        results[title] = rows
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
