"""jaxmm: matrix multiplication for JAX whose backward pass is derived by hand.

For ``Y = W X`` with upstream gradient ``dY``: ``dX = Wᵀ dY`` and ``dW = dY Xᵀ``; generalised to
``jnp.matmul`` (vectors, batches, broadcasting) and to ``lax.dot_general`` with any dimension
numbers, each a ``jax.custom_vjp`` function.
"""

from ._dot_general import dot_general as dot_general
from ._einsum import einsum as einsum
from ._matmul import matmul as matmul

__version__ = "0.1.0"

__all__ = ["dot_general", "einsum", "matmul"]
