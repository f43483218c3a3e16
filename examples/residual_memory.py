"""What ``residual_dtype=jnp.bfloat16`` saves, and what it costs, for a float32 Flax MLP.

Memory from XLA's compiled memory analysis (nothing is run to measure it):

- *saved for the backward pass*: the output size of the compiled forward pass that returns the
  residuals (``jax.vjp``'s closure), split into the activations (matmul inputs, ReLU masks) and
  the weights. Without the option the saved weights are the parameters themselves; with it they
  are bfloat16 copies, kept in addition to the float32 parameters.
- *training step temporaries*: ``temp_size_in_bytes`` of the whole jitted gradient step, where
  XLA itself decides what lives from the forward to the backward pass.

The gradient error is each parameter gradient's relative error (Frobenius norm) against JAX's own
float32 autodiff. Run: ``python examples/residual_memory.py``.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxmm


class MLP(nnx.Module):
    def __init__(self, widths, dot_general, rngs):
        self.layers = nnx.List(
            nnx.Linear(a, b, dot_general=dot_general, rngs=rngs)
            for a, b in zip(widths[:-1], widths[1:])
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def _loss_fn(graphdef, x, labels):
    def loss(params):
        logits = nnx.merge(graphdef, params)(x)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))

    return loss


def measure(batch=2048, widths=(512, 1024, 1024, 1024, 10), seed=0):
    x = jax.random.normal(jax.random.key(seed), (batch, widths[0]))
    labels = jax.nn.one_hot(jax.random.randint(jax.random.key(seed + 1), (batch,), 0, 10), 10)
    dot_generals = {
        "jnp autodiff (lax.dot_general)": jax.lax.dot_general,
        "jaxmm, exact (default)": jaxmm.dot_general,
        "jaxmm, residual_dtype=bfloat16": functools.partial(
            jaxmm.dot_general, residual_dtype=jnp.bfloat16
        ),
    }
    rows, grads = [], {}
    for name, dot_general in dot_generals.items():
        graphdef, params = nnx.split(MLP(widths, dot_general, nnx.Rngs(seed)))
        loss = _loss_fn(graphdef, x, labels)

        def forward(params, loss=loss):
            return jax.vjp(loss, params)[1]

        saved = jax.eval_shape(forward, params)
        weights_bytes = sum(
            leaf.size * leaf.dtype.itemsize
            for leaf in jax.tree.leaves(saved)
            if leaf.ndim == 2 and leaf.shape in {(a, b) for a, b in zip(widths, widths[1:])}
        )
        # The inputs of the matmuls: the activations the matmuls save, 4 or 2 bytes each.
        itemsize = 2 if "bfloat16" in name else 4
        matmul_bytes = batch * sum(widths[:-1]) * itemsize
        compiled_forward = jax.jit(forward).lower(params).compile().memory_analysis()
        step = jax.jit(jax.value_and_grad(loss)).lower(params).compile().memory_analysis()
        grads[name] = jax.jit(jax.grad(loss))(params)
        rows.append(
            {
                "variant": name,
                "saved_bytes": compiled_forward.output_size_in_bytes,
                "saved_weights_bytes": weights_bytes,
                "saved_activation_bytes": compiled_forward.output_size_in_bytes - weights_bytes,
                "saved_matmul_input_bytes": matmul_bytes,
                "step_temp_bytes": step.temp_size_in_bytes,
            }
        )
    reference = grads["jnp autodiff (lax.dot_general)"]
    errors = {}
    for name, g in grads.items():
        errors[name] = [
            float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
            for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(reference))
        ]
    shapes = [leaf.shape for leaf in jax.tree.leaves(reference)]
    return rows, errors, shapes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args(argv)
    rows, errors, shapes = measure(batch=args.batch)
    device = jax.devices()[0]
    print(f"float32 MLP 512-1024-1024-1024-10, batch {args.batch}, {device.device_kind}")
    mib = 2**20
    print(f"{'variant':<32} {'saved':>9} {'activations':>12} {'weights':>9} {'step temp':>10}")
    for r in rows:
        print(
            f"{r['variant']:<32} {r['saved_bytes'] / mib:8.1f}M "
            f"{r['saved_activation_bytes'] / mib:11.1f}M {r['saved_weights_bytes'] / mib:8.1f}M "
            f"{r['step_temp_bytes'] / mib:9.1f}M"
        )
    base, narrow = rows[1], rows[2]
    less = 1 - narrow["saved_activation_bytes"] / base["saved_activation_bytes"]
    print(f"saved activations with bf16 residuals: {100 * less:.0f}% less than exact")
    # The rest are ReLU's and the loss's saved arrays (a bool mask and a float32 array per hidden
    # layer), which JAX's autodiff of those functions keeps and residual_dtype does not touch.
    a, b = base["saved_matmul_input_bytes"], narrow["saved_matmul_input_bytes"]
    drop = base["saved_activation_bytes"] - narrow["saved_activation_bytes"]
    print(
        f"the matmul inputs among them: {a / mib:.1f}M -> {b / mib:.1f}M ({100 * (1 - b / a):.0f}% "
        f"less); the compiled activation total dropped by {drop / mib:.1f}M"
    )
    print("\ngradient relative error vs JAX float32 autodiff (max over parameters; per parameter)")
    for name, errs in errors.items():
        detail = " ".join(f"{e:.1e}" for e in errs)
        print(f"{name:<32} max {max(errs):.1e}   [{detail}]")
    print("parameters:", " ".join("x".join(map(str, s)) for s in shapes))
    return rows, errors


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
