"""The product family (dot, tensordot, vdot, inner, outer, matvec, vecmat, vecdot) against jax.vjp
of the jnp function of the same name: values, cotangents, shapes, dtypes and errors."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import ALL_DTYPES, DISTINCT, NAMES, PRODUCT_CASES
from reference import assert_close, assert_same_derivatives, raised_by, random_array, x64_context

import jaxmm
from jaxmm.testing import check_structure, check_vjp


def _fns(module, name, kwargs):
    """``module``'s function ``name`` (jaxmm's or jaxmm.experimental's) and jnp's, with
    ``kwargs``."""
    ours, theirs = getattr(module, name), getattr(jnp, name)
    return (lambda a, b: ours(a, b, **kwargs)), (lambda a, b: theirs(a, b, **kwargs))


def _check(module, name, a_shape, b_shape, kwargs, a_dtype, b_dtype=None, seed=0):
    rng = np.random.default_rng(seed)
    b_dtype = a_dtype if b_dtype is None else b_dtype
    with x64_context(a_dtype, b_dtype), jax.numpy_rank_promotion("allow"):
        a, b = random_array(rng, a_shape, a_dtype), random_array(rng, b_shape, b_dtype)
        assert_same_derivatives(*_fns(module, name, kwargs), a, b)


@pytest.mark.parametrize("name, a_shape, b_shape, kwargs", PRODUCT_CASES, ids=str)
def test_product_matches_jnp(mechanism, name, a_shape, b_shape, kwargs):
    _check(
        mechanism, name, a_shape, b_shape, kwargs, jnp.complex64
    )  # complex: conjugations must be right


# Every dtype on one case per function (the case tables above show the shapes).
ONE_CASE_EACH = [
    next(case for case in PRODUCT_CASES if case[0] == name and case[1]) for name in NAMES
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, a_shape, b_shape, kwargs", ONE_CASE_EACH, ids=lambda c: str(c))
def test_product_every_dtype(mechanism, name, a_shape, b_shape, kwargs, dtype):
    _check(mechanism, name, a_shape, b_shape, kwargs, dtype)


@pytest.mark.parametrize(
    "a_dtype, b_dtype",
    [(jnp.int32, jnp.float32), (jnp.bfloat16, jnp.float32), (jnp.float32, jnp.complex64)],
    ids=str,
)
@pytest.mark.parametrize("name", DISTINCT)
def test_product_promotes_mixed_dtypes_like_jnp(mechanism, name, a_dtype, b_dtype):
    _, a_shape, b_shape, kwargs = ONE_CASE_EACH[NAMES.index(name)]
    _check(mechanism, name, a_shape, b_shape, kwargs, a_dtype, b_dtype, seed=1)


@pytest.mark.parametrize("name", ["dot", "tensordot", "vdot", "inner", "vecdot"])
def test_product_precision_and_preferred_element_type(mechanism, name):
    _, a_shape, b_shape, kwargs = ONE_CASE_EACH[NAMES.index(name)]
    kwargs = {**kwargs, "precision": "highest", "preferred_element_type": jnp.float32}
    _check(mechanism, name, a_shape, b_shape, kwargs, jnp.bfloat16, seed=2)


@pytest.mark.parametrize("name", NAMES)
def test_product_signature_is_jnps_plus_the_residual_options(name):
    ours = dict(inspect.signature(getattr(jaxmm, name)).parameters)
    theirs = inspect.signature(getattr(jnp, name)).parameters
    if "reduction_order" in ours and "reduction_order" not in theirs:  # JAX before 0.12.1
        del ours["reduction_order"]
    extra = ["residual_dtype", "residual_scaling"]
    assert list(ours) == list(theirs) + extra
    for p in theirs.values():
        assert (ours[p.name].kind, ours[p.name].default) == (p.kind, p.default), p.name
    assert all(ours[p].kind == inspect.Parameter.KEYWORD_ONLY for p in extra)


@pytest.mark.parametrize("name", NAMES)
def test_every_product_goes_through_the_custom_rule(name):
    _, a_shape, b_shape, kwargs = ONE_CASE_EACH[NAMES.index(name)]
    ours, _ = _fns(jaxmm, name, kwargs)
    jaxpr = jax.make_jaxpr(ours)(jnp.ones(a_shape), jnp.ones(b_shape))
    assert "jaxmm_dot_general" in str(jaxpr)


@pytest.mark.parametrize("name", NAMES)
def test_product_under_vmap(mechanism, name):
    _, a_shape, b_shape, kwargs = ONE_CASE_EACH[NAMES.index(name)]
    ours, theirs = _fns(mechanism, name, kwargs)
    rng = np.random.default_rng(3)
    a = random_array(rng, (2, *a_shape), jnp.float32)
    b = random_array(rng, (2, *b_shape), jnp.float32)
    assert_same_derivatives(jax.vmap(ours), jax.vmap(theirs), a, b)


@pytest.mark.parametrize("name", DISTINCT)
def test_product_hessian(mechanism, name):
    _, a_shape, b_shape, kwargs = ONE_CASE_EACH[NAMES.index(name)]
    ours, theirs = _fns(mechanism, name, kwargs)
    rng = np.random.default_rng(3)
    a = random_array(rng, a_shape, jnp.float32)
    b = random_array(rng, b_shape, jnp.float32)
    loss = lambda fn: lambda a, b: jnp.sum(jnp.sin(fn(a, b)))
    jax.tree.map(
        assert_close,
        jax.jit(jax.hessian(loss(ours), argnums=(0, 1)))(a, b),
        jax.jit(jax.hessian(loss(theirs), argnums=(0, 1)))(a, b),
    )


STRUCTURE_CASES = [
    ("dot", (16, 32), (32, 8), {}),
    ("tensordot", (4, 8, 16), (16, 8, 4), {"axes": ((1, 2), (1, 0))}),
    ("vdot", (8, 16), (8, 16), {}),
    ("inner", (8, 16), (4, 16), {}),
    ("matvec", (4, 8, 16), (4, 16), {}),
    ("vecmat", (4, 16), (4, 16, 8), {}),
    ("vecdot", (4, 16), (1, 16), {}),
]


@pytest.mark.parametrize("name, a_shape, b_shape, kwargs", STRUCTURE_CASES, ids=str)
def test_compiled_gradient_has_jnps_dots_and_flops(name, a_shape, b_shape, kwargs):
    """The same compiled forward+backward program as jnp's autodiff, dot for dot (outer is left
    out: jnp.outer multiplies, jaxmm.outer is a dot_general with no contracted axis, whose
    cotangents are matrix-vector products)."""
    a, b = jnp.ones(a_shape, jnp.complex64), jnp.ones(b_shape, jnp.complex64)
    check_structure(*_fns(jaxmm, name, kwargs), a, b)


@pytest.mark.parametrize("name", NAMES)
def test_product_eagerly(mechanism, name):
    _, a_shape, b_shape, kwargs = ONE_CASE_EACH[NAMES.index(name)]
    rng = np.random.default_rng(4)
    a, b = random_array(rng, a_shape, jnp.complex64), random_array(rng, b_shape, jnp.complex64)
    check_vjp(*_fns(mechanism, name, kwargs), a, b, modes=("eager",))


def test_residual_dtype_reaches_the_product():
    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
    _, vjp = jax.vjp(lambda a, b: jaxmm.dot(a, b, residual_dtype=jnp.bfloat16), a, b)
    assert {x.dtype for x in jax.tree.leaves(vjp) if x.size} == {jnp.dtype(jnp.bfloat16)}


# (function name, shapes, keyword arguments, fragments the message must name)
BAD = [
    ("dot", (2, 3), (4, 5), {}, ["(2, 3)", "(4, 5)"]),
    ("dot", (3,), (4,), {}, ["(3,)", "(4,)"]),
    ("tensordot", (2, 3), (3, 4), {"axes": 3}, ["axes 3", "(2, 3)"]),
    ("tensordot", (2, 3), (3, 4), {"axes": (5, 0)}, ["axis 5", "dimension 2"]),
    ("tensordot", (2, 3), (3, 4), {"axes": ((1,), (0, 1))}, ["equal length"]),
    ("tensordot", (2, 3), (3, 4), {"axes": "a"}, ["'a'"]),
    ("tensordot", (2, 3), (3, 4), {"axes": (1, (0,))}, ["ints, tuples or lists"]),
    ("tensordot", (2, 3), (4, 4), {"axes": 1}, ["(2, 3)", "(4, 4)"]),
    ("tensordot", (3, 3), (3, 3), {"axes": ((0, 0), (0, 1))}, ["distinct"]),
    ("vdot", (2, 3), (7,), {}, ["(6,)", "(7,)"]),
    ("inner", (2, 3), (4,), {}, ["(2, 3)", "(4,)"]),
    ("matvec", (3,), (3,), {}, ["(3,)"]),
    ("matvec", (2, 3), (), {}, ["()"]),
    ("matvec", (2, 3), (4,), {}, ["3 vs 4", "(2, 3)", "(4,)"]),
    ("matvec", (4, 2, 3), (5, 3), {}, ["(4, 2, 3)", "(5, 3)", "broadcast"]),
    ("vecmat", (3,), (3,), {}, ["(3,)"]),
    ("vecmat", (3,), (4, 2), {}, ["3 vs 4"]),
    ("vecdot", (5, 3), (4,), {}, ["(5, 3)", "(4,)", "axis=-1"]),
    ("vecdot", (5, 3), (5, 3), {"axis": 2}, []),
    ("vecdot", (), (), {}, []),
    ("vecdot", (4, 3), (5, 3), {}, ["(4, 3)", "(5, 3)", "broadcast"]),
]


@pytest.mark.parametrize("name, a_shape, b_shape, kwargs, fragments", BAD, ids=str)
def test_product_refuses_bad_input_like_jnp(mechanism, name, a_shape, b_shape, kwargs, fragments):
    ours, theirs = _fns(mechanism, name, kwargs)
    a, b = jnp.ones(a_shape), jnp.ones(b_shape)
    with jax.numpy_rank_promotion("allow"):
        expected = raised_by(theirs, a, b)
        with pytest.raises(expected) as error:
            ours(a, b)
        # Refused while tracing, from shapes alone.
        with pytest.raises(expected):
            jax.eval_shape(ours, a, b)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.mark.parametrize("name", NAMES)
def test_product_refuses_lists_like_jnp(mechanism, name):
    ours, theirs = _fns(mechanism, name, {"axes": 1} if name == "tensordot" else {})
    expected = raised_by(theirs, [1.0, 2.0], jnp.ones(2))
    with pytest.raises(expected, match="list"):
        ours([1.0, 2.0], jnp.ones(2))


def test_outer_refuses_out_like_jnp(mechanism):
    with pytest.raises(NotImplementedError):
        mechanism.outer(jnp.ones(2), jnp.ones(2), out=jnp.ones((2, 2)))


def test_tensordot_refuses_a_negative_count(mechanism):
    # jnp.tensordot reads axes=-1 as axes=0 (an outer product); jaxmm refuses to guess.
    with pytest.raises(ValueError, match="nonnegative"):
        mechanism.tensordot(jnp.ones((2, 3)), jnp.ones((3, 4)), -1)
