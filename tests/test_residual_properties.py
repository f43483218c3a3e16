"""Never silent: operands drawn across 1e-30 … 1e30, with zeros, NaN and inf, for every narrow
residual dtype. The gradient has NaN and inf exactly where the exact one has them, and every
finite entry is within the documented bound (``jaxmm._residuals``): each saved entry is within
the unit roundoff ``u`` of its value, or, below the dtype's range under the largest entry of its
scale, off by at most ``A τ / T`` (``A`` that largest entry, ``τ`` the smallest subnormal, ``T``
the largest value scaled to)."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import jaxmm

NARROW = [jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn, jnp.float8_e5m2]
M, K, N = 3, 4, 5

_magnitude = st.builds(
    lambda sign, mantissa, exponent: sign * mantissa * 10.0**exponent,
    st.sampled_from([-1.0, 1.0]),
    st.floats(1.0, 9.99),
    st.integers(-30, 30),
)
_entry = st.one_of(
    _magnitude, _magnitude, _magnitude, st.sampled_from([0.0, np.nan, np.inf, -np.inf])
)
_cotangent_entry = st.one_of(st.just(0.0), st.floats(0.5, 2.0), st.floats(-2.0, -0.5))


def _operands(shape):
    return arrays(np.float32, shape, elements=_entry.map(np.float32))


def _entry_bound(x, dtype, reduced_axis):
    """Per entry of ``x`` (non-finite entries ignored): ``u |x| + abs``, the most its saved value
    may be off, with ``abs`` from the largest finite magnitude along ``reduced_axis`` (all axes
    per tensor)."""
    info = ml_dtypes.finfo(dtype)
    u, tiny = 2.0 ** -(info.nmant + 1), float(info.smallest_subnormal)
    x = np.where(np.isfinite(x), np.abs(np.asarray(x, np.float64)), 0)
    if np.dtype(dtype) == np.dtype(jnp.bfloat16):  # float32's range: a plain cast
        return u * x + tiny / 2
    top = 256.0 if np.dtype(dtype) == np.dtype(jnp.float8_e4m3fn) else float(info.max)
    amax = np.max(x, axis=reduced_axis, keepdims=True)
    return u * x + amax * tiny / top


def _check(residual_dtype, scaling, a, b, cotangent, grads_fn):
    (da, db), (exact_da, exact_db) = grads_fn(a, b, cotangent)
    # dA = dY Bᵀ reads the saved B (channels: rows, max over axis 1); dB = Aᵀ dY the saved A
    # (channels: columns, max over axis 0).
    per_channel = scaling == "channel"
    bound_b = _entry_bound(b, residual_dtype, 1 if per_channel else None)
    bound_a = _entry_bound(a, residual_dtype, 0 if per_channel else None)
    dy = np.abs(np.asarray(cotangent, np.float64))
    f64 = lambda x: np.where(np.isfinite(x), np.abs(np.asarray(x, np.float64)), 0)
    # + both sides' float32 accumulation rounding
    accumulation = 4 * K * 2.0**-24
    bounds = (
        dy @ bound_b.T + accumulation * dy @ f64(b).T,
        bound_a.T @ dy + accumulation * f64(a).T @ dy,
    )
    for g, e, bound in zip((da, db), (exact_da, exact_db), bounds):
        g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(e))
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(e))
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(e))
        finite = np.isfinite(e)
        excess = np.abs(g[finite] - e[finite]) - (bound[finite] + 1e-37)
        assert np.all(excess <= 0), (g, e, bound)


def _grads_fn(residual_dtype, scaling):
    mm = functools.partial(jaxmm.matmul, residual_dtype=residual_dtype, residual_scaling=scaling)

    @jax.jit
    def grads(a, b, cotangent):
        ours = jax.vjp(mm, a, b)[1](cotangent)
        exact = jax.vjp(jnp.matmul, a, b)[1](cotangent)
        return ours, exact

    return grads


@pytest.mark.parametrize("scaling", ["tensor", "channel"])
@pytest.mark.parametrize("residual_dtype", NARROW, ids=lambda d: np.dtype(d).name)
def test_gradient_is_never_silently_wrong(residual_dtype, scaling):
    grads_fn = _grads_fn(residual_dtype, scaling)  # one compilation for all the drawn cases

    @settings(max_examples=25)
    @given(
        a=_operands((M, K)),
        b=_operands((K, N)),
        cotangent=arrays(np.float32, (M, N), elements=_cotangent_entry.map(np.float32)),
    )
    def check(a, b, cotangent):
        _check(residual_dtype, scaling, a, b, cotangent, grads_fn)

    check()
