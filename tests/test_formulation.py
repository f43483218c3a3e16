"""The CPU-only backward formulation that puts the transposed saved operand first (see
``jaxmm/_dot_general.py``): forced on for every case of the matmul and dot_general tables, it
must still match JAX's autodiff exactly as the direct form does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference import assert_same_vjp, random_array, x64_context
from test_dot_general import DOT_GENERAL_CASES
from test_matmul import MATMUL_SHAPES

import jaxmm
from jaxmm import _dot_general

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float64, jnp.complex64, jnp.int8]


@pytest.fixture
def r_first(monkeypatch):
    """Take the transposed-first form for products of any size."""
    monkeypatch.setattr(_dot_general, "_R_FIRST_FLOPS", (0, float("inf")))


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES, ids=str)
def test_matmul_r_first(r_first, a_shape, b_shape, dtype, jit):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
        assert_same_vjp(jaxmm.matmul, jnp.matmul, a, b, jit=jit)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("lhs_shape, rhs_shape, dimension_numbers", DOT_GENERAL_CASES, ids=str)
def test_dot_general_r_first(r_first, lhs_shape, rhs_shape, dimension_numbers, dtype):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        lhs, rhs = random_array(rng, lhs_shape, dtype), random_array(rng, rhs_shape, dtype)
        assert_same_vjp(
            lambda l, r: jaxmm.dot_general(l, r, dimension_numbers),
            lambda l, r: lax.dot_general(l, r, dimension_numbers),
            lhs,
            rhs,
        )


def test_r_first_under_vmap_and_hessian(r_first):
    rng = np.random.default_rng(1)
    a, b = random_array(rng, (3, 4, 5), jnp.float32), random_array(rng, (5, 2), jnp.float32)
    loss = lambda mm: lambda a, b: jnp.sum(jnp.tanh(jax.vmap(mm, (0, None))(a, b)))
    for transform in (jax.grad, jax.hessian):
        ours = transform(loss(jaxmm.matmul), argnums=(0, 1))(a, b)
        theirs = transform(loss(jnp.matmul), argnums=(0, 1))(a, b)
        for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-5)


def test_r_first_is_compiled_as_transpose_then_dot(r_first):
    """On CPU the rhs rule becomes one transpose of the saved operand and a dot whose first
    operand is that transpose; the other platforms' branch is not compiled in."""
    a, b, g = jnp.ones((32, 16)), jnp.ones((16, 8)), jnp.ones((32, 8))
    step = jax.jit(lambda a, b, g: jax.vjp(jaxmm.matmul, a, b)[1](g))
    hlo = step.lower(a, b, g).compile().as_text()
    assert "transpose" in hlo
    assert "conditional" not in hlo
    jaxpr = jax.make_jaxpr(step)(a, b, g)
    assert "optimization_barrier" in str(jaxpr)
