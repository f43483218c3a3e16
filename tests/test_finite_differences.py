"""The seed's definition of the gradient, checked literally in float64.

``dX[i][j]`` is how much the loss changes when ``X[i][j]`` moves. With ``L = Σ dY ⊙ Y`` (so that
``∂L/∂Y = dY``, an arbitrary upstream gradient), ``L`` is linear in each operand, so a central
difference ``(L(X + h·E_ij) - L(X - h·E_ij)) / 2h`` equals ``dX[i][j]`` up to rounding for any
``h``.
The loss is evaluated with NumPy, independently of JAX.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmm


def _finite_difference_gradient(loss, operands, position, h=0.5):
    gradient = np.zeros_like(operands[position])
    for index in np.ndindex(operands[position].shape):
        shifted = [op.copy() for op in operands], [op.copy() for op in operands]
        shifted[0][position][index] += h
        shifted[1][position][index] -= h
        gradient[index] = (loss(*shifted[0]) - loss(*shifted[1])) / (2 * h)
    return gradient


CASES = [
    # (name, jaxmm function, NumPy forward, a shape, b shape)
    ("Y = W X", jaxmm.matmul, np.matmul, (3, 4), (4, 2)),
    ("vector-matrix", jaxmm.matmul, np.matmul, (4,), (4, 3)),
    ("broadcast batch", jaxmm.matmul, np.matmul, (2, 1, 3, 4), (3, 4, 2)),
    (
        "dot_general, batch and two contracting axes",
        lambda l, r: jaxmm.dot_general(l, r, (((1, 3), (2, 0)), ((0,), (1,)))),
        lambda l, r: np.einsum("bcik,kbcj->bij", l, r),
        (2, 3, 2, 4),
        (4, 2, 3, 2),
    ),
]


@pytest.mark.parametrize("name, fn, numpy_fn, a_shape, b_shape", CASES, ids=[c[0] for c in CASES])
def test_gradient_is_the_finite_difference_of_the_loss(name, fn, numpy_fn, a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    upstream = rng.standard_normal(np.shape(numpy_fn(a, b)))

    def loss(a, b):
        return float(np.sum(upstream * numpy_fn(a, b)))

    with jax.enable_x64(True):
        _, vjp = jax.vjp(fn, jnp.asarray(a), jnp.asarray(b))
        da, db = vjp(jnp.asarray(upstream))
    np.testing.assert_allclose(
        da, _finite_difference_gradient(loss, [a, b], 0), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        db, _finite_difference_gradient(loss, [a, b], 1), rtol=1e-10, atol=1e-10
    )
