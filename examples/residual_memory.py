"""What ``residual_dtype`` saves, and what it costs, for a float32 Flax MLP.

Memory from XLA's compiled memory analysis (nothing is run to measure it):

- *saved for the backward pass*: the output size of the compiled forward pass that returns the
  residuals (``jax.vjp``'s closure).
- *saved matmul inputs*: the part of it that jaxmm saves, the inputs of the products (the
  activations and the weights; the first layer's weight is not saved, since the data needs no
  cotangent) and their scales. It is the saved total less what the rest of the model saves (ReLU
  masks, the loss's arrays), which is the same for every setting: the exact setting's total less
  its matmul inputs at 4 bytes each.
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

# (name, residual_dtype, residual_scaling) of every setting compared, exact first.
SETTINGS = [
    ("exact", None, "tensor"),
    ("bf16", jnp.bfloat16, "tensor"),
    ("f16", jnp.float16, "tensor"),
    ("f16/channel", jnp.float16, "channel"),
    ("e4m3", jnp.float8_e4m3fn, "tensor"),
    ("e4m3/channel", jnp.float8_e4m3fn, "channel"),
    ("e5m2", jnp.float8_e5m2, "tensor"),
    ("e5m2/channel", jnp.float8_e5m2, "channel"),
]


def dot_general_for(residual_dtype, residual_scaling="tensor"):
    """``jaxmm.dot_general`` with the given residual options, for ``nnx.Linear(dot_general=)``."""
    return functools.partial(
        jaxmm.dot_general, residual_dtype=residual_dtype, residual_scaling=residual_scaling
    )


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


def _loss_fn(graphdef):
    def loss(params, x, labels):
        logits = nnx.merge(graphdef, params)(x)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, axis=-1))

    return loss


def saved_bytes(loss, params, *data) -> int:
    """Bytes the compiled forward pass of ``loss(params, *data)`` keeps for the backward pass
    w.r.t. ``params``. (The data are arguments, not constants baked into the program.)"""

    def forward(params, *data):
        return jax.vjp(lambda params: loss(params, *data), params)[1]

    return jax.jit(forward).lower(params, *data).compile().memory_analysis().output_size_in_bytes


def relative_errors(grads, reference) -> list[float]:
    """Each parameter gradient's relative error (Frobenius norm) against ``reference``."""
    return [
        float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference))
    ]


def measure(
    batch=2048,
    widths=(512, 1024, 1024, 1024, 10),
    settings=SETTINGS,
    seed=0,
    step_memory=True,
    gradients=True,
):
    """One row of compiled memory figures per setting (and JAX's autodiff first), each setting's
    per-parameter gradient errors (if ``gradients``), and the parameters' shapes."""
    x = jax.random.normal(jax.random.key(seed), (batch, widths[0]))
    labels = jax.nn.one_hot(jax.random.randint(jax.random.key(seed + 1), (batch,), 0, 10), 10)
    variants = [("jnp autodiff", jax.lax.dot_general)]
    variants += [(name, dot_general_for(d, s)) for name, d, s in settings]
    # The exact matmul inputs: every layer's input, and every weight but the first.
    exact_matmul_bytes = 4 * (
        batch * sum(widths[:-1]) + sum(a * b for a, b in zip(widths[1:-1], widths[2:]))
    )
    rows, grads = [], {}
    for name, dot_general in variants:
        graphdef, params = nnx.split(MLP(widths, dot_general, nnx.Rngs(seed)))
        loss = _loss_fn(graphdef)
        if gradients:
            grads[name] = jax.jit(jax.grad(loss))(params, x, labels)
        rows.append({"variant": name, "saved_bytes": saved_bytes(loss, params, x, labels)})
        if step_memory:
            step = jax.jit(jax.value_and_grad(loss)).lower(params, x, labels).compile()
            step = step.memory_analysis()
            rows[-1]["step_temp_bytes"] = step.temp_size_in_bytes
    other_bytes = rows[1]["saved_bytes"] - exact_matmul_bytes  # the same in every setting
    for row in rows:
        row["saved_matmul_bytes"] = row["saved_bytes"] - other_bytes
        row["matmul_ratio"] = row["saved_matmul_bytes"] / exact_matmul_bytes
    reference = grads.get("jnp autodiff")
    errors = {name: relative_errors(g, reference) for name, g in grads.items()}
    shapes = [leaf.shape for leaf in jax.tree.leaves(params)]
    return rows, errors, shapes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2048)
    args = parser.parse_args(argv)
    widths = (512, 1024, 1024, 1024, 10)
    rows, errors, shapes = measure(batch=args.batch, widths=widths)
    device = jax.devices()[0]
    print(f"float32 MLP {'-'.join(map(str, widths))}, batch {args.batch}, {device.device_kind}")
    mib = 2**20
    print(
        f"{'residuals':<14} {'saved':>9} {'matmul inputs':>14} {'ratio':>6} {'step temp':>10}"
        f"  gradient error (max over parameters)"
    )
    for r in rows:
        print(
            f"{r['variant']:<14} {r['saved_bytes'] / mib:8.1f}M"
            f" {r['saved_matmul_bytes'] / mib:13.1f}M"
            f" {r['matmul_ratio']:6.3f} {r['step_temp_bytes'] / mib:9.1f}M"
            f"  {max(errors[r['variant']]):.1e}"
        )
    print("parameters:", " ".join("x".join(map(str, s)) for s in shapes))
    return rows, errors


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
