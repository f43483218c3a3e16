"""Bad input is refused at trace time with JAX's exception type and a message naming the shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference import raised_by

import jaxmm

# (lhs shape, rhs shape, dimension numbers, fragments the message must contain)
BAD_DOT_GENERAL = [
    ((2, 3), (4, 5), (((1,), (0,)), ((), ())), ["(2, 3)", "(4, 5)", "(3,)", "(4,)"]),
    ((2, 3, 4), (3, 4, 5), (((2,), (1,)), ((0,), (0,))), ["batch", "(2,)", "(3,)"]),
    ((2, 3), (3, 4), (((2,), (0,)), ((), ())), ["lhs", "rank 2", "(2,)"]),
    ((2, 3), (3, 4), (((1,), (-1,)), ((), ())), ["rhs", "(-1,)"]),
    ((2, 3, 3), (3, 3, 4), (((1, 1), (0, 1)), ((), ())), ["distinct", "(1, 1)"]),
    ((2, 3), (3, 4), (((1,), (0, 1)), ((), ())), ["equal numbers", "(1,)", "(0, 1)"]),
    ((2, 3), (2, 3), (((), ()), ((0,), ())), ["equal numbers", "lhs_batch (0,)"]),
    ((2, 3), (2, 3), (((0,), (0,)), ((0,), (0,))), ["disjoint", "(0,)"]),
]


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, dimension_numbers, fragments", BAD_DOT_GENERAL, ids=str
)
def test_bad_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers, fragments):
    lhs, rhs = jnp.ones(lhs_shape), jnp.ones(rhs_shape)
    expected = raised_by(lax.dot_general, lhs, rhs, dimension_numbers)
    with pytest.raises(expected) as error:
        jaxmm.dot_general(lhs, rhs, dimension_numbers)
    for fragment in fragments:
        assert fragment in str(error.value)
    # Refused while tracing, from shapes alone: no computation is ever staged.
    abstract = (
        jax.ShapeDtypeStruct(lhs_shape, jnp.float32),
        jax.ShapeDtypeStruct(rhs_shape, jnp.float32),
    )
    with pytest.raises(expected):
        jax.eval_shape(lambda l, r: jaxmm.dot_general(l, r, dimension_numbers), *abstract)


@pytest.mark.parametrize(
    "a_shape, b_shape, fragments",
    [
        ((), (3,), ["ndim at least 1", "operand 0"]),
        ((3,), (), ["operand 1"]),
        ((2, 3), (4, 5), ["(2, 3)", "(4, 5)", "3", "4"]),
        ((3,), (4,), ["(3,)", "(4,)"]),
        ((3,), (4, 5), ["(3,)", "(4, 5)"]),
        ((2, 3), (4,), ["(2, 3)", "(4,)"]),
        ((2, 2, 3), (3, 3, 5), ["(2, 2, 3)", "(3, 3, 5)", "(2,)", "(3,)"]),
        ((4, 2, 2, 3), (3, 3, 5), ["(4, 2, 2, 3)", "(3, 3, 5)"]),
    ],
    ids=str,
)
def test_bad_matmul_shapes(a_shape, b_shape, fragments):
    a, b = jnp.ones(a_shape), jnp.ones(b_shape)
    expected = raised_by(jnp.matmul, a, b)
    with pytest.raises(expected) as error:
        jaxmm.matmul(a, b)
    for fragment in fragments:
        assert fragment in str(error.value)
    abstract = (
        jax.ShapeDtypeStruct(a_shape, jnp.float32),
        jax.ShapeDtypeStruct(b_shape, jnp.float32),
    )
    with pytest.raises(expected):
        jax.eval_shape(jaxmm.matmul, *abstract)


@pytest.mark.parametrize("bad", ["abc", [1.0, 2.0], None, {"a": 1}], ids=repr)
def test_non_array_inputs(bad):
    good = jnp.ones((2, 2))
    for ours, theirs in [
        (jaxmm.matmul, jnp.matmul),
        (
            lambda a, b: jaxmm.dot_general(a, b, (((0,), (0,)), ((), ()))),
            lambda a, b: lax.dot_general(a, b, (((0,), (0,)), ((), ()))),
        ),
    ]:
        for args in [(bad, good), (good, bad)]:
            expected = raised_by(theirs, *args)
            with pytest.raises(expected, match=type(bad).__name__):
                ours(*args)


@pytest.mark.parametrize(
    "dimension_numbers",
    [((1,), (0,)), "ij", ((("a",), (0,)), ((), ())), (((1,), (0,)), ((), ()), ())],
    ids=str,
)
def test_malformed_dimension_numbers(dimension_numbers):
    lhs, rhs = jnp.ones((2, 3)), jnp.ones((3, 4))
    expected = raised_by(lax.dot_general, lhs, rhs, dimension_numbers)
    with pytest.raises(expected):
        jaxmm.dot_general(lhs, rhs, dimension_numbers)


def test_gradient_never_has_a_wrong_shape():
    """The shapes the rules see are validated ones: any accepted call yields cotangents of the
    primals' shapes (the property tests draw many more)."""
    a, b = jnp.ones((1, 3, 4, 5)), jnp.ones((2, 1, 5, 6))
    da, db = jax.grad(lambda a, b: jaxmm.matmul(a, b).sum(), argnums=(0, 1))(a, b)
    assert (da.shape, db.shape) == (a.shape, b.shape)
    np.testing.assert_array_equal(db, jax.grad(lambda b: jnp.matmul(a, b).sum())(b))


def test_missing_dimension_numbers():
    # lax.dot_general happens to accept None; jaxmm asks for explicit dimension numbers.
    with pytest.raises(TypeError, match="requires dimension_numbers"):
        jaxmm.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)), None)


@pytest.mark.parametrize("name", ["dot_general", "matmul", "einsum", "dot"])
def test_a_reduction_order_is_refused_before_any_work(name):
    # JAX 0.12.1's reduction_order fixes one contraction's summation order; jaxmm's backward
    # products contract other axes, so it takes only None (and says so).
    a, b = jnp.ones((3, 4)), jnp.ones((4, 2))
    call = {
        "dot_general": lambda **kw: jaxmm.dot_general(a, b, (((1,), (0,)), ((), ())), **kw),
        "matmul": lambda **kw: jaxmm.matmul(a, b, **kw),
        "einsum": lambda **kw: jaxmm.einsum("ij,jk->ik", a, b, **kw),
        "dot": lambda **kw: jaxmm.dot(a, b, **kw),
    }[name]
    assert call(reduction_order=None).shape == (3, 2)
    with pytest.raises(NotImplementedError, match="reduction_order"):
        call(reduction_order="linear")
