"""jaxmm.matmul against jax.vjp of jnp.matmul: values, cotangents, shapes and dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import ALL_DTYPES, assert_same_vjp, random_array, x64_context

import jaxmm

# (a.shape, b.shape): vectors, matrices, batches, NumPy broadcasting, size-0 axes.
MATMUL_SHAPES = [
    ((3, 4), (4, 5)),  # Y = X W
    ((4,), (4, 5)),  # vector · matrix
    ((3, 4), (4,)),  # matrix · vector
    ((4,), (4,)),  # vector · vector -> scalar
    ((1,), (1,)),
    ((2, 3, 4), (2, 4, 5)),  # batched, same batch
    ((2, 3, 4), (4, 5)),  # shared weight: dW sums over the batch
    ((3, 4), (2, 4, 5)),  # shared lhs
    ((1, 3, 4, 5), (2, 1, 5, 6)),  # broadcast both ways
    ((2, 1, 3, 4), (5, 4, 2)),  # rank promotion of b plus a size-1 axis
    ((1, 1, 3, 4), (1, 4, 2)),  # size-1 batch axes in both
    ((4,), (2, 3, 4, 5)),  # vector against a batch of matrices
    ((2, 3, 4), (4,)),
    ((0, 4), (4, 5)),  # empty rows
    ((3, 0), (0, 5)),  # empty contraction: zeros
    ((2, 0, 3, 4), (4, 5)),  # empty batch
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES, ids=str)
def test_matmul_matches_jnp_matmul(a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        a = random_array(rng, a_shape, dtype)
        b = random_array(rng, b_shape, dtype)
        assert_same_vjp(jaxmm.matmul, jnp.matmul, a, b)


# Mixed dtypes are promoted as jnp.matmul promotes them; each cotangent keeps its operand's dtype.
MIXED_DTYPES = [
    (jnp.int32, jnp.float32),
    (jnp.float32, jnp.int8),
    (jnp.bfloat16, jnp.float32),
    (jnp.float16, jnp.bfloat16),
    (jnp.float32, jnp.complex64),
    (jnp.complex64, jnp.float32),
    (jnp.bool_, jnp.float16),
    (jnp.int8, jnp.int32),
    (jnp.float32, jnp.float64),
]


@pytest.mark.parametrize("a_dtype, b_dtype", MIXED_DTYPES, ids=str)
def test_matmul_promotes_mixed_dtypes_like_jnp(a_dtype, b_dtype):
    rng = np.random.default_rng(1)
    with x64_context(a_dtype, b_dtype):
        a = random_array(rng, (2, 3, 4), a_dtype)
        b = random_array(rng, (4, 5), b_dtype)
        assert_same_vjp(jaxmm.matmul, jnp.matmul, a, b)


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
def test_matmul_preferred_element_type(dtype, preferred):
    rng = np.random.default_rng(2)
    a = random_array(rng, (3, 8), dtype)
    b = random_array(rng, (2, 8, 5), dtype)
    assert_same_vjp(
        lambda a, b: jaxmm.matmul(a, b, preferred_element_type=preferred),
        lambda a, b: jnp.matmul(a, b, preferred_element_type=preferred),
        a,
        b,
    )
    if jnp.issubdtype(dtype, np.floating):
        grads = jax.grad(
            lambda a, b: jaxmm.matmul(a, b, preferred_element_type=preferred).sum(), argnums=(0, 1)
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
def test_matmul_precision(precision):
    rng = np.random.default_rng(3)
    a = random_array(rng, (4, 6), jnp.float32)
    b = random_array(rng, (6, 3), jnp.float32)
    assert_same_vjp(
        lambda a, b: jaxmm.matmul(a, b, precision=precision),
        lambda a, b: jnp.matmul(a, b, precision=precision),
        a,
        b,
    )


def test_matmul_keeps_weak_type_like_jnp():
    weak = jax.lax.broadcast(2.0, (3,))  # a weakly-typed float32[3]
    strong = jnp.ones(3, jnp.float32)
    for a, b in [(weak, weak), (weak, strong)]:
        assert jax.typeof(jaxmm.matmul(a, b)) == jax.typeof(jnp.matmul(a, b))


def test_matmul_accepts_numpy_arrays():
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(jaxmm.matmul(a, b), jnp.matmul(a, b))
