"""``residual_dtype=``: operands saved for the backward pass in a narrower dtype."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from reference import TOLERANCE, random_array, saved_arrays

import jaxmm

DN = (((2,), (1,)), ((0,), (0,)))
# (name, jaxmm function, JAX function, shapes): every public function takes the option.
FUNCTIONS = [
    ("matmul", jaxmm.matmul, jnp.matmul, ((2, 3, 4), (4, 5))),
    (
        "dot_general",
        functools.partial(jaxmm.dot_general, dimension_numbers=DN),
        functools.partial(lax.dot_general, dimension_numbers=DN),
        ((2, 3, 4), (2, 4, 5)),
    ),
    (
        "einsum",
        functools.partial(jaxmm.einsum, "bij,jk->bik"),
        functools.partial(jnp.einsum, "bij,jk->bik"),
        ((2, 3, 4), (4, 5)),
    ),
]


def _round(x, dtype):
    return x.astype(dtype).astype(x.dtype)


@pytest.mark.parametrize("residual_dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_backward_uses_the_rounded_operands_and_forward_is_exact(
    name, ours, theirs, shapes, residual_dtype
):
    """With a loss linear in Y (so dY does not depend on the forward values), each cotangent is
    exactly JAX's cotangent with the *other* operand rounded to ``residual_dtype``."""
    rng = np.random.default_rng(0)
    a, b = (random_array(rng, s, jnp.float32) for s in shapes)
    weights = random_array(rng, theirs(a, b).shape, jnp.float32)
    narrow = functools.partial(ours, residual_dtype=residual_dtype)

    np.testing.assert_array_equal(narrow(a, b), theirs(a, b))
    da, db = jax.grad(lambda a, b: jnp.sum(narrow(a, b) * weights), argnums=(0, 1))(a, b)
    loss = lambda a, b: jnp.sum(theirs(a, b) * weights)
    rtol, atol = TOLERANCE[np.dtype(jnp.float32)]
    np.testing.assert_allclose(da, jax.grad(loss)(a, _round(b, residual_dtype)), rtol, atol)
    np.testing.assert_allclose(db, jax.grad(loss, 1)(_round(a, residual_dtype), b), rtol, atol)
    # ... which is not the exact gradient: the option does change what is saved.
    assert not np.allclose(da, jax.grad(loss)(a, b), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_residuals_are_saved_narrow(name, ours, theirs, shapes):
    a, b = jnp.ones(shapes[0]), jnp.ones(shapes[1])
    _, vjp = jax.vjp(functools.partial(ours, residual_dtype=jnp.bfloat16), a, b)
    saved = saved_arrays(vjp)
    assert [x.dtype for x in saved] == [jnp.bfloat16, jnp.bfloat16]
    _, vjp = jax.vjp(ours, a, b)
    assert [x.dtype for x in saved_arrays(vjp)] == [jnp.float32, jnp.float32]


@pytest.mark.parametrize(
    "a_dtype, b_dtype, residual_dtype, saved",
    [
        # Only real floating operands wider than residual_dtype are narrowed.
        (jnp.bfloat16, jnp.float32, jnp.float32, (jnp.bfloat16, jnp.float32)),
        (jnp.float16, jnp.float32, jnp.bfloat16, (jnp.float16, jnp.bfloat16)),
        (jnp.complex64, jnp.float32, jnp.bfloat16, (jnp.complex64, jnp.bfloat16)),
        # An integer operand has no cotangent, so only it is saved (for the other one).
        (jnp.int8, jnp.float32, jnp.bfloat16, (jnp.int8,)),
    ],
    ids=str,
)
def test_which_operands_are_narrowed(a_dtype, b_dtype, residual_dtype, saved):
    rng = np.random.default_rng(2)
    a, b = random_array(rng, (3, 4), a_dtype), random_array(rng, (4, 5), b_dtype)
    mm = functools.partial(jaxmm.matmul, residual_dtype=residual_dtype)
    _, vjp = jax.vjp(mm, a, b)
    assert tuple(x.dtype for x in saved_arrays(vjp)) == saved
    # Cotangent dtypes are still the operands' own, and they match JAX where nothing was rounded.
    out, vjp = jax.vjp(mm, a, b)
    grads = vjp(jnp.ones_like(out))
    expected = jax.vjp(jnp.matmul, a, b)[1](jnp.ones_like(out))
    assert [g.dtype for g in grads] == [g.dtype for g in expected]


def test_float64_saved_as_float32():
    with jax.enable_x64(True):
        a, b = jnp.ones((3, 4), jnp.float64), jnp.ones((4, 5), jnp.float64)
        _, vjp = jax.vjp(functools.partial(jaxmm.matmul, residual_dtype=jnp.float32), a, b)
        assert [x.dtype for x in saved_arrays(vjp)] == [jnp.float32, jnp.float32]


@pytest.mark.parametrize("bad", [jnp.int8, jnp.complex64, "bool"])
@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_a_non_real_floating_residual_dtype_is_a_type_error(name, ours, theirs, shapes, bad):
    a, b = jnp.ones(shapes[0]), jnp.ones(shapes[1])
    with pytest.raises(TypeError, match="residual_dtype must be a real floating-point dtype"):
        jax.eval_shape(functools.partial(ours, residual_dtype=bad), a, b)


def test_with_jit_vmap_remat_and_hessian():
    rng = np.random.default_rng(3)
    a, b = random_array(rng, (3, 4, 5), jnp.float32), random_array(rng, (5, 2), jnp.float32)
    mm = functools.partial(jaxmm.matmul, residual_dtype=jnp.bfloat16)
    loss = lambda mm: lambda a, b: jnp.sum(jnp.tanh(jax.vmap(mm, (0, None))(a, b)))
    ours = jax.jit(jax.grad(jax.checkpoint(loss(mm)), argnums=(0, 1)))(a, b)
    theirs = jax.grad(loss(jnp.matmul), argnums=(0, 1))(a, b)
    for x, y in zip(ours, theirs):
        np.testing.assert_allclose(x, y, rtol=2e-2, atol=2e-2)  # bf16 rounding of the operands
    hessian = jax.hessian(loss(mm))(a, b)
    assert hessian.shape == (3, 4, 5, 3, 4, 5)
    np.testing.assert_allclose(hessian, jax.hessian(loss(jnp.matmul))(a, b), rtol=0.05, atol=0.05)


def test_flax_linear_with_bf16_residuals():
    x = jax.random.normal(jax.random.key(0), (16, 8))
    dot = functools.partial(jaxmm.dot_general, residual_dtype=jnp.bfloat16)
    ours = nnx.Linear(8, 4, dot_general=dot, rngs=nnx.Rngs(0))
    theirs = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    loss = lambda model: jnp.sum(jnp.sin(model(x)))
    np.testing.assert_array_equal(ours(x), theirs(x))
    g_ours, g_theirs = nnx.grad(loss)(ours), nnx.grad(loss)(theirs)
    for p, q in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        np.testing.assert_allclose(p, q, rtol=2e-2, atol=2e-2)
