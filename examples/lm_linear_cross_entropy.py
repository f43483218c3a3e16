"""A small Flax nnx language model trained on generated tokens, once with
``jaxmm.linear_cross_entropy`` as its output layer and loss, once with the naive loss (the head's
logits, then ``optax.softmax_cross_entropy_with_integer_labels``), from the same initialisation.
The two loss curves agree at every step; the training step's compiled temporaries do not.

The tokens come from a random Markov chain (each token has a few likely successors), so the model
has something to learn; nothing is downloaded. Run: python examples/lm_linear_cross_entropy.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxmm


class TinyLM(nnx.Module):
    """Embedding, a mix of each token with the one before, an MLP, and a vocabulary head."""

    def __init__(self, vocab: int, width: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.mix = nnx.Linear(2 * width, width, rngs=rngs)
        self.mlp = nnx.Linear(width, width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, use_bias=False, rngs=rngs)

    def hidden(self, tokens):
        """The final hidden states, ``[batch, sequence, width]``."""
        h = self.embed(tokens)
        previous = jnp.pad(h[:, :-1], ((0, 0), (1, 0), (0, 0)))
        h = jax.nn.gelu(self.mix(jnp.concatenate([h, previous], axis=-1)))
        return h + jax.nn.gelu(self.mlp(h))


def jaxmm_loss(model, inputs, targets):
    """The head's product and the loss in one: the logits never exist."""
    return jaxmm.linear_cross_entropy(model.hidden(inputs), model.head.kernel[...], targets)


def naive_loss(model, inputs, targets):
    logits = model.head(model.hidden(inputs))  # [batch, sequence, vocab]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def generate_tokens(vocab: int, batch: int, sequence: int, seed: int = 0) -> np.ndarray:
    """Sequences from a random Markov chain: each token is followed by one of 4 successors."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, (vocab, 4))
    tokens = np.empty((batch, sequence + 1), np.int32)
    tokens[:, 0] = rng.integers(0, vocab, batch)
    for t in range(sequence):
        tokens[:, t + 1] = successors[tokens[:, t], rng.integers(0, 4, batch)]
    return tokens


def train(loss_fn, vocab=1024, width=64, batch=8, sequence=64, steps=100, seed=0):
    """Adam on one generated batch; returns the loss at every step."""
    tokens = jnp.asarray(generate_tokens(vocab, batch, sequence, seed))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    model = TinyLM(vocab, width, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model, inputs, targets)
        optimizer.update(model, grads)
        return loss

    return [float(step(model, optimizer)) for _ in range(steps)]


def step_temp_bytes(loss_fn, vocab, width, batch, sequence) -> int:
    """Compiled temporaries of the loss and its gradient for every parameter (compiled only)."""
    graphdef, params = nnx.split(TinyLM(vocab, width, rngs=nnx.Rngs(0)))
    tokens = jax.ShapeDtypeStruct((batch, sequence), jnp.int32)

    def loss(params, inputs, targets):
        return loss_fn(nnx.merge(graphdef, params), inputs, targets)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, tokens).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    ours, theirs = train(jaxmm_loss, steps=args.steps), train(naive_loss, steps=args.steps)
    print(f"{'step':>5} {'jaxmm loss':>11} {'naive loss':>11}")
    for i in range(0, args.steps, max(1, args.steps // 10)):
        print(f"{i:5d} {ours[i]:11.5f} {theirs[i]:11.5f}")
    difference = float(np.max(np.abs(np.subtract(ours, theirs)) / np.abs(theirs)))
    print(f"largest relative difference over {args.steps} steps: {difference:.1e}")
    vocab, width, batch, sequence = 32768, 256, 8, 512
    mib = 2**20
    print(f"\ntraining step at vocab {vocab}, width {width}, {batch}x{sequence} tokens:")
    print(f"  the logits alone (float32): {4 * batch * sequence * vocab / mib:.0f} MiB")
    for name, loss_fn in (("jaxmm", jaxmm_loss), ("naive", naive_loss)):
        temp = step_temp_bytes(loss_fn, vocab, width, batch, sequence)
        print(f"  {name} compiled temporaries: {temp / mib:.0f} MiB")
    return ours, theirs


if __name__ == "__main__":
    main()
