"""Property-based cross-checks: shapes, broadcasting patterns, dimension numbers and dtypes drawn
at random, each compared with jax.vjp of jnp.matmul / lax.dot_general."""

import os

import jax.numpy as jnp
import numpy as np
from cases import ALL_DTYPES
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from reference import assert_same_vjp, random_array, x64_context

import jaxmm

# Per property: several hundred drawn cases in the full tier (pytest --full), a few by default.
EXAMPLES = 200 if os.environ.get("JAXMM_FULL_TIER") else 20

dtypes = st.sampled_from(ALL_DTYPES)
# Mostly small sizes, sometimes 0 (empty) or 1 (degenerate axes).
sizes = st.integers(0, 4).filter(lambda n: n > 0) | st.just(0) | st.just(1)


@st.composite
def matmul_shapes(draw):
    """Two shapes that jnp.matmul accepts: each operand a vector or a (batch of) matrix, batch
    axes broadcast with size-1 axes and missing leading axes on either side."""
    m, n, k = draw(sizes), draw(sizes), draw(sizes)
    a_vector, b_vector = draw(st.booleans()), draw(st.booleans())
    broadcast = draw(
        st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["same", "a1", "b1"])), max_size=3)
    )
    a_batch = tuple(1 if kind == "a1" else size for size, kind in broadcast)
    b_batch = tuple(1 if kind == "b1" else size for size, kind in broadcast)
    a_batch = a_batch[draw(st.integers(0, len(a_batch))) :]  # drop leading axes: rank promotion
    b_batch = b_batch[draw(st.integers(0, len(b_batch))) :]
    a_shape = (n,) if a_vector else a_batch + (m, n)
    b_shape = (n,) if b_vector else b_batch + (n, k)
    return a_shape, b_shape


@settings(max_examples=EXAMPLES)
@given(shapes=matmul_shapes(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_matmul_property(shapes, dtype, seed):
    a_shape, b_shape = shapes
    rng = np.random.default_rng(seed)
    with x64_context(dtype):
        a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
        assert_same_vjp(jaxmm.matmul, jnp.matmul, a, b, seed=seed)


@st.composite
def dot_general_operands(draw):
    """Two shapes and dimension numbers: a random number of batch, contracting and free axes of
    each kind, laid out in a random order in each operand."""
    num_batch, num_contract = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    num_lhs_free, num_rhs_free = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    batch_sizes = [draw(sizes) for _ in range(num_batch)]
    contract_sizes = [draw(sizes) for _ in range(num_contract)]

    def layout(num_free):
        axes = (
            [("batch", i) for i in range(num_batch)]
            + [("contract", i) for i in range(num_contract)]
            + [("free", i) for i in range(num_free)]
        )
        axes = draw(st.permutations(axes))
        free_sizes = [draw(sizes) for _ in range(num_free)]
        size = {"batch": batch_sizes, "contract": contract_sizes, "free": free_sizes}
        shape = tuple(size[kind][i] for kind, i in axes)
        batch = tuple(axes.index(("batch", i)) for i in range(num_batch))
        contract = tuple(axes.index(("contract", i)) for i in range(num_contract))
        return shape, batch, contract

    lhs_shape, lhs_batch, lhs_contract = layout(num_lhs_free)
    rhs_shape, rhs_batch, rhs_contract = layout(num_rhs_free)
    return lhs_shape, rhs_shape, ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))


@settings(max_examples=EXAMPLES)
@given(case=dot_general_operands(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_dot_general_property(case, dtype, seed):
    lhs_shape, rhs_shape, dimension_numbers = case
    rng = np.random.default_rng(seed)
    with x64_context(dtype):
        lhs, rhs = random_array(rng, lhs_shape, dtype), random_array(rng, rhs_shape, dtype)
        assert_same_vjp(
            lambda l, r: jaxmm.dot_general(l, r, dimension_numbers),
            lambda l, r: lax.dot_general(l, r, dimension_numbers),
            lhs,
            rhs,
            seed=seed,
        )
