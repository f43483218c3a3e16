"""The cross-check every test uses: jaxmm against ``jax.vjp`` of JAX's own function."""

from __future__ import annotations

import contextlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]
COMPLEX_DTYPES = [jnp.complex64, jnp.complex128]
EXACT_DTYPES = [jnp.int8, jnp.int32, jnp.bool_]
ALL_DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES + EXACT_DTYPES

# One table of tolerances, by the dtype of the compared arrays: (rtol, atol). jaxmm and the
# reference usually run the very same XLA dots, so these bound reassociation, not approximation.
TOLERANCE = {
    np.dtype(jnp.float16): (1e-2, 1e-2),
    np.dtype(jnp.bfloat16): (2e-2, 2e-2),
    np.dtype(jnp.float32): (1e-5, 1e-5),
    np.dtype(jnp.float64): (1e-12, 1e-12),
    np.dtype(jnp.complex64): (1e-5, 1e-5),
    np.dtype(jnp.complex128): (1e-12, 1e-12),
}


def x64_context(*dtypes) -> contextlib.AbstractContextManager:
    """64-bit types only exist with x64 enabled; enable it just for the cases that need it."""
    wide = any(np.dtype(d) in (np.float64, np.complex128, np.int64, np.uint64) for d in dtypes)
    return jax.enable_x64(True) if wide else contextlib.nullcontext()


def random_array(rng: np.random.Generator, shape, dtype) -> jax.Array:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return jnp.asarray(rng.random(shape) < 0.5)
    if jnp.issubdtype(dtype, np.integer):
        return jnp.asarray(rng.integers(-3, 4, size=shape), dtype)
    values = rng.standard_normal(shape)
    if jnp.issubdtype(dtype, np.complexfloating):
        values = values + 1j * rng.standard_normal(shape)
    return jnp.asarray(values, dtype)


def cotangent_like(rng: np.random.Generator, x):
    """A random cotangent for ``x`` (not all ones, so that a transposed axis cannot hide);
    integer and boolean outputs take float0 zeros, as JAX requires."""
    if not jnp.issubdtype(x.dtype, np.inexact):
        return np.zeros(x.shape, dtype=jax.dtypes.float0)
    return random_array(rng, x.shape, x.dtype)


def assert_close(actual, expected, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype == jax.dtypes.float0:
        return
    rtol, atol = TOLERANCE.get(np.dtype(expected.dtype), (0, 0))
    wide = np.complex128 if jnp.issubdtype(expected.dtype, np.complexfloating) else np.float64
    np.testing.assert_allclose(
        np.asarray(actual).astype(wide), np.asarray(expected).astype(wide), rtol, atol, err_msg=what
    )


def assert_same_vjp(fn, reference, *primals, seed: int = 0, jit: bool = True) -> None:
    """Outputs and cotangents of ``fn`` equal those of ``reference`` for one random cotangent:
    values (to the dtype's tolerance), shapes and dtypes.

    Both sides run in one jitted program by default (one compilation instead of one per eager op,
    which keeps the large case tables fast); ``jit=False`` runs them op by op.
    """
    rng = np.random.default_rng(seed)
    expected_out = jax.eval_shape(reference, *primals)
    cotangent = cotangent_like(rng, expected_out)

    def outputs_and_cotangents(primals, cotangent):
        out, vjp = jax.vjp(fn, *primals)
        expected_out, expected_vjp = jax.vjp(reference, *primals)
        return (out, *vjp(cotangent)), (expected_out, *expected_vjp(cotangent))

    run = jax.jit(outputs_and_cotangents) if jit else outputs_and_cotangents
    actual, expected = run(primals, cotangent)
    names = ["output"] + [f"cotangent of operand {i}" for i in range(len(primals))]
    for name, a, e in zip(names, actual, expected):
        assert_close(a, e, name)


def saved_arrays(vjp) -> list:
    """The arrays a VJP closure keeps for the backward pass. jaxmm marks an operand it does not
    save with an empty array (0 bytes; see ``_not_saved``), which is left out here."""
    return [x for x in jax.tree.leaves(vjp) if x.size]


def primitive_names(jaxpr) -> list[str]:
    """Every primitive of a jaxpr, nested jaxprs (jit, cond, custom rules) included."""
    names = []
    for eqn in jaxpr.eqns:
        names.append(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names.extend(primitive_names(sub))
    return names
