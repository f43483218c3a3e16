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
from jaxmm import _tuning

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float64, jnp.complex64, jnp.int8]


@pytest.fixture
def r_first(monkeypatch):
    """Take the transposed-first form for products of any size."""
    monkeypatch.setattr(_tuning, "SAVED_FIRST_FLOPS", (0, float("inf")))


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


# (a shape, b shape): products below, inside and above the transposed-first range on CPU.
BIT_IDENTICAL_CASES = [((16, 32), (32, 8)), ((300, 256), (256, 300)), ((4, 64, 32), (32, 16))]
ROUNDING_LEVEL_CASES = [((100, 100), (100, 100)), ((1347, 128), (128, 10))]


@pytest.mark.parametrize("a_shape, b_shape", BIT_IDENTICAL_CASES, ids=str)
def test_gradients_are_bit_identical_to_jax_where_the_same_dots_run(a_shape, b_shape):
    """Where jaxmm's backward products are the ones JAX's autodiff emits, the gradients are
    JAX's bit for bit."""
    rng = np.random.default_rng(2)
    a, b = random_array(rng, a_shape, jnp.float32), random_array(rng, b_shape, jnp.float32)
    cotangent = random_array(rng, jnp.matmul(a, b).shape, jnp.float32)
    step = lambda mm: jax.jit(lambda a, b, g: jax.vjp(mm, a, b)[1](g))
    for ours, theirs in zip(step(jaxmm.matmul)(a, b, cotangent), step(jnp.matmul)(a, b, cotangent)):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the transposed-first form is CPU-only")
@pytest.mark.parametrize("a_shape, b_shape", ROUNDING_LEVEL_CASES, ids=str)
def test_transposed_first_gradient_differs_from_jax_at_rounding_level_only(a_shape, b_shape):
    """Where jaxmm computes dB = Aᵀ dY as (Aᵀ) · dY with the transposed operand first (CPU,
    products of 2²⁰-2²⁴ FLOPs), another kernel sums in another order: dB differs from JAX's in
    the last bits, dA is JAX's bit for bit."""
    rng = np.random.default_rng(3)
    a, b = random_array(rng, a_shape, jnp.float32), random_array(rng, b_shape, jnp.float32)
    cotangent = random_array(rng, jnp.matmul(a, b).shape, jnp.float32)
    step = lambda mm: jax.jit(lambda a, b, g: jax.vjp(mm, a, b)[1](g))
    (da, db), (da_ref, db_ref) = (
        step(jaxmm.matmul)(a, b, cotangent),
        step(jnp.matmul)(a, b, cotangent),
    )
    np.testing.assert_array_equal(da, da_ref)
    # Rounding level: a few float32 ulps of the sum's magnitude.
    magnitude = np.abs(a).T @ np.abs(cotangent)
    assert np.max(np.abs(db - db_ref) / magnitude) < 8 * np.finfo(np.float32).eps
