"""``residual_dtype=`` / ``residual_scaling=``: operands saved for the backward pass in a narrower
dtype, scaled by a power of two where that dtype's range is narrower."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from cases import experimental
from flax import nnx
from jax import lax
from reference import random_array, saved_arrays

import jaxmm

NARROW = [jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn, jnp.float8_e5m2]
SCALED = [jnp.float16, jnp.float8_e4m3fn, jnp.float8_e5m2]
# Each dtype's unit roundoff: the largest relative error of one saved entry (_residuals).
UNIT_ROUNDOFF = {np.dtype(d): 2.0 ** -(ml_dtypes.finfo(d).nmant + 1) for d in NARROW}
UNIT_ROUNDOFF[np.dtype(jnp.float32)] = 2.0**-24

DN = (((2,), (1,)), ((0,), (0,)))
# (name, jaxmm function, JAX function, shapes): every public function takes the options.
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
IDS = [f[0] for f in FUNCTIONS]


def saved_value(x, dtype, reduced_axes=None):
    """What the backward pass should read for ``x`` saved in ``dtype``, computed here in NumPy:
    for a dtype with float32's range a plain cast; otherwise ``s · cast(x / s)`` with ``s`` the
    least power of two that brings the largest finite ``|x|`` (over ``reduced_axes``; all axes
    when None) to at most the dtype's largest value (256 for float8_e4m3fn, which has no inf).
    NaN and ±inf stay as they are."""
    x = np.asarray(x, np.float64)
    dtype = np.dtype(dtype)
    if dtype == np.dtype(jnp.bfloat16):
        return x.astype(dtype).astype(np.float64)
    top = 256.0 if dtype == np.dtype(jnp.float8_e4m3fn) else float(ml_dtypes.finfo(dtype).max)
    amax = np.max(np.where(np.isfinite(x), np.abs(x), 0), axis=reduced_axes, keepdims=True)
    scale = np.where(amax > 0, 2.0 ** np.ceil(np.log2(np.where(amax > 0, amax, 1) / top)), 1)
    rounded = (x / scale).astype(dtype).astype(np.float64) * scale
    return np.where(np.isfinite(x), rounded, x)


def _linear_loss_grads(fn, a, b, weights):
    """Cotangents of ``Σ fn(a, b) · weights``: with a loss linear in Y, dY is ``weights`` whatever
    the forward values, so each cotangent depends on the other operand only through its saved
    value."""
    loss = lambda a, b: jnp.sum(fn(a, b) * weights)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)


def _assert_close(actual, expected):
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.max(np.abs(expected)))


@pytest.mark.parametrize("residual_dtype", NARROW, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=IDS)
def test_backward_reads_the_saved_operands_and_forward_is_exact(
    name, ours, theirs, shapes, residual_dtype
):
    """Per tensor, over a spread of magnitudes: each cotangent is JAX's cotangent with the
    *other* operand replaced by its saved value, and the forward result is JAX's, bit for bit."""
    rng = np.random.default_rng(0)
    a, b = (random_array(rng, s, jnp.float32) * 1e3 for s in shapes)
    weights = random_array(rng, theirs(a, b).shape, jnp.float32)
    narrow = functools.partial(ours, residual_dtype=residual_dtype)

    np.testing.assert_array_equal(jax.jit(narrow)(a, b), theirs(a, b))
    da, db = _linear_loss_grads(narrow, a, b, weights)
    saved_a, saved_b = (jnp.asarray(saved_value(x, residual_dtype), jnp.float32) for x in (a, b))
    _assert_close(da, _linear_loss_grads(theirs, a, saved_b, weights)[0])
    _assert_close(db, _linear_loss_grads(theirs, saved_a, b, weights)[1])
    # ... which is not the exact gradient: the option does change what is saved.
    assert not np.allclose(da, _linear_loss_grads(theirs, a, b, weights)[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("residual_dtype", SCALED, ids=lambda d: np.dtype(d).name)
def test_per_channel_scales_run_along_the_kept_axes(residual_dtype):
    """``residual_scaling="channel"``: a scale per batch and contracting index of each saved
    operand, the maximum taken over its free axes (lhs (b, i, c): axis 1; rhs (b, c, j): axis 2).
    Channels are set 1e-12 .. 1e12 apart, which one float16 or fp8 scale cannot cover."""
    rng = np.random.default_rng(1)
    a = random_array(rng, (2, 3, 4), jnp.float32) * 10.0 ** jnp.arange(-12, 12, 6)[None, None, :]
    b = random_array(rng, (2, 4, 5), jnp.float32) * 10.0 ** jnp.arange(12, -12, -6)[None, :, None]
    weights = random_array(rng, (2, 3, 5), jnp.float32)
    ours = functools.partial(
        jaxmm.dot_general,
        dimension_numbers=DN,
        residual_dtype=residual_dtype,
        residual_scaling="channel",
    )
    theirs = functools.partial(lax.dot_general, dimension_numbers=DN)
    da, db = _linear_loss_grads(ours, a, b, weights)
    saved_a = jnp.asarray(saved_value(a, residual_dtype, reduced_axes=1), jnp.float32)
    saved_b = jnp.asarray(saved_value(b, residual_dtype, reduced_axes=2), jnp.float32)
    exact_da, exact_db = _linear_loss_grads(theirs, a, b, weights)
    expected_da = _linear_loss_grads(theirs, a, saved_b, weights)[0]
    expected_db = _linear_loss_grads(theirs, saved_a, b, weights)[1]
    # Every channel of the cotangent is right to its own magnitude.
    for c in range(4):
        _assert_close(da[..., c], expected_da[..., c])
        _assert_close(db[:, c], expected_db[:, c])
        assert np.all(np.isfinite(da[..., c])) and np.all(da[..., c] != 0)
    # Per tensor the small channels are flushed to zero; per channel they are within a few
    # unit roundoffs of the exact ones.
    per_tensor = functools.partial(ours, residual_scaling="tensor")
    assert np.all(_linear_loss_grads(per_tensor, a, b, weights)[0][..., 3] == 0)
    u = UNIT_ROUNDOFF[np.dtype(residual_dtype)]
    for c in range(4):
        error = np.linalg.norm(da[..., c] - exact_da[..., c]) / np.linalg.norm(exact_da[..., c])
        assert error < 10 * u


@pytest.mark.parametrize("scaling", ["tensor", "channel"])
@pytest.mark.parametrize("residual_dtype", SCALED, ids=lambda d: np.dtype(d).name)
def test_large_and_small_operands_neither_overflow_nor_flush(residual_dtype, scaling):
    """The example that a plain cast gets wrong (inf at 1e5, zeros at 1e-8 in float16)."""
    narrow = functools.partial(
        jaxmm.matmul, residual_dtype=residual_dtype, residual_scaling=scaling
    )
    grads_of = lambda mm: jax.jit(jax.grad(lambda x, w: mm(x, w).sum(), argnums=(0, 1)))
    ours, theirs = grads_of(narrow), grads_of(jnp.matmul)
    u = UNIT_ROUNDOFF[np.dtype(residual_dtype)]
    for magnitude in (1e5, 1e-8, 1e30, 1e-30):
        x, w = jnp.full((2, 3), magnitude), jnp.full((3, 4), magnitude)
        for g, e in zip(ours(x, w), theirs(x, w)):
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, e, rtol=u)
        # A plain cast would have lost them.
        plain = x.astype(residual_dtype).astype(jnp.float32)
        assert not np.any(np.isclose(plain, x, rtol=0.5, atol=0))


@pytest.mark.parametrize("scaling", ["tensor", "channel"])
@pytest.mark.parametrize("residual_dtype", NARROW, ids=lambda d: np.dtype(d).name)
def test_nan_inf_and_zeros_propagate_as_in_the_exact_gradient(residual_dtype, scaling):
    rng = np.random.default_rng(4)
    a = np.array(random_array(rng, (4, 6), jnp.float32))
    b = np.array(random_array(rng, (6, 5), jnp.float32))
    a[0, 1], a[1, 2], a[2, 3], a[3] = np.nan, np.inf, -np.inf, 0.0  # row 3 all zeros
    b[1, 0], b[4, 2], b[5, 4], b[:, 3] = np.inf, -np.inf, np.nan, 0.0
    weights = random_array(rng, (4, 5), jnp.float32)
    ours = functools.partial(jaxmm.matmul, residual_dtype=residual_dtype, residual_scaling=scaling)
    grads = _linear_loss_grads(ours, jnp.asarray(a), jnp.asarray(b), weights)
    exact = _linear_loss_grads(jnp.matmul, jnp.asarray(a), jnp.asarray(b), weights)
    u = UNIT_ROUNDOFF[np.dtype(residual_dtype)]
    for g, e in zip(grads, exact):
        g, e = np.asarray(g), np.asarray(e)
        assert not np.all(np.isfinite(e))  # the case does exercise NaN and inf
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(e))
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(e))
        finite = np.isfinite(e)
        np.testing.assert_allclose(g[finite], e[finite], rtol=0, atol=20 * u)


@pytest.mark.parametrize("residual_dtype", NARROW, ids=lambda d: np.dtype(d).name)
def test_all_zero_operands(residual_dtype):
    a, b = jnp.zeros((3, 4)), jnp.zeros((4, 5))
    for scaling in ("tensor", "channel"):
        mm = functools.partial(
            jaxmm.matmul, residual_dtype=residual_dtype, residual_scaling=scaling
        )
        grads = jax.jit(jax.grad(lambda a, b: jnp.sum(mm(a, b)), argnums=(0, 1)))(a, b)
        for g in grads:
            np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=IDS)
def test_residuals_are_saved_narrow_with_a_scale_where_needed(name, ours, theirs, shapes):
    a, b = jnp.ones(shapes[0]), jnp.ones(shapes[1])
    _, vjp = jax.vjp(functools.partial(ours, residual_dtype=jnp.bfloat16), a, b)
    assert [x.dtype for x in saved_arrays(vjp)] == [jnp.bfloat16, jnp.bfloat16]
    _, vjp = jax.vjp(functools.partial(ours, residual_dtype=jnp.float8_e4m3fn), a, b)
    saved = saved_arrays(vjp)
    # (narrow, scale) per operand; a per-tensor scale is one float32.
    assert [x.dtype for x in saved] == [jnp.float8_e4m3fn, jnp.float32] * 2
    assert [x.shape for x in saved] == [shapes[0], (), shapes[1], ()]
    _, vjp = jax.vjp(ours, a, b)
    assert [x.dtype for x in saved_arrays(vjp)] == [jnp.float32, jnp.float32]


@pytest.mark.parametrize(
    "a_dtype, b_dtype, residual_dtype, saved",
    [
        # Only real floating operands wider than residual_dtype are narrowed, and scaled where
        # the residual dtype's range is narrower.
        (jnp.bfloat16, jnp.float32, jnp.float32, (jnp.bfloat16, jnp.float32)),
        (jnp.float16, jnp.float32, jnp.bfloat16, (jnp.float16, jnp.bfloat16)),
        (jnp.bfloat16, jnp.float32, jnp.float16, (jnp.bfloat16, jnp.float16, jnp.float32)),
        # float8_e5m2 has float16's exponent range: a float16 operand needs no scale.
        (jnp.bfloat16, jnp.float16, jnp.float8_e5m2, (jnp.float8_e5m2, "bfloat16", "float8_e5m2")),
        (jnp.complex64, jnp.float32, jnp.float8_e4m3fn, (jnp.complex64, jnp.float8_e4m3fn, "f4")),
        # An integer operand has no cotangent, so only it is saved (for the other one).
        (jnp.int8, jnp.float32, jnp.float8_e4m3fn, (jnp.int8,)),
    ],
    ids=str,
)
def test_which_operands_are_narrowed(a_dtype, b_dtype, residual_dtype, saved):
    rng = np.random.default_rng(2)
    a, b = random_array(rng, (3, 4), a_dtype), random_array(rng, (4, 5), b_dtype)
    mm = functools.partial(jaxmm.matmul, residual_dtype=residual_dtype)
    out, vjp = jax.vjp(mm, a, b)
    assert tuple(x.dtype for x in saved_arrays(vjp)) == tuple(map(np.dtype, saved))
    # Cotangent dtypes are still the operands' own.
    grads = vjp(jnp.ones_like(out))
    expected = jax.vjp(jnp.matmul, a, b)[1](jnp.ones_like(out))
    assert [g.dtype for g in grads] == [g.dtype for g in expected]


def test_float64_saved_as_scaled_float32():
    """float32's range is narrower than float64's: 1e300 is saved scaled, not as inf."""
    with jax.enable_x64(True):
        a, b = jnp.full((3, 4), 1e300), jnp.full((4, 5), 1e-300)
        mm = functools.partial(jaxmm.matmul, residual_dtype=jnp.float32)
        _, vjp = jax.vjp(mm, a, b)
        assert [x.dtype for x in saved_arrays(vjp)] == [jnp.float32, jnp.float64] * 2
        grads = jax.grad(lambda a, b: mm(a, b).sum(), argnums=(0, 1))(a, b)
        exact = jax.grad(lambda a, b: jnp.matmul(a, b).sum(), argnums=(0, 1))(a, b)
        for g, e in zip(grads, exact):
            np.testing.assert_allclose(g, e, rtol=2**-24)


BAD_DTYPES = [jnp.int8, jnp.complex64, "bool", jnp.float8_e4m3fnuz, jnp.float8_e4m3b11fnuz, "foo"]


@pytest.mark.parametrize("bad", BAD_DTYPES, ids=str)
@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=IDS)
def test_other_residual_dtypes_are_a_type_error_before_any_work(name, ours, theirs, shapes, bad):
    # Operands that do not even fit: the residual dtype is checked first.
    a, b = jnp.ones((7,)), jnp.ones((2, 2))
    with pytest.raises(TypeError, match="residual_dtype must be one of float32, bfloat16, float16"):
        ours(a, b, residual_dtype=bad)


def test_float64_residual_is_a_type_error():
    with jax.enable_x64(True):
        a = jnp.ones((3, 3), jnp.float64)
        with pytest.raises(TypeError, match="float8_e4m3fn, float8_e5m2 .or None., got float64"):
            jaxmm.matmul(a, a, residual_dtype=jnp.float64)


@pytest.mark.parametrize("name, ours, theirs, shapes", FUNCTIONS, ids=IDS)
def test_unknown_residual_scaling_is_a_value_error(name, ours, theirs, shapes):
    a, b = jnp.ones(shapes[0]), jnp.ones(shapes[1])
    match = r"residual_scaling must be one of \('tensor', 'channel'\)"
    with pytest.raises(ValueError, match=match):
        ours(a, b, residual_dtype=jnp.float16, residual_scaling="row")


@pytest.mark.parametrize("residual_dtype", [jnp.bfloat16, jnp.float16, jnp.float8_e5m2], ids=str)
def test_with_jit_vmap_remat_and_hessian(residual_dtype):
    rng = np.random.default_rng(3)
    a, b = random_array(rng, (3, 4, 5), jnp.float32), random_array(rng, (5, 2), jnp.float32)
    mm = functools.partial(jaxmm.matmul, residual_dtype=residual_dtype)
    loss = lambda mm: lambda a, b: jnp.sum(jnp.tanh(jax.vmap(mm, (0, None))(a, b)))
    ours = jax.jit(jax.grad(jax.checkpoint(loss(mm)), argnums=(0, 1)))(a, b)
    theirs = jax.grad(loss(jnp.matmul), argnums=(0, 1))(a, b)
    tol = 30 * UNIT_ROUNDOFF[np.dtype(residual_dtype)]
    for x, y in zip(ours, theirs):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)
    hessian = jax.jit(jax.hessian(loss(mm)))(a, b)
    assert hessian.shape == (3, 4, 5, 3, 4, 5)
    expected = jax.hessian(loss(jnp.matmul))(a, b)
    np.testing.assert_allclose(hessian, expected, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize(
    "residual_dtype, scaling",
    [(d, "tensor") for d in NARROW] + [(jnp.float8_e4m3fn, "channel")],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_flax_linear(residual_dtype, scaling):
    x = jax.random.normal(jax.random.key(0), (16, 8))
    dot = functools.partial(
        jaxmm.dot_general, residual_dtype=residual_dtype, residual_scaling=scaling
    )
    ours = nnx.Linear(8, 4, dot_general=dot, rngs=nnx.Rngs(0))
    theirs = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    loss = lambda model: jnp.sum(jnp.sin(model(x)))
    np.testing.assert_array_equal(ours(x), theirs(x))
    g_ours, g_theirs = nnx.jit(nnx.grad(loss))(ours), nnx.grad(loss)(theirs)
    tol = 10 * UNIT_ROUNDOFF[np.dtype(residual_dtype)]
    for p, q in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
        assert np.linalg.norm(p - q) <= tol * np.linalg.norm(q)


@pytest.mark.parametrize(
    "residual_dtype, scaling", [(jnp.float16, "tensor"), (jnp.float8_e4m3fn, "channel")], ids=str
)
def test_perturbation_patterns_mixed_in_any_order(residual_dtype, scaling):
    """A saved (narrow, scale) pair and the marker of an operand not saved have one tree
    structure, so JAX's per-pattern cache of the forward rule never mixes them up (see
    ``jaxmm._compat.not_saved_marker``): each pattern's gradients are the ones of both operands
    at once."""
    rng = np.random.default_rng(11)
    a, b = random_array(rng, (3, 3), jnp.float32), random_array(rng, (3, 3), jnp.float32)
    mm = jax.jit(
        functools.partial(jaxmm.matmul, residual_dtype=residual_dtype, residual_scaling=scaling)
    )
    loss = lambda a, b: jnp.sum(jnp.sin(mm(a, b)))
    jax.vjp(mm, a, b)  # eager: both operands, then one
    jax.vjp(lambda a: mm(a, b), a)
    expected = jax.grad(loss, argnums=(0, 1))(a, b)
    for argnums in [(0,), (0, 1), (1,), (0, 1), (0,)]:  # traced, in turn
        jax.make_jaxpr(jax.grad(loss, argnums=argnums))(a, b)
        for i, g in zip(argnums, jax.jit(jax.grad(loss, argnums=argnums))(a, b)):
            np.testing.assert_array_equal(g, expected[i])


# Per operand: residual_dtype=(lhs_dtype, rhs_dtype), each a dtype or None ---------------------

PRODUCTS_OF_TWO = [
    ("matmul", jaxmm.matmul, (4, 5), (5, 3)),
    (
        "dot_general",
        lambda a, b, **kw: jaxmm.dot_general(a, b, (((1,), (0,)), ((), ())), **kw),
        (4, 5),
        (5, 3),
    ),
    ("einsum", lambda a, b, **kw: jaxmm.einsum("ij,jk->ik", a, b, **kw), (4, 5), (5, 3)),
    ("dot", jaxmm.dot, (4, 5), (5, 3)),
    ("tensordot", lambda a, b, **kw: jaxmm.tensordot(a, b, axes=1, **kw), (4, 5), (5, 3)),
    ("inner", jaxmm.inner, (4, 5), (3, 5)),
    ("outer", jaxmm.outer, (4,), (3,)),
    ("vdot", jaxmm.vdot, (4, 5), (4, 5)),
    ("vecdot", jaxmm.vecdot, (4, 5), (4, 5)),
    ("matvec", jaxmm.matvec, (4, 5), (5,)),
    ("vecmat", jaxmm.vecmat, (5,), (5, 3)),
]
# The same rule in the other mechanisms that save narrowed operands.
PRODUCTS_OF_TWO += [
    ("custom_vjp.matmul", jaxmm.custom_vjp.matmul, (4, 5), (5, 3)),
    ("custom_vjp.vecmat", jaxmm.custom_vjp.vecmat, (5,), (5, 3)),
]
if experimental is not None:
    PRODUCTS_OF_TWO += [
        ("experimental.matmul", experimental.matmul, (4, 5), (5, 3)),
        (
            "experimental.einsum",
            lambda a, b, **kw: experimental.einsum("ij,jk->ik", a, b, **kw),
            (4, 5),
            (5, 3),
        ),
    ]


@pytest.mark.parametrize(
    "name, fn, a_shape, b_shape", PRODUCTS_OF_TWO, ids=[p[0] for p in PRODUCTS_OF_TWO]
)
def test_one_operand_narrowed_the_other_exact(name, fn, a_shape, b_shape):
    """(bfloat16, None) narrows the lhs only: dB = Aᵀ dY reads the narrowed A, and dA = dY Bᵀ
    reads the exact B, so it equals the exact gradient; (None, bfloat16) the mirror image."""
    rng = np.random.default_rng(3)
    a, b = random_array(rng, a_shape, jnp.float32), random_array(rng, b_shape, jnp.float32)
    loss = lambda **kw: jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(fn(a, b, **kw))), (0, 1)))
    exact = loss()(a, b)
    lhs_narrow = loss(residual_dtype=(jnp.bfloat16, None))(a, b)
    rhs_narrow = loss(residual_dtype=[None, jnp.bfloat16])(a, b)
    np.testing.assert_array_equal(lhs_narrow[0], exact[0])
    np.testing.assert_array_equal(rhs_narrow[1], exact[1])
    # dB reads the narrowed A, with the exact forward's dY = cos(A B).
    narrowed_a = a.astype(jnp.bfloat16).astype(jnp.float32)
    dy = jnp.cos(fn(a, b))
    expected = jax.vjp(lambda b: fn(narrowed_a, b), b)[1](dy)[0]
    np.testing.assert_allclose(lhs_narrow[1], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(loss(residual_dtype=(None, None))(a, b)[0], exact[0])


def test_einsum_takes_one_dtype_per_operand():
    rng = np.random.default_rng(4)
    x, w, v = (random_array(rng, s, jnp.float32) for s in [(3, 4), (4, 5), (5, 2)])
    f = lambda **kw: jax.jit(
        jax.grad(
            lambda x, w, v: jnp.sum(jnp.sin(jaxmm.einsum("ij,jk,kl->il", x, w, v, **kw))), (0, 1, 2)
        )
    )
    exact = f()(x, w, v)
    # Only x narrowed: the gradients of w and v (whose products read x or the intermediate
    # result, which is kept exact) are exact... except w's, which reads x.
    only_x = f(residual_dtype=(jnp.bfloat16, None, None))(x, w, v)
    np.testing.assert_array_equal(only_x[0], exact[0])
    with pytest.raises(ValueError, match="residual_dtype has 2 entries for 3 operands"):
        jaxmm.einsum("ij,jk,kl->il", x, w, v, residual_dtype=(jnp.bfloat16, None))
    with pytest.raises(ValueError, match="residual_dtype has 3 entries for 2 operands"):
        jaxmm.einsum(x, [0, 1], w, [1, 2], residual_dtype=(None, None, None))


@pytest.mark.parametrize(
    "bad, error",
    [
        ((jnp.bfloat16,), ValueError),
        ((jnp.bfloat16, None, None), ValueError),
        ((jnp.int8, None), TypeError),
        ((None, "float"), TypeError),
    ],
)
@pytest.mark.parametrize(
    "name, fn, a_shape, b_shape", PRODUCTS_OF_TWO[:4], ids=[p[0] for p in PRODUCTS_OF_TWO[:4]]
)
def test_bad_per_operand_forms_are_errors_before_any_work(name, fn, a_shape, b_shape, bad, error):
    a, b = jnp.ones((7,)), jnp.ones((2, 2))  # operands that do not even fit
    with pytest.raises(error, match="residual_dtype"):
        fn(a, b, residual_dtype=bad)
