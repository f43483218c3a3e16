"""jaxmm.matmul against jax.vjp of jnp.matmul: values, cotangents, shapes and dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import ALL_DTYPES, FORWARD_MODE, MATMUL_SHAPES, MIXED_DTYPES
from reference import assert_same_derivatives, random_array, x64_context


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES, ids=str)
def test_matmul_matches_jnp_matmul(mechanism, a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        a = random_array(rng, a_shape, dtype)
        b = random_array(rng, b_shape, dtype)
        assert_same_derivatives(mechanism.matmul, jnp.matmul, a, b)


@pytest.mark.parametrize("a_dtype, b_dtype", MIXED_DTYPES, ids=str)
def test_matmul_promotes_mixed_dtypes_like_jnp(mechanism, a_dtype, b_dtype):
    rng = np.random.default_rng(1)
    with x64_context(a_dtype, b_dtype):
        a = random_array(rng, (2, 3, 4), a_dtype)
        b = random_array(rng, (4, 5), b_dtype)
        assert_same_derivatives(mechanism.matmul, jnp.matmul, a, b)


@pytest.mark.parametrize(
    "dtype, preferred",
    [
        (jnp.bfloat16, jnp.float32),  # bf16 operands, f32 accumulation: cotangents stay bf16
        (jnp.float16, jnp.float32),
        (jnp.int8, jnp.int32),
        (jnp.float32, jnp.bfloat16),
    ],
    ids=str,
)
def test_matmul_preferred_element_type(mechanism, dtype, preferred):
    rng = np.random.default_rng(2)
    a = random_array(rng, (3, 8), dtype)
    b = random_array(rng, (2, 8, 5), dtype)
    assert_same_derivatives(
        lambda a, b: mechanism.matmul(a, b, preferred_element_type=preferred),
        lambda a, b: jnp.matmul(a, b, preferred_element_type=preferred),
        a,
        b,
    )
    if jnp.issubdtype(dtype, np.floating):
        grads = jax.grad(
            lambda a, b: mechanism.matmul(a, b, preferred_element_type=preferred).sum(),
            argnums=(0, 1),
        )(a, b)
        assert [g.dtype for g in grads] == [np.dtype(dtype)] * 2


@pytest.mark.parametrize(
    "precision",
    [
        None,
        "highest",
        jax.lax.Precision.HIGH,
        ("highest", "default"),
        jax.lax.DotAlgorithmPreset.F32_F32_F32,
    ],
    ids=str,
)
def test_matmul_precision(mechanism, precision):
    rng = np.random.default_rng(3)
    a = random_array(rng, (4, 6), jnp.float32)
    b = random_array(rng, (6, 3), jnp.float32)
    assert_same_derivatives(
        lambda a, b: mechanism.matmul(a, b, precision=precision),
        lambda a, b: jnp.matmul(a, b, precision=precision),
        a,
        b,
    )


def test_matmul_keeps_weak_type_like_jnp(mechanism):
    weak = jax.lax.broadcast(2.0, (3,))  # a weakly-typed float32[3]
    strong = jnp.ones(3, jnp.float32)
    for a, b in [(weak, weak), (weak, strong)]:
        assert jax.typeof(mechanism.matmul(a, b)) == jax.typeof(jnp.matmul(a, b))
        if mechanism in FORWARD_MODE:
            tangent = jax.jvp(mechanism.matmul, (a, b), (a, b))[1]
            assert jax.typeof(tangent) == jax.typeof(jax.jvp(jnp.matmul, (a, b), (a, b))[1])
        ours = jax.vjp(mechanism.matmul, a, b)[1](jnp.ones((), jnp.float32))
        theirs = jax.vjp(jnp.matmul, a, b)[1](jnp.ones((), jnp.float32))
        assert [jax.typeof(x) for x in ours] == [jax.typeof(x) for x in theirs]


def test_matmul_accepts_numpy_arrays(mechanism):
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(mechanism.matmul(a, b), jnp.matmul(a, b))
