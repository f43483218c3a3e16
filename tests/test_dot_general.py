"""jaxmm.dot_general against jax.vjp of lax.dot_general, over a table of dimension numbers."""

import inspect
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import ALL_DTYPES, DOT_GENERAL_CASES
from jax import lax
from reference import (
    assert_same_derivatives,
    primitive_names,
    random_array,
    x64_context,
)

import jaxmm


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("lhs_shape, rhs_shape, dimension_numbers", DOT_GENERAL_CASES, ids=str)
def test_dot_general_matches_lax(mechanism, lhs_shape, rhs_shape, dimension_numbers, dtype):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        lhs = random_array(rng, lhs_shape, dtype)
        rhs = random_array(rng, rhs_shape, dtype)
        assert_same_derivatives(
            lambda l, r: mechanism.dot_general(l, r, dimension_numbers),
            lambda l, r: lax.dot_general(l, r, dimension_numbers),
            lhs,
            rhs,
        )


@pytest.mark.parametrize(
    "lhs_dtype, rhs_dtype, preferred",
    [
        (jnp.bfloat16, jnp.bfloat16, jnp.float32),
        (jnp.bfloat16, jnp.float32, None),
        (jnp.int32, jnp.float32, None),
        (jnp.float32, jnp.complex64, None),
        (jnp.int8, jnp.int8, jnp.int32),
        (jnp.float16, jnp.float16, jnp.float32),
    ],
    ids=str,
)
def test_dot_general_mixed_and_preferred_dtypes(mechanism, lhs_dtype, rhs_dtype, preferred):
    rng = np.random.default_rng(1)
    dimension_numbers = (((2,), (1,)), ((0,), (0,)))
    lhs = random_array(rng, (2, 3, 4), lhs_dtype)
    rhs = random_array(rng, (2, 4, 5), rhs_dtype)
    assert_same_derivatives(
        lambda l, r: mechanism.dot_general(
            l, r, dimension_numbers, preferred_element_type=preferred
        ),
        lambda l, r: lax.dot_general(l, r, dimension_numbers, preferred_element_type=preferred),
        lhs,
        rhs,
    )


def test_dot_general_accepts_dimension_numbers_in_any_sequence_form(mechanism):
    rng = np.random.default_rng(2)
    lhs = random_array(rng, (2, 3, 4), jnp.float32)
    rhs = random_array(rng, (2, 4, 5), jnp.float32)
    expected = lax.dot_general(lhs, rhs, (((2,), (1,)), ((0,), (0,))))
    for dimension_numbers in [
        [[[2], [1]], [[0], [0]]],
        (((np.int64(2),), (np.int32(1),)), (np.array([0]), (0,))),
        ((2, 1), (0, 0)),  # single ints, as lax.dot_general accepts
    ]:
        actual = mechanism.dot_general(lhs, rhs, dimension_numbers)
        np.testing.assert_array_equal(actual, expected)


def _parameters(fn, jax_fn=None):
    """(name, kind, default) of each parameter; with ``jax_fn``, less what that JAX function does
    not take (``reduction_order`` arrived in JAX 0.12.1)."""
    theirs = inspect.signature(jax_fn).parameters if jax_fn is not None else None
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(fn).parameters.values()
        if theirs is None or p.name in theirs or p.name != "reduction_order"
    ]


# jaxmm's additions, last and keyword-only, off by default.
RESIDUAL_OPTIONS = [
    ("residual_dtype", inspect.Parameter.KEYWORD_ONLY, None),
    ("residual_scaling", inspect.Parameter.KEYWORD_ONLY, "tensor"),
]


def test_dot_general_signature_is_lax_dot_general():
    """Flax calls ``dot_general(lhs, rhs, dims, precision=..., preferred_element_type=...)`` and
    nnx adds ``out_sharding=``: the parameters, their kinds and defaults must be lax's."""
    assert _parameters(jaxmm.dot_general, lax.dot_general) == [
        *_parameters(lax.dot_general),
        *RESIDUAL_OPTIONS,
    ]


def test_matmul_signature_is_jnp_matmul():
    assert _parameters(jaxmm.matmul, jnp.matmul) == [*_parameters(jnp.matmul), *RESIDUAL_OPTIONS]


@pytest.mark.parametrize("precision", ["highest", ("high", "default"), lax.Precision.HIGHEST])
def test_dot_general_precision(mechanism, precision):
    rng = np.random.default_rng(3)
    lhs = random_array(rng, (3, 5), jnp.float32)
    rhs = random_array(rng, (4, 5), jnp.float32)
    dimension_numbers = (((1,), (1,)), ((), ()))
    assert_same_derivatives(
        lambda l, r: mechanism.dot_general(l, r, dimension_numbers, precision),
        lambda l, r: lax.dot_general(l, r, dimension_numbers, precision),
        lhs,
        rhs,
    )


def test_exact_products_are_jaxmms_primitive_and_narrowed_ones_a_custom_vjp():
    lhs, rhs = jnp.ones((2, 3)), jnp.ones((3, 4))
    dg = lambda l, r, **kw: jaxmm.dot_general(l, r, (((1,), (0,)), ((), ())), **kw)
    for fn in (dg, jaxmm.matmul):
        names = primitive_names(jax.make_jaxpr(fn)(lhs, rhs).jaxpr)
        assert names.count("jaxmm_dot_general") == 1
        assert "dot_general" not in names and not [n for n in names if "custom" in n]
        narrowed = partial(fn, residual_dtype=jnp.bfloat16)
        names = primitive_names(jax.make_jaxpr(narrowed)(lhs, rhs).jaxpr)
        assert [name for name in names if "custom" in name] == ["custom_vjp_call"]
