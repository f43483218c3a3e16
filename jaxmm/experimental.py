"""jaxmm's products as one JAX primitive: forward mode (``jax.jvp``, ``jax.jacfwd``,
``jax.linearize``) as well as reverse mode, each with a rule derived by hand.

``jaxmm.matmul``, ``jaxmm.dot_general`` and ``jaxmm.einsum`` support forward mode with their
default options, but with ``residual_dtype`` they are ``jax.custom_vjp`` functions, for which JAX
refuses it. The functions here have the same signatures, results, dtypes, errors and options,
and the same backward rules, but are built on one primitive
(``jax.experimental.hijax.HiPrim``, called ``VJPHiPrimitive`` before JAX 0.11.2) that also
carries a hand-derived JVP, ``dY = dL·R + L·dR`` (derivation in ``jaxmm/_primitive.py``), a
batching rule, a transpose rule and a checkpointing rule. The primitive API is experimental in
JAX, and so is this module: it needs JAX 0.10.2 or newer.

For ``Y = W X``::

  forward  (jvp):  dY = dW X + W dX
  backward (vjp):  dW = dY Xᵀ,   dX = Wᵀ dY     (the transpose of the forward rule)

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxmm import experimental
  >>> w, x = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.ones((2, 1))
  >>> y, dy = jax.jvp(experimental.matmul, (w, x), (jnp.eye(2), jnp.zeros((2, 1))))
  >>> dy  # dW X with dW = I
  Array([[1.],
         [1.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import jax

from ._compat import HIJAX_BASE, HIJAX_MISSING

if HIJAX_BASE is None:  # pragma: no cover - depends on the installed JAX
    raise ImportError(HIJAX_MISSING.format(version=jax.__version__))

from ._dot_general import apply_dot_general
from ._einsum import OptimizeLike, apply_einsum, num_operands
from ._matmul import apply_matmul
from ._primitive import primitive_dot_general
from ._residuals import canonicalize_residual
from ._scope import named
from ._typing import ArrayLike, DotDimensionNumbers, DTypeLike, PrecisionLike

__all__ = ["dot_general", "einsum", "matmul"]


@named("jaxmm.experimental.dot_general")
def dot_general(
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    *,
    out_sharding: Any = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.dot_general` (arguments, result, dtypes, errors, backward rule) as one
    primitive that also has a hand-derived forward rule.

    Args, Returns: as :func:`jaxmm.dot_general`.

    Forward (``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]``)::

      dY[b, i, j] = Σ_c dL[b, i, c] R[b, c, j] + Σ_c L[b, i, c] dR[b, c, j]

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmm import experimental
      >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> dn = (((1,), (0,)), ((), ()))
      >>> jax.jvp(lambda x: experimental.dot_general(x, w, dn), (x,), (x,))[1][0]
      Array([3., 3., 3., 3.], dtype=float32)
    """
    return apply_dot_general(
        primitive_dot_general,
        lhs,
        rhs,
        dimension_numbers,
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


@named("jaxmm.experimental.matmul")
def matmul(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: Any = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.matmul` (NumPy semantics of ``jnp.matmul``) with every product computed by
    :func:`jaxmm.experimental.dot_general`.

    Args, Returns: as :func:`jaxmm.matmul`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmm import experimental
      >>> a, b = jnp.ones((2, 3)), jnp.ones((3,))
      >>> jax.jacfwd(experimental.matmul, argnums=1)(a, b)
      Array([[1., 1., 1.],
             [1., 1., 1.]], dtype=float32)
    """
    return apply_matmul(
        primitive_dot_general,
        a,
        b,
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


@named("jaxmm.experimental.einsum")
def einsum(
    subscripts: str | ArrayLike,
    /,
    *operands: ArrayLike,
    out: None = None,
    optimize: OptimizeLike = "auto",
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: Any = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.einsum` (any number of operands) with every pairwise contraction computed by
    :func:`jaxmm.experimental.dot_general`.

    Args, Returns: as :func:`jaxmm.einsum`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmm import experimental
      >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> y, linear = jax.linearize(lambda w: experimental.einsum("ij,jk->ik", x, w), w)
      >>> linear(2 * w)[0]
      Array([6., 6., 6., 6.], dtype=float32)
    """
    return apply_einsum(
        primitive_dot_general,
        subscripts,
        operands,
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling, num_operands(subscripts, operands)),
        optimize=optimize,
        out=out,
    )
