"""Property-based cross-check of jaxmm.ragged_dot: shapes, group counts and group sizes (empty
groups, rows in no group, groups spanning several CPU tiles) drawn at random, against jax.vjp of
lax.ragged_dot."""

import os

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax
from reference import assert_same_vjp, random_array

import jaxmm

# Each drawn shape compiles anew: many cases in the full tier, a few by default.
EXAMPLES = 100 if os.environ.get("JAXMM_FULL_TIER") else 3


@st.composite
def ragged_cases(draw):
    """Shapes ``(m, k)``, ``(g, k, n)`` and group sizes summing to at most ``m``."""
    m, k, n, groups = (
        draw(st.integers(0, 300)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 5)),
        draw(st.integers(1, 6)),
    )
    cuts = sorted(draw(st.lists(st.integers(0, m), min_size=groups, max_size=groups)))
    sizes = np.diff([0, *cuts])  # the rows past the last cut are in no group
    return (m, k), (groups, k, n), sizes


@settings(max_examples=EXAMPLES)
@given(
    case=ragged_cases(),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_ragged_dot_property(case, dtype, seed):
    lhs_shape, rhs_shape, sizes = case
    rng = np.random.default_rng(seed)
    lhs, rhs = random_array(rng, lhs_shape, dtype), random_array(rng, rhs_shape, dtype)
    group_sizes = jnp.asarray(sizes, jnp.int32)
    assert_same_vjp(
        lambda a, b: jaxmm.ragged_dot(a, b, group_sizes),
        lambda a, b: lax.ragged_dot(a, b, group_sizes),
        lhs,
        rhs,
        seed=seed,
    )
