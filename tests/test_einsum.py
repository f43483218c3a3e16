"""jaxmm.einsum against jax.vjp of jnp.einsum, for every kind of two-operand spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import assert_same_vjp, random_array, x64_context

import jaxmm

# (subscripts, a.shape, b.shape)
EINSUM_CASES = [
    ("ij,jk->ik", (3, 4), (4, 5)),  # Y = X W
    ("ij,kj->ik", (3, 4), (5, 4)),  # X Wᵀ
    ("ji,jk->ki", (4, 3), (4, 5)),  # output permutation
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),  # batch letter
    ("bij,jk->bik", (2, 3, 4), (4, 5)),  # shared weight
    ("ibj,kjb->bki", (3, 2, 4), (5, 4, 2)),  # batch letter in the middle, permuted output
    ("...ij,...jk->...ik", (2, 1, 3, 4), (5, 4, 6)),  # ellipsis broadcasting
    ("...ij,jk->...ik", (2, 3, 4), (4, 5)),
    ("...i,...i->...", (2, 3, 4), (3, 4)),
    ("ij,jk", (3, 4), (4, 5)),  # implicit output
    ("i,j->ij", (3,), (4,)),  # outer product
    ("ij,kl->ijkl", (2, 3), (4, 5)),
    ("ij,ij->", (3, 4), (3, 4)),  # full contraction to a scalar
    ("ij,ij->ij", (3, 4), (3, 4)),  # elementwise
    ("ijk,jl->il", (3, 4, 5), (4, 6)),  # k summed within the first operand only
    ("ij,jkl->i", (3, 4), (4, 5, 6)),  # k, l summed within the second operand only
    ("bij,bjk->ik", (2, 3, 4), (2, 4, 5)),  # a shared letter summed: contraction
    ("bij,bjk->bik", (1, 3, 4), (5, 4, 2)),  # size-1 letter broadcast
    ("ij,jk->ik", (3, 1), (4, 5)),  # size-1 contracting letter broadcast
    (" ij , jk -> ik ", (3, 4), (4, 5)),  # spaces
]


@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.complex128, jnp.int32], ids=lambda d: np.dtype(d).name
)
@pytest.mark.parametrize("subscripts, a_shape, b_shape", EINSUM_CASES, ids=str)
def test_einsum_matches_jnp_einsum(subscripts, a_shape, b_shape, dtype):
    rng = np.random.default_rng(0)
    with x64_context(dtype):
        a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
        assert_same_vjp(
            lambda a, b: jaxmm.einsum(subscripts, a, b),
            lambda a, b: jnp.einsum(subscripts, a, b),
            a,
            b,
        )


def test_einsum_contracts_through_the_custom_rule():
    jaxpr = jax.make_jaxpr(lambda a, b: jaxmm.einsum("bij,bjk->bik", a, b))(
        jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    )
    assert "custom_vjp_call" in str(jaxpr)


def test_einsum_preferred_element_type_and_precision():
    rng = np.random.default_rng(1)
    a, b = random_array(rng, (3, 4), jnp.bfloat16), random_array(rng, (4, 5), jnp.bfloat16)
    kwargs = dict(precision="highest", preferred_element_type=jnp.float32)
    assert_same_vjp(
        lambda a, b: jaxmm.einsum("ij,jk->ik", a, b, **kwargs),
        lambda a, b: jnp.einsum("ij,jk->ik", a, b, **kwargs),
        a,
        b,
    )


def test_backward_of_A_B_to_C_is_C_B_to_A():
    """The mnemonic, checked: d/da of 'A,B->C' is einsum('C,B->A', dY, b)."""
    rng = np.random.default_rng(2)
    a, b = random_array(rng, (2, 3, 4), jnp.float32), random_array(rng, (2, 4, 5), jnp.float32)
    y, vjp = jax.vjp(lambda a, b: jaxmm.einsum("bij,bjk->bik", a, b), a, b)
    dy = random_array(rng, y.shape, jnp.float32)
    da, db = vjp(dy)
    np.testing.assert_allclose(da, jnp.einsum("bik,bjk->bij", dy, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, jnp.einsum("bij,bik->bjk", a, dy), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "subscripts, a_shape, b_shape, error, fragment",
    [
        ("ii,ij->j", (3, 3), (3, 4), ValueError, "repeated"),  # a trace: refused, never wrong
        ("ij,jk,kl->il", (2, 3), (3, 4), ValueError, "two operands"),
        ("ij,jk->ik", (2, 3), (4, 5), ValueError, "size 3"),
        ("ij,jk->iz", (2, 3), (3, 4), ValueError, "'z'"),
        ("ijk,jk->i", (2, 3), (3, 4), ValueError, "rank 2"),
        ("ij,jk->ikk", (2, 3), (3, 4), ValueError, "repeated"),
    ],
    ids=str,
)
def test_einsum_refuses_what_it_cannot_take(subscripts, a_shape, b_shape, error, fragment):
    with pytest.raises(error, match=fragment):
        jaxmm.einsum(subscripts, jnp.ones(a_shape), jnp.ones(b_shape))
