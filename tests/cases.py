"""The case tables the tests share: dtypes, the mechanisms (``jaxmm``, ``jaxmm.custom_vjp`` and,
where JAX has hijax primitives, ``jaxmm.experimental``), and the shapes, dimension numbers and
subscripts each function is checked on. A test parametrised over a table runs every case with
``--full`` and, by default, each named value (dtype, function, mechanism) at least once
(tests/conftest.py)."""

import jax.numpy as jnp

import jaxmm

try:
    from jaxmm import experimental
except ImportError as error:  # JAX without hijax primitives: tests/test_experimental_import.py
    experimental = None
    EXPERIMENTAL_MISSING = str(error)
else:
    EXPERIMENTAL_MISSING = ""

FLOAT_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64]
COMPLEX_DTYPES = [jnp.complex64, jnp.complex128]
EXACT_DTYPES = [jnp.int8, jnp.int32, jnp.bool_]
ALL_DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES + EXACT_DTYPES

# The modules offering the product family, each with its own differentiation mechanism.
MECHANISMS = [jaxmm, jaxmm.custom_vjp] + ([experimental] if experimental is not None else [])
# Those with forward mode (JAX refuses jax.jvp of a custom_vjp function).
FORWARD_MODE = [m for m in MECHANISMS if m is not jaxmm.custom_vjp]

NAMES = ["dot", "tensordot", "vdot", "inner", "outer", "matvec", "vecmat", "vecdot"]
# The functions with their own layout code around the product: plain, conjugated, flattened,
# through matmul's plan (the others differ from these in dimension numbers only).
DISTINCT = ["dot", "vdot", "outer", "vecmat", "vecdot"]

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


# (lhs.shape, rhs.shape, ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)))
DOT_GENERAL_CASES = [
    ((3, 4), (4, 5), (((1,), (0,)), ((), ()))),  # Y = X W
    ((4, 3), (4, 5), (((0,), (0,)), ((), ()))),  # Xᵀ W
    ((3, 4), (5, 4), (((1,), (1,)), ((), ()))),  # X Wᵀ (the Flax kernel layout, transposed)
    ((4,), (4,), (((0,), (0,)), ((), ()))),  # inner product
    ((3,), (4,), (((), ()), ((), ()))),  # outer product of vectors
    ((2, 3), (4, 5), (((), ()), ((), ()))),  # outer product of matrices
    ((), (3, 2), (((), ()), ((), ()))),  # a 0-d operand: scaling
    ((3, 4), (3, 4), (((0, 1), (0, 1)), ((), ()))),  # full contraction to a scalar
    ((3, 4), (3, 4), (((), ()), ((0, 1), (0, 1)))),  # batch only: elementwise product
    ((2, 3, 4), (3, 4, 5), (((1, 2), (0, 1)), ((), ()))),  # two contracting axes
    ((2, 3, 4), (4, 3, 5), (((1, 2), (1, 0)), ((), ()))),  # ... paired in swapped order
    ((2, 3, 4), (2, 4, 5), (((2,), (1,)), ((0,), (0,)))),  # leading batch axis
    ((3, 2, 4), (4, 5, 2), (((2,), (0,)), ((1,), (2,)))),  # batch axes in the middle / last
    ((2, 3, 4, 5), (3, 2, 5, 6), (((3,), (2,)), ((0, 1), (1, 0)))),  # batch pairs crossed
    ((5, 2, 3, 6), (6, 3, 7, 2), (((3,), (0,)), ((1, 2), (3, 1)))),
    ((2, 6, 3, 4), (4, 2, 3), (((2, 3), (2, 0)), ((0,), (1,)))),  # batch + 2 contracting
    ((0, 3), (3, 4), (((1,), (0,)), ((), ()))),  # empty free axis
    ((3, 0), (0, 4), (((1,), (0,)), ((), ()))),  # empty contraction
    ((0, 2, 3), (0, 3, 4), (((2,), (1,)), ((0,), (0,)))),  # empty batch
]


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


# (subscripts, operand shapes): three and more operands, in the patterns models use.
MANY_CASES = [
    ("ij,jk,kl->il", (2, 3), (3, 4), (4, 5)),  # a chain
    ("ij,jk,kl,lm->im", (2, 3), (3, 4), (4, 5), (5, 2)),
    ("bqd,bkd,bkv->bqv", (2, 3, 4), (2, 5, 4), (2, 5, 6)),  # attention: softmax-free core
    ("bi,oij,bj->bo", (4, 3), (2, 3, 5), (4, 5)),  # bilinear layer
    ("te,ecd,td->tc", (6, 3), (3, 4, 5), (6, 5)),  # mixture of experts: routed projection
    ("...ij,...jk,kl->...il", (2, 1, 3, 4), (5, 4, 2), (2, 3)),  # ellipsis broadcasting
    ("ij,jk,kl", (2, 3), (3, 4), (4, 5)),  # implicit output
    ("i,i,i->", (4,), (4,), (4,)),  # a letter shared by all: contracted last
    ("i,i,i->i", (4,), (4,), (4,)),  # ... or kept: a batch axis throughout
    ("ij,jk,kl->il", (2, 1), (4, 5), (5, 3)),  # size-1 broadcast within a chain
    ("abc,cd,de,ef->abf", (2, 3, 4), (4, 5), (5, 3), (3, 2)),
    ("ijk,jl,km->ilm", (2, 3, 4), (3, 5), (4, 6)),
    ("ij,kl,mn->ijklmn", (2, 2), (2, 3), (3, 2)),  # outer products only
]


# (subscripts, operand shapes): one operand, and letters repeated within an operand.
SINGLE_AND_REPEATED = [
    ("ij->ji", (3, 4)),  # transpose
    ("ij->", (3, 4)),  # sum
    ("ijk->ki", (2, 3, 4)),  # sum and transpose
    ("ij", (3, 4)),  # implicit: identity
    ("ii->", (3, 3)),  # trace
    ("ii->i", (3, 3)),  # diagonal
    ("iij->j", (3, 3, 4)),
    ("iji->ij", (3, 4, 3)),
    ("...ii->...i", (2, 3, 3)),
    ("iii->i", (3, 3, 3)),
    ("ii,ij->j", (3, 3), (3, 4)),  # a trace-like diagonal before a contraction
    ("ij,jj->ij", (3, 4), (4, 4)),
    ("ii,jj->ij", (3, 3), (2, 2)),
    ("iij,jk,kk->ik", (3, 3, 4), (4, 2), (2, 2)),
]


# (function name, operand shapes, keyword arguments): 0-d operands, vectors, matrices, stacks,
# broadcasting, size-0 axes, every form of tensordot's axes, vecdot's axis.
PRODUCT_CASES = [
    ("dot", (3, 4), (4, 5), {}),
    ("dot", (4,), (4,), {}),
    ("dot", (3, 4), (4,), {}),
    ("dot", (4,), (4, 5), {}),
    ("dot", (), (3, 2), {}),
    ("dot", (2, 3), (), {}),
    ("dot", (2, 3, 4), (5, 4, 6), {}),  # no broadcasting: both stacks kept
    ("dot", (0, 4), (4, 5), {}),
    ("dot", (3, 0), (0, 5), {}),
    ("tensordot", (2, 3, 4), (3, 4, 5), {}),  # default axes=2
    ("tensordot", (2, 3), (3, 4), {"axes": 1}),
    ("tensordot", (2, 3), (4, 5), {"axes": 0}),  # outer product
    ("tensordot", (2, 3, 4), (4, 3, 5), {"axes": ((1, 2), (1, 0))}),
    ("tensordot", (2, 3, 4), (5, 4), {"axes": (-1, 1)}),
    ("tensordot", (2, 3, 4), (4, 3), {"axes": [[-1, 1], [0, 1]]}),
    ("tensordot", (3,), (3,), {"axes": 1}),
    ("vdot", (4,), (4,), {}),
    ("vdot", (2, 3), (3, 2), {}),  # flattened
    ("vdot", (), (), {}),
    ("inner", (3,), (3,), {}),
    ("inner", (2, 3), (5, 3), {}),
    ("inner", (2, 4, 3), (3,), {}),
    ("inner", (), (2, 3), {}),
    ("inner", (2, 3), (), {}),
    ("outer", (3,), (4,), {}),
    ("outer", (2, 3), (4,), {}),  # flattened
    ("outer", (), (2,), {}),
    ("matvec", (2, 3), (3,), {}),
    ("matvec", (5, 2, 3), (5, 3), {}),
    ("matvec", (5, 1, 2, 3), (4, 3), {}),  # broadcast leading axes
    ("matvec", (1, 2, 3), (5, 3), {}),
    ("matvec", (0, 2, 3), (0, 3), {}),
    ("vecmat", (3,), (3, 2), {}),
    ("vecmat", (5, 3), (5, 3, 2), {}),
    ("vecmat", (5, 3), (1, 3, 2), {}),
    ("vecmat", (4, 1, 3), (5, 3, 2), {}),
    ("vecdot", (3,), (3,), {}),
    ("vecdot", (5, 3), (5, 3), {}),
    ("vecdot", (5, 3), (1, 3), {}),
    ("vecdot", (4, 1, 3), (5, 3), {}),
    ("vecdot", (3, 5), (3, 5), {"axis": 0}),
    ("vecdot", (2, 3, 4), (1, 3, 4), {"axis": -2}),
]
