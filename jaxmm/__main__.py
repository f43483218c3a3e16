"""``python -m jaxmm``: jaxmm's gradient beside ``jax.grad`` of ``jnp.matmul``."""

import jax
import jax.numpy as jnp

import jaxmm


def main() -> None:
    x = jax.random.normal(jax.random.key(0), (4, 3))
    w = jax.random.normal(jax.random.key(1), (3, 2))
    dy = jax.random.normal(jax.random.key(2), (4, 2))

    def loss(matmul):
        return lambda x, w: jnp.sum(matmul(x, w) * dy)  # dL/dY = dY

    ours = jax.grad(loss(jaxmm.matmul), argnums=(0, 1))(x, w)
    theirs = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
    for name, a, b in zip(("dX = dY Wᵀ", "dW = Xᵀ dY"), ours, theirs):
        print(f"{name}\n jaxmm:\n{a}\n jax.grad(jnp.matmul):\n{b}")
        print(f" max |diff| = {jnp.abs(a - b).max()}\n")


if __name__ == "__main__":
    main()
