"""jaxmm.custom_vjp: every product a jax.custom_vjp function with jaxmm's rules, and the fwd/bwd
pair for a user's own custom_vjp. (Its values, dtypes, errors and gradients run through every
table of the suite: it is one of the mechanisms of tests/cases.py.)"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import MECHANISMS
from jax import lax
from reference import (
    assert_close,
    assert_same_vjp,
    custom_vjp_calls,
    operands,
    primitive_names,
    sin_loss,
)

import jaxmm
from jaxmm import custom_vjp
from jaxmm._structure import saved_residuals

# The dot_general family (ragged_dot has its own primitive, linear_cross_entropy and clipped_grad
# their own rules).
PRODUCTS = sorted(jaxmm.custom_vjp.__all__[:-2])  # less the fwd/bwd pair
DN = (((1,), (0,)), ((), ()))
CALLS = {  # name: (call of a module's function, shapes)
    "matmul": (lambda m, a, b: m.matmul(a, b), (2, 3, 4), (4, 5)),
    "dot_general": (lambda m, a, b: m.dot_general(a, b, DN), (3, 4), (4, 5)),
    "einsum": (lambda m, a, b: m.einsum("bij,jk->bik", a, b), (2, 3, 4), (4, 5)),
    "dot": (lambda m, a, b: m.dot(a, b), (3, 4), (4, 5)),
    "tensordot": (lambda m, a, b: m.tensordot(a, b, axes=1), (3, 4), (4, 5)),
    "vdot": (lambda m, a, b: m.vdot(a, b), (3, 4), (3, 4)),
    "inner": (lambda m, a, b: m.inner(a, b), (3, 4), (5, 4)),
    "outer": (lambda m, a, b: m.outer(a, b), (3,), (4,)),
    "matvec": (lambda m, a, b: m.matvec(a, b), (2, 3, 4), (2, 4)),
    "vecmat": (lambda m, a, b: m.vecmat(a, b), (2, 4), (2, 4, 3)),
    "vecdot": (lambda m, a, b: m.vecdot(a, b), (2, 4), (2, 4)),
}


def test_every_namespace_has_jaxmms_products_with_their_signatures():
    assert sorted(CALLS) == PRODUCTS
    others = {"testing", "custom_vjp", "linear_cross_entropy", "clipped_grad", "ragged_dot"}
    assert set(jaxmm.__all__) - set(PRODUCTS) == others | {"ragged_dot_general"}
    for module in MECHANISMS:
        assert set(PRODUCTS) <= set(module.__all__)
        for name in PRODUCTS:
            ours = inspect.signature(getattr(module, name))
            assert ours == inspect.signature(getattr(jaxmm, name)), (module.__name__, name)
    assert set(custom_vjp.__all__) == {*PRODUCTS, "dot_general_fwd", "dot_general_bwd"}


@pytest.mark.parametrize("name", PRODUCTS)
def test_each_product_is_one_custom_vjp_call(name):
    call, a_shape, b_shape = CALLS[name]
    a, b = operands(0, a_shape, b_shape)
    jaxpr = jax.make_jaxpr(lambda a, b: call(custom_vjp, a, b))(a, b).jaxpr
    assert custom_vjp_calls(jaxpr) == 1
    assert "jaxmm_dot_general" not in primitive_names(jaxpr)
    # Its gradient, jitted, is jnp's / lax's (the reference call with the jnp module).
    reference = (lambda a, b: call(jnp, a, b)) if name != "dot_general" else None
    reference = reference or (lambda a, b: lax.dot_general(a, b, DN))
    assert_same_vjp(lambda a, b: call(custom_vjp, a, b), reference, a, b)


def test_forward_mode_raises_jaxs_custom_vjp_error():
    a, b = operands(0, (3, 4), (4, 5))
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(custom_vjp.matmul, (a, b), (a, b))


@pytest.mark.parametrize("transform", ["vmap", "grad of grad", "checkpoint", "scan", "jit"])
def test_transformations_give_jnps_values(transform):
    a, b = operands(1, (2, 3, 4), (4, 5))
    if transform == "vmap":  # the backward rule runs per mapped example; JAX sums dW
        make = lambda mm: jax.vmap(jax.grad(sin_loss(mm), argnums=(0, 1)), (0, None))
    elif transform == "grad of grad":
        make = lambda mm: jax.grad(lambda a, b: jnp.sum(jax.grad(sin_loss(mm))(a, b) ** 2))
    elif transform == "checkpoint":
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        make = lambda mm: jax.grad(jax.checkpoint(sin_loss(mm), policy=policy), argnums=(0, 1))
    elif transform == "scan":
        a, b = operands(1, (3, 4, 4), (2, 4))

        def make(mm):
            def loss(ws, x):
                step = lambda h, w: (jnp.tanh(mm(h, w)), None)
                return jnp.sum(lax.scan(step, x, ws)[0])

            return jax.grad(loss, argnums=(0, 1))
    else:
        make = lambda mm: jax.jit(jax.grad(sin_loss(mm), argnums=(0, 1)))
    jax.tree.map(assert_close, make(custom_vjp.matmul)(a, b), make(jnp.matmul)(a, b))


def test_fwd_bwd_pair_in_a_users_custom_vjp():
    x, w = operands(2, (5, 4), (4, 3))

    @jax.custom_vjp
    def layer(x, w):
        return jnp.tanh(x @ w)

    def layer_fwd(x, w):
        y, residuals = custom_vjp.dot_general_fwd(x, w, DN)
        z = jnp.tanh(y)
        return z, (residuals, z)

    def layer_bwd(saved, dz):
        residuals, z = saved
        return custom_vjp.dot_general_bwd(residuals, dz * (1 - z**2))

    layer.defvjp(layer_fwd, layer_bwd)
    assert_same_vjp(layer, lambda x, w: jnp.tanh(x @ w), x, w)
    # The forward rule's value is lax.dot_general's; the residuals are both operands, or their
    # narrowed copies.
    y, (saved_x, saved_w, _) = custom_vjp.dot_general_fwd(x, w, DN)
    assert_close(y, x @ w)
    assert saved_x is x and saved_w is w
    _, (narrow_x, exact_w, _) = custom_vjp.dot_general_fwd(
        x, w, DN, residual_dtype=(jnp.bfloat16, None)
    )
    assert narrow_x.dtype == jnp.bfloat16 and exact_w.dtype == jnp.float32


def test_bwd_gives_no_cotangent_for_an_integer_operand():
    x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4)
    w = jnp.ones((4, 2), jnp.float32)
    y, residuals = custom_vjp.dot_general_fwd(x, w, DN)
    dx, dw = custom_vjp.dot_general_bwd(residuals, jnp.ones_like(y))
    assert dx is None
    np.testing.assert_array_equal(dw, jnp.asarray(x, jnp.float32).T @ jnp.ones_like(y))


def test_fwd_checks_its_arguments_before_any_work():
    with pytest.raises(TypeError, match="contracting dimension"):
        custom_vjp.dot_general_fwd(jnp.ones((3, 4)), jnp.ones((5, 2)), DN)


def test_scanned_layers_keep_what_jnp_keeps():
    # Under lax.scan (no vmap) the custom_vjp saves what jnp's autodiff saves: the stacked
    # weights "from the argument", never a stacked copy, and the same activations.
    ws, x = operands(3, (3, 8, 8), (4, 8))

    def scanned(mm):
        return lambda ws, x: jnp.sum(lax.scan(lambda h, w: (jnp.tanh(mm(h, w)), None), x, ws)[0])

    ours = saved_residuals(scanned(custom_vjp.matmul), ws, x)
    theirs = saved_residuals(scanned(jnp.matmul), ws, x)
    assert sorted(kind for kind, _ in ours) == sorted(kind for kind, _ in theirs)
    assert ("f32[3,8,8]", "from the argument ws") in ours
