"""jaxmm.experimental under every JAX transformation, forward mode included, against the same
transformation of jnp.matmul / lax.dot_general / jnp.einsum."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import EXPERIMENTAL_MISSING, experimental
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from reference import (
    assert_close,
    assert_same_derivatives,
    assert_same_vjp,
    operands,
    primitive_names,
    random_array,
    sin_loss,
    x64_context,
)

import jaxmm
from jaxmm.testing import check_jvp

if experimental is None:  # JAX without hijax primitives: tests/test_experimental_import.py
    pytest.skip(EXPERIMENTAL_MISSING, allow_module_level=True)

from jaxmm._primitive import DotGeneral  # noqa: E402

# The case tables (shapes, dtypes, mixed and preferred dtypes, errors) run for both mechanisms in
# tests/test_matmul.py, test_dot_general.py, test_einsum.py and test_products.py, in reverse and
# forward mode; this module tests what is the primitive's own.


def test_precision_reaches_every_product():
    a, b = operands(6, (3, 8), (8, 5))
    mm = lambda a, b: experimental.matmul(a, b, precision="highest")  # noqa: E731
    assert_same_derivatives(mm, lambda a, b: jnp.matmul(a, b, precision="highest"), a, b)
    jaxpr = jax.make_jaxpr(lambda a, b: jax.jvp(mm, (a, b), (a, b)))(a, b)
    products = _jaxmm_products(jaxpr.jaxpr)
    assert len(products) == 2  # the two tangent products; the primal is a lax dot_general
    assert all(p.options.precision == "highest" for p in products)
    (primal,) = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert primal.params["precision"] == (lax.Precision.HIGHEST,) * 2


# Every transformation.


def _equations(jaxpr):
    """Every equation of a jaxpr, nested jaxprs included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def _jaxmm_products(jaxpr) -> list[DotGeneral]:
    """jaxmm's primitive, wherever it is in a jaxpr."""
    return [
        e.params["_prim"]
        for e in _equations(jaxpr)
        if isinstance(e.params.get("_prim"), DotGeneral)
    ]


def _products(jaxpr) -> int:
    """How many products a jaxpr computes: lax dot_generals and jaxmm's primitive."""
    lax_products = [e for e in _equations(jaxpr) if e.primitive.name == "dot_general"]
    return len(lax_products) + len(_jaxmm_products(jaxpr))


def test_default_functions_and_experimental_are_different_primitives():
    a, b = operands()
    names = primitive_names(jax.make_jaxpr(jaxmm.matmul)(a, b).jaxpr)
    assert "jaxmm_dot_general" in names
    jaxpr = jax.make_jaxpr(experimental.matmul)(a, b).jaxpr
    assert "custom_vjp_call" not in primitive_names(jaxpr)
    assert len(_jaxmm_products(jaxpr)) == 1


def test_signatures_are_jaxmms():
    for name in experimental.__all__:
        ours = inspect.signature(getattr(experimental, name))
        assert ours == inspect.signature(getattr(jaxmm, name)), name


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_jit_and_eager(jit):
    a, b = operands(7, (2, 3, 4), (4, 5))
    wrap = jax.jit if jit else (lambda f: f)
    assert_close(wrap(experimental.matmul)(a, b), jnp.matmul(a, b))
    grads = wrap(jax.grad(sin_loss(experimental.matmul), argnums=(0, 1)))(a, b)
    jax.tree.map(assert_close, grads, jax.grad(sin_loss(jnp.matmul), argnums=(0, 1))(a, b))
    tangents = operands(8, (2, 3, 4), (4, 5))
    ours = wrap(lambda p, t: jax.jvp(experimental.matmul, p, t))((a, b), tangents)
    jax.tree.map(assert_close, ours, jax.jvp(jnp.matmul, (a, b), tangents))


TRANSFORMS = {
    "grad": lambda mm: jax.grad(sin_loss(mm), argnums=(0, 1)),
    "value_and_grad": lambda mm: jax.value_and_grad(sin_loss(mm), argnums=(0, 1)),
    "jacrev": lambda mm: jax.jacrev(lambda a, b: jnp.sin(mm(a, b)), argnums=(0, 1)),
    "jacfwd": lambda mm: jax.jacfwd(lambda a, b: jnp.sin(mm(a, b)), argnums=(0, 1)),
    "hessian": lambda mm: jax.hessian(sin_loss(mm), argnums=(0, 1)),
    "jacrev(jacfwd)": lambda mm: jax.jacrev(jax.jacfwd(sin_loss(mm), argnums=1), argnums=(0, 1)),
    "jacfwd(jacfwd)": lambda mm: jax.jacfwd(jax.jacfwd(sin_loss(mm), argnums=1), argnums=(0, 1)),
    "grad(grad)": lambda mm: jax.grad(
        lambda a, b: jnp.sum(jax.grad(sin_loss(mm), argnums=1)(a, b) ** 2), argnums=(0, 1)
    ),
    # Gauss-Newton / NTK style: a JVP inside a loss, differentiated in reverse mode.
    "grad of jvp": lambda mm: jax.grad(
        lambda a, b: jnp.sum(jnp.cos(jax.jvp(lambda a: jnp.sin(mm(a, b)), (a,), (a * a,))[1])),
        argnums=(0, 1),
    ),
    "grad of jvp, primal used": lambda mm: jax.grad(
        lambda a, b: jnp.sum(jnp.prod(jnp.stack(jax.jvp(mm, (a, b), (b[:, :3].T, a.T))), 0)),
        argnums=(0, 1),
    ),
    "linearize": lambda mm: (
        lambda a, b: jax.linearize(lambda a, b: jnp.sin(mm(a, b)), a, b)[1](jnp.cos(a), b * b)
    ),
    "linearize, one operand": lambda mm: lambda a, b: jax.linearize(lambda b: mm(a, b), b)[1](b),
    "transpose of linearize": lambda mm: (
        lambda a, b: jax.linear_transpose(jax.linearize(mm, a, b)[1], a, b)(jnp.sin(mm(a, b)))
    ),
    "jvp of jvp": lambda mm: (
        lambda a, b: jax.jvp(lambda a: jax.jvp(mm, (a, b), (jnp.cos(a), b))[1], (a,), (a * a,))
    ),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_transformations(transform):
    a, b = operands(9, (3, 4), (4, 3))
    ours = jax.jit(TRANSFORMS[transform](experimental.matmul))(a, b)
    jax.tree.map(assert_close, ours, jax.jit(TRANSFORMS[transform](jnp.matmul))(a, b))


@pytest.mark.parametrize("dtype", [jnp.float64])
def test_hessian_of_dot_general(dtype):
    dn = (((2,), (1,)), ((0,), (0,)))
    with x64_context(dtype):
        a, b = operands(10, (2, 3, 4), (2, 4, 2), dtype)
        hessian = lambda dg: jax.hessian(  # noqa: E731
            lambda l, r: jnp.sum(jnp.sin(dg(l, r, dn))), argnums=(0, 1)
        )
        ours, theirs = (
            jax.jit(hessian(dg))(a, b) for dg in (experimental.dot_general, lax.dot_general)
        )
        jax.tree.map(assert_close, ours, theirs)


VMAP_IN_AXES = [(0, 0), (0, None), (None, 0), (1, 0), (2, 1), (None, 2), (1, None)]


@pytest.mark.parametrize("in_axes", VMAP_IN_AXES, ids=str)
def test_vmap_every_in_axes(in_axes):
    rng = np.random.default_rng(11)
    base_a, base_b, n = (3, 4), (4, 5), 6

    def batched(shape, axis):
        shape = shape if axis is None else shape[:axis] + (n,) + shape[axis:]
        return random_array(rng, shape, jnp.float32)

    a, b = batched(base_a, in_axes[0]), batched(base_b, in_axes[1])
    vmapped = lambda mm: jax.vmap(mm, in_axes=in_axes)  # noqa: E731
    assert_same_derivatives(vmapped(experimental.matmul), vmapped(jnp.matmul), a, b)
    dn = (((1,), (0,)), ((), ()))
    dg = lambda fn: jax.vmap(lambda l, r: fn(l, r, dn), in_axes=in_axes)  # noqa: E731
    assert_same_derivatives(dg(experimental.dot_general), dg(lax.dot_general), a, b)


def test_vmap_of_dot_general_with_every_axis_kind():
    rng = np.random.default_rng(12)
    dn = (((2,), (1,)), ((0,), (0,)))
    lhs, rhs = (
        random_array(rng, (4, 2, 3, 5), jnp.float32),
        random_array(rng, (2, 5, 4, 6), jnp.float32),
    )
    for lhs_axis, rhs_axis in [(3, 0), (1, 3)]:
        l, r = jnp.moveaxis(lhs, 0, lhs_axis), jnp.moveaxis(rhs, 2, rhs_axis)
        fn = lambda dg: jax.vmap(lambda l, r: dg(l, r, dn), in_axes=(lhs_axis, rhs_axis))  # noqa: E731
        assert_same_derivatives(fn(experimental.dot_general), fn(lax.dot_general), l, r)


def test_nested_vmap():
    a, b = operands(13, (2, 3, 5, 4), (3, 4, 6))
    nest = lambda mm: jax.vmap(jax.vmap(mm, in_axes=(0, 0)), in_axes=(0, None))  # noqa: E731
    assert_same_derivatives(nest(experimental.matmul), nest(jnp.matmul), a, b)


def test_vmap_of_jvp_and_jvp_of_vmap():
    a, b = operands(14, (3, 4), (4, 5))
    rng = np.random.default_rng(15)
    tangents_a = random_array(rng, (7, 3, 4), jnp.float32)  # a batch of directions
    vmap_of_jvp = lambda mm: jax.vmap(lambda t: jax.jvp(mm, (a, b), (t, b)))  # noqa: E731
    jax.tree.map(
        assert_close,
        vmap_of_jvp(experimental.matmul)(tangents_a),
        vmap_of_jvp(jnp.matmul)(tangents_a),
    )
    batch_a = random_array(rng, (7, 3, 4), jnp.float32)
    jvp_of_vmap = lambda mm: jax.jvp(jax.vmap(mm, in_axes=(0, None)), (batch_a, b), (tangents_a, b))  # noqa: E731
    jax.tree.map(assert_close, jvp_of_vmap(experimental.matmul), jvp_of_vmap(jnp.matmul))


def test_vmap_of_grad_gives_per_example_gradients():
    x, w = operands(16, (7, 4), (4, 5))
    per_example = lambda mm: jax.vmap(jax.grad(lambda w, x: sin_loss(mm)(x, w)), in_axes=(None, 0))  # noqa: E731
    assert_close(per_example(experimental.matmul)(w, x), per_example(jnp.matmul)(w, x))


POLICIES = [
    None,
    jax.checkpoint_policies.nothing_saveable,
    jax.checkpoint_policies.everything_saveable,
    jax.checkpoint_policies.dots_saveable,
    jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    jax.checkpoint_policies.save_only_these_names("hidden"),
    jax.checkpoint_policies.save_only_these_names("jaxmm_lhs", "jaxmm_rhs"),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: getattr(p, "__name__", str(p)))
def test_checkpoint(policy):
    a, b = operands(17, (2, 3, 4), (4, 4))

    def two_layers(mm):
        def body(a, b):
            hidden = checkpoint_name(jnp.tanh(mm(a, b)), "hidden")
            return mm(hidden, b)

        return jax.checkpoint(body, policy=policy)

    assert_same_derivatives(two_layers(experimental.matmul), two_layers(jnp.matmul), a, b)
    if policy is jax.checkpoint_policies.dots_saveable:  # second order through a checkpoint
        second = lambda mm: jax.jit(jax.hessian(lambda a, b: jnp.sum(two_layers(mm)(a, b)), 1))  # noqa: E731
        assert_close(second(experimental.matmul)(a, b), second(jnp.matmul)(a, b))


@pytest.mark.parametrize("wrt", [(0,), (1,), (0, 1)], ids=str)
def test_one_operand_computes_one_product_for_it(wrt):
    """A gradient computes one backward product per differentiated operand, a JVP one tangent
    product per nonzero tangent (plus the forward product in both)."""
    a, b = operands(19, (2, 3, 4), (4, 5))

    def of(mm):  # mm as a function of the operands in wrt only
        def f(*differentiated):
            operands = [a, b]
            for i, x in zip(wrt, differentiated):
                operands[i] = x
            return mm(*operands)

        return f

    primals = tuple((a, b)[i] for i in wrt)
    argnums = tuple(range(len(wrt)))
    grad = lambda mm: jax.grad(lambda *x: jnp.sum(jnp.sin(of(mm)(*x))), argnums)  # noqa: E731
    jax.tree.map(
        assert_close, jax.jit(grad(experimental.matmul))(*primals), grad(jnp.matmul)(*primals)
    )
    assert _products(jax.make_jaxpr(grad(experimental.matmul))(*primals).jaxpr) == 1 + len(wrt)
    jvp = lambda mm: lambda *x: jax.jvp(of(mm), x, x)  # noqa: E731
    assert _products(jax.make_jaxpr(jvp(experimental.matmul))(*primals).jaxpr) == 1 + len(wrt)
    check_jvp(of(experimental.matmul), of(jnp.matmul), *primals)


def test_unused_output_gives_zero_gradients_and_tangents():
    a, b = operands()
    f = lambda a, b: jnp.sum(a) + 0 * jnp.sum(experimental.matmul(a, b)[:0])  # noqa: E731
    grads = jax.grad(f, argnums=(0, 1))(a, b)
    assert_close(grads[0], jnp.ones_like(a))
    assert_close(grads[1], jnp.zeros_like(b))
    _, tangent = jax.jvp(lambda b: experimental.matmul(a, b), (b,), (jnp.zeros_like(b),))
    assert_close(tangent, jnp.zeros((3, 5)))


def test_residual_dtype_rounds_what_the_derivative_products_read_like_jaxmm():
    """Gradients equal jaxmm's with the same residual_dtype, whether JAX differentiates the
    primitive directly or through its JVP (inside jax.checkpoint); forward mode reads the same
    rounded operands: dY = dA·round(B) + round(A)·dB, with the primal exact."""
    a, b = operands(20, (2, 3, 8), (8, 5))
    kwargs = dict(residual_dtype=jnp.bfloat16)
    ours = lambda a, b: experimental.matmul(a, b, **kwargs)  # noqa: E731
    theirs = lambda a, b: jaxmm.matmul(a, b, **kwargs)  # noqa: E731
    assert_same_vjp(ours, theirs, a, b)
    checkpointed = lambda mm: jax.checkpoint(lambda a, b: jnp.sin(mm(a, b)))  # noqa: E731
    assert_same_vjp(checkpointed(ours), checkpointed(theirs), a, b)
    rounded = lambda x: x.astype(jnp.bfloat16).astype(x.dtype)  # noqa: E731
    a_dot, b_dot = operands(21, (2, 3, 8), (8, 5))
    expected = jnp.matmul(a, b), jnp.matmul(a_dot, rounded(b)) + jnp.matmul(rounded(a), b_dot)
    jax.tree.map(assert_close, jax.jvp(ours, (a, b), (a_dot, b_dot)), expected)
    y, linear = jax.linearize(ours, a, b)
    jax.tree.map(assert_close, (y, linear(a_dot, b_dot)), expected)
    # Without it, forward mode is exact.
    check_jvp(experimental.matmul, jnp.matmul, a, b)


@pytest.mark.parametrize(
    "residual_dtype, residual_scaling",
    [(jnp.float16, "tensor"), (jnp.float8_e4m3fn, "channel")],
    ids=str,
)
def test_scaled_residuals_give_jaxmms_gradients(residual_dtype, residual_scaling):
    """Scaled narrow residuals (a pair of arrays per operand), per tensor and per channel: the
    gradients equal jaxmm's, directly and through jax.checkpoint and jax.linearize."""
    a, b = operands(24, (2, 3, 8), (8, 5))
    kwargs = dict(residual_dtype=residual_dtype, residual_scaling=residual_scaling)
    ours = lambda a, b: experimental.matmul(100 * a, b, **kwargs)  # noqa: E731
    theirs = lambda a, b: jaxmm.matmul(100 * a, b, **kwargs)  # noqa: E731
    assert_same_vjp(ours, theirs, a, b)
    checkpointed = lambda mm: jax.checkpoint(lambda a, b: jnp.sin(mm(a, b)))  # noqa: E731
    assert_same_vjp(checkpointed(ours), checkpointed(theirs), a, b)
    y = ours(a, b)
    transposed = jax.linear_transpose(jax.linearize(ours, a, b)[1], a, b)(jnp.cos(y))
    jax.tree.map(assert_close, transposed, jax.vjp(theirs, a, b)[1](jnp.cos(y)))


# Flax layers.


@pytest.mark.parametrize("layer", ["Linear", "Einsum"])
def test_flax_nnx_layers(layer):
    from flax import nnx

    x = jnp.asarray(np.random.default_rng(21).standard_normal((4, 3, 6)), jnp.float32)
    if layer == "Linear":
        ours = nnx.Linear(6, 5, dot_general=experimental.dot_general, rngs=nnx.Rngs(0))
        theirs = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    else:
        make = lambda **kw: nnx.Einsum("bij,jk->bik", (6, 5), (5,), rngs=nnx.Rngs(0), **kw)  # noqa: E731
        ours, theirs = make(einsum_op=experimental.einsum), make()
    assert _jaxmm_products(jax.make_jaxpr(lambda x: ours(x))(x).jaxpr)

    def loss(model):
        return jnp.sum(jnp.sin(model(x)))

    (value, grads), (expected_value, expected_grads) = (
        nnx.value_and_grad(loss)(model) for model in (ours, theirs)
    )
    assert_close(value, expected_value)
    jax.tree.map(assert_close, nnx.state(grads), nnx.state(expected_grads))
    # Forward mode through the layer: a JVP with respect to the input.
    jvp = lambda model: jax.jvp(model, (x,), (jnp.cos(x),))  # noqa: E731
    jax.tree.map(assert_close, jvp(ours), jvp(theirs))


# Errors: identical to jaxmm's (which are JAX's types, checked in test_errors.py).


def _raised(fn, *args):
    try:
        fn(*args)
    except Exception as error:  # noqa: BLE001 - the exception itself is compared
        return type(error), str(error)
    raise AssertionError("accepted")


@pytest.mark.parametrize(
    "name, args",
    [
        ("matmul", (jnp.ones((2, 3)), jnp.ones((4, 5)))),
        ("matmul", (jnp.ones(()), jnp.ones((3,)))),
        ("matmul", ([1.0, 2.0], jnp.ones((2,)))),
        ("dot_general", (jnp.ones((2, 3)), jnp.ones((4, 5)), (((1,), (0,)), ((), ())))),
        ("dot_general", (jnp.ones((2, 3)), jnp.ones((3, 4)), (((2,), (0,)), ((), ())))),
        ("dot_general", (jnp.ones((2, 3)), jnp.ones((3, 4)), None)),
        ("einsum", ("ij,jk->ik", jnp.ones((2, 3)), jnp.ones((4, 5)))),
        ("einsum", ("ij,jk->iz", jnp.ones((2, 3)), jnp.ones((3, 4)))),
    ],
    ids=str,
)
def test_errors_are_jaxmms(name, args):
    assert _raised(getattr(experimental, name), *args) == _raised(getattr(jaxmm, name), *args)


def test_bad_residual_options_are_refused_like_jaxmm():
    a, b = operands()
    for kwargs in (dict(residual_dtype=jnp.int8), dict(residual_scaling="row")):
        expected = _raised(lambda: jaxmm.matmul(a, b, **kwargs))
        assert _raised(lambda: experimental.matmul(a, b, **kwargs)) == expected


def test_forward_mode_doc_runs():
    import re
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "forward_mode.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/forward_mode.md", "exec"), {})
