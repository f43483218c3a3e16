"""jaxmm: matrix multiplication for JAX whose backward pass is derived by hand.

For ``Y = W X`` with upstream gradient ``dY``: ``dX = Wᵀ dY`` and ``dW = dY Xᵀ``; generalised to
``jnp.matmul`` (vectors, batches, broadcasting), to ``lax.dot_general`` with any dimension numbers,
to ``einsum`` with any number of operands and to the rest of NumPy's product family, each computed
by one JAX primitive whose JVP, transpose and batching rules are written by hand (a
``jax.custom_vjp`` function where the operands are saved narrowed, ``residual_dtype``); and the
output layer's product with its softmax cross-entropy, ``linear_cross_entropy``, differentiated
in vocabulary chunks without ever holding the logits.
"""

from . import custom_vjp as custom_vjp
from . import testing as testing
from ._clipping import clipped_grad as clipped_grad
from ._cross_entropy import linear_cross_entropy as linear_cross_entropy
from ._dot_general import dot_general as dot_general
from ._einsum import einsum as einsum
from ._matmul import matmul as matmul
from ._products import dot as dot
from ._products import inner as inner
from ._products import outer as outer
from ._products import tensordot as tensordot
from ._products import vdot as vdot
from ._ragged import ragged_dot as ragged_dot
from ._ragged import ragged_dot_general as ragged_dot_general
from ._vectorized import matvec as matvec
from ._vectorized import vecdot as vecdot
from ._vectorized import vecmat as vecmat

__version__ = "0.1.0"

__all__ = [
    "clipped_grad",
    "custom_vjp",
    "dot",
    "dot_general",
    "einsum",
    "inner",
    "linear_cross_entropy",
    "matmul",
    "matvec",
    "outer",
    "ragged_dot",
    "ragged_dot_general",
    "tensordot",
    "testing",
    "vdot",
    "vecdot",
    "vecmat",
]
