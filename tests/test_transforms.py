"""Under JAX's transformations jaxmm gives the numbers JAX gives for jnp.matmul / dot_general."""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference import (
    assert_close,
    assert_same_derivatives,
    assert_same_vjp,
    operands,
    random_array,
    sin_loss,
)

import jaxmm

BATCHED_DN = (((2,), (1,)), ((0,), (0,)))


def test_eager_vjp_matches_reference():
    a, b = operands()
    assert_same_vjp(jaxmm.matmul, jnp.matmul, a, b, jit=False)


def test_jit():
    a, b = operands()
    assert_close(jax.jit(jaxmm.matmul)(a, b), jnp.matmul(a, b))
    grads = jax.jit(jax.grad(sin_loss(jaxmm.matmul), argnums=(0, 1)))(a, b)
    expected = jax.grad(sin_loss(jnp.matmul), argnums=(0, 1))(a, b)
    jax.tree.map(assert_close, grads, expected)


@pytest.mark.parametrize(
    "in_axes", [(0, 0), (0, None), (None, 0), (1, 0), (2, 1), (None, 2), (1, None)], ids=str
)
def test_vmap_every_in_axes(in_axes):
    rng = np.random.default_rng(1)
    base_a, base_b, n = (3, 4), (4, 5), 6

    def batched(shape, axis):
        return random_array(
            rng, shape if axis is None else shape[:axis] + (n,) + shape[axis:], jnp.float32
        )

    a, b = batched(base_a, in_axes[0]), batched(base_b, in_axes[1])
    assert_same_vjp(
        jax.vmap(jaxmm.matmul, in_axes=in_axes), jax.vmap(jnp.matmul, in_axes=in_axes), a, b
    )
    dg = lambda fn: jax.vmap(lambda l, r: fn(l, r, (((1,), (0,)), ((), ()))), in_axes=in_axes)
    assert_same_vjp(dg(jaxmm.dot_general), dg(lax.dot_general), a, b)


def test_nested_vmap():
    a, b = operands(2, (2, 3, 5, 4), (3, 4, 6))
    nest = lambda fn: jax.vmap(jax.vmap(fn, in_axes=(0, 0)), in_axes=(0, None))
    assert_same_vjp(nest(jaxmm.matmul), nest(jnp.matmul), a, b)


def test_vmap_of_grad_gives_per_example_gradients():
    x, w = operands(3, (7, 4), (4, 5))
    per_example = lambda mm: jax.vmap(jax.grad(lambda w, x: sin_loss(mm)(x, w)), in_axes=(None, 0))
    assert_close(per_example(jaxmm.matmul)(w, x), per_example(jnp.matmul)(w, x))


@pytest.mark.parametrize(
    "transform",
    [
        lambda mm: jax.grad(sin_loss(mm), argnums=(0, 1)),
        lambda mm: jax.value_and_grad(sin_loss(mm), argnums=(0, 1)),
        lambda mm: jax.jacrev(lambda a, b: jnp.sin(mm(a, b)), argnums=(0, 1)),
    ],
    ids=["grad", "value_and_grad", "jacrev"],
)
def test_reverse_mode_transforms(transform):
    a, b = operands(4, (2, 3, 4), (4, 5))
    jax.tree.map(assert_close, transform(jaxmm.matmul)(a, b), transform(jnp.matmul)(a, b))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_hessian(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        a, b = operands(5, (3, 4), (4, 2), dtype)
        ours = jax.hessian(sin_loss(jaxmm.matmul), argnums=(0, 1))(a, b)
        theirs = jax.hessian(sin_loss(jnp.matmul), argnums=(0, 1))(a, b)
        jax.tree.map(assert_close, ours, theirs)
        dn = (((1,), (0,)), ((), ()))
        ours = jax.hessian(lambda l, r: jnp.sum(jnp.sin(jaxmm.dot_general(l, r, dn))))(a, b)
        theirs = jax.hessian(lambda l, r: jnp.sum(jnp.sin(lax.dot_general(l, r, dn))))(a, b)
        assert_close(ours, theirs)


def test_grad_of_grad():
    a, b = operands(6)

    def second(mm):
        inner = jax.grad(sin_loss(mm), argnums=1)
        return jax.grad(lambda a, b: jnp.sum(inner(a, b) ** 2), argnums=(0, 1))

    jax.tree.map(assert_close, second(jaxmm.matmul)(a, b), second(jnp.matmul)(a, b))


@pytest.mark.parametrize(
    "policy",
    [
        None,
        jax.checkpoint_policies.nothing_saveable,
        jax.checkpoint_policies.everything_saveable,
        jax.checkpoint_policies.dots_saveable,
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    ],
    ids=lambda p: getattr(p, "__name__", str(p)),
)
def test_checkpoint(policy):
    a, b = operands(7, (3, 4), (4, 4))

    def two_layers(mm):
        return jax.checkpoint(lambda a, b: mm(jnp.tanh(mm(a, b)), b), policy=policy)

    assert_same_vjp(two_layers(jaxmm.matmul), two_layers(jnp.matmul), a, b, jit=False)
    assert_same_vjp(two_layers(jaxmm.matmul), two_layers(jnp.matmul), a, b)


def test_scan(mechanism):
    """A recurrence under lax.scan: reverse mode and forward mode, for both mechanisms (the
    second value of each step, h's sum, is dropped: its cotangent is a symbolic zero)."""
    rng = np.random.default_rng(8)
    h0 = random_array(rng, (2, 4), jnp.float32)
    weights = random_array(rng, (5, 4, 4), jnp.float32)

    def rnn(mm):
        def step(h, w):
            h = jnp.tanh(mm(h, w))
            return h, h.sum()

        return lambda h0, ws: lax.scan(step, h0, ws)[0]

    assert_same_derivatives(rnn(mechanism.matmul), rnn(jnp.matmul), h0, weights)


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "linearize"])
def test_forward_mode_of_exact_products_is_jnps(transform):
    a, b = operands()
    da, db = operands(5)
    forward = {
        "jvp": lambda mm: jax.jvp(mm, (a, b), (da, db)),
        "jacfwd": lambda mm: jax.jacfwd(mm, argnums=(0, 1))(a, b),
        "linearize": lambda mm: jax.linearize(mm, a, b)[1](da, db),
    }[transform]
    jax.tree.map(assert_close, forward(jaxmm.matmul), forward(jnp.matmul))


@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
def test_forward_mode_of_narrowed_products_is_refused_with_jaxs_error(transform):
    """Saving narrowed operands takes a ``jax.custom_vjp``, which JAX differentiates in reverse
    mode only."""
    a, b = operands()
    mm = lambda a, b: jaxmm.matmul(a, b, residual_dtype=jnp.bfloat16)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        if transform == "jvp":
            jax.jvp(mm, (a, b), (a, b))
        else:
            jax.jacfwd(mm)(a, b)


@pytest.mark.parametrize("wrt", [(0,), (1,), (0, 1)], ids=str)
def test_gradient_with_respect_to_one_operand(wrt):
    a, b = operands(9, (2, 3, 4), (4, 5))
    for jit in (False, True):
        grad = lambda mm: jax.grad(sin_loss(mm), argnums=wrt)
        if jit:
            grad = lambda mm, grad=grad: jax.jit(grad(mm))
        jax.tree.map(assert_close, grad(jaxmm.matmul)(a, b), grad(jnp.matmul)(a, b))


def test_unused_output_gives_zero_gradients():
    a, b = operands()
    grads = jax.grad(lambda a, b: jnp.sum(a) + 0 * jnp.sum(jaxmm.matmul(a, b)[:0]), argnums=(0, 1))(
        a, b
    )
    assert_close(grads[0], jnp.ones_like(a))
    assert_close(grads[1], jnp.zeros_like(b))


def test_vmap_over_all_axis_combinations_of_dot_general():
    """vmap of dot_general with batch/contracting axes everywhere, against lax."""
    rng = np.random.default_rng(10)
    lhs = random_array(rng, (4, 2, 3, 5), jnp.float32)
    rhs = random_array(rng, (2, 5, 4, 6), jnp.float32)
    for lhs_axis, rhs_axis in itertools.product(range(4), range(4)):
        l = jnp.moveaxis(lhs, 0, lhs_axis)
        r = jnp.moveaxis(rhs, 2, rhs_axis)
        fn = lambda dg: jax.vmap(lambda l, r: dg(l, r, BATCHED_DN), in_axes=(lhs_axis, rhs_axis))
        assert_same_vjp(fn(jaxmm.dot_general), fn(lax.dot_general), l, r)


def test_perturbation_patterns_mixed_in_any_order():
    """JAX caches a custom_vjp's forward rule under jit once per pattern of perturbed operands;
    jaxmm's residual structure must not depend on the pattern, or a later trace unflattens one
    pattern's residuals with another's structure (an AssertionError, or a wrong gradient)."""
    a, b = operands(11, (3, 3), (3, 3))
    # residual_dtype=float32 of float32 operands: the custom_vjp, saving the operands exactly.
    mm = jax.jit(partial(jaxmm.matmul, residual_dtype=jnp.float32))
    jax.vjp(mm, a, b)  # eager: both operands, then one
    jax.vjp(lambda a: mm(a, b), a)
    expected = jax.grad(sin_loss(jnp.matmul), argnums=(0, 1))(a, b)
    for argnums in [(0,), (0, 1), (1,), (0, 1), (0,)]:  # traced, in turn
        loss = sin_loss(mm)
        jax.make_jaxpr(jax.grad(loss, argnums=argnums))(a, b)
        for i, g in zip(argnums, jax.jit(jax.grad(loss, argnums=argnums))(a, b)):
            assert_close(g, expected[i], f"d/d operand {i} for argnums {argnums}")
