"""jaxmm's products as ``jax.custom_vjp`` functions: the seed's rules as JAX users write them.

Every function of :mod:`jaxmm` (all but ``linear_cross_entropy``), with the same signature,
result, dtypes, errors, options and layout code, each product one ``jax.custom_vjp`` function
whose forward function, ``fwd`` and ``bwd`` are in ``jaxmm/_custom_vjp.py`` (one screen). For
``Y = W X``::

  fwd:  Y = W X, saving W and X
  bwd:  dW = dY Xᵀ,   dX = Wᵀ dY

Reverse mode only: ``jax.jvp`` raises JAX's own ``custom_vjp`` error, and under ``jax.vmap`` JAX
runs ``bwd`` once per mapped example and sums afterwards (for a per-token ``v @ W`` that is one
``W``-sized gradient per token). The default functions of :mod:`jaxmm` fold ``vmap`` into the
product and have forward mode; use these where a ``custom_vjp`` is what you want to read, copy or
build on. :func:`dot_general_fwd` and :func:`dot_general_bwd` are the pair for your own
``jax.custom_vjp``.

Example:
  >>> import jax, jax.numpy as jnp, jaxmm
  >>> w, x = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.ones((2, 1))
  >>> jax.grad(lambda w: jaxmm.custom_vjp.matmul(w, x).sum())(w)  # dW = dY Xᵀ
  Array([[1., 1.],
         [1., 1.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import jax

from . import _custom_vjp, _dot_general
from ._namespace import Family, family
from ._options import Options
from ._typing import (
    ArrayLike,
    DotDimensionNumbers,
    DTypeLike,
    OutSharding,
    PrecisionLike,
    ResidualDTypeLike,
)

__all__ = [*Family._fields, "dot_general_bwd", "dot_general_fwd"]


dot, dot_general, einsum, inner, matmul, matvec, outer, tensordot, vdot, vecdot, vecmat = family(
    _custom_vjp.dot_general, __name__
)


def dot_general_fwd(
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    *,
    out_sharding: OutSharding = None,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> tuple[jax.Array, Any]:
    """The forward rule of :func:`jaxmm.dot_general`: its result and the residuals
    :func:`dot_general_bwd` reads (both operands, narrowed as ``residual_dtype`` says).

    Arguments as :func:`jaxmm.dot_general`'s. Returns ``(y, residuals)``: ``y`` as
    ``lax.dot_general(lhs, rhs, dimension_numbers)``, ``residuals`` a pytree to hand back.

    Example, a ``jax.custom_vjp`` layer ``tanh(x @ w)`` whose backward pass is jaxmm's rule
    after the derivative of ``tanh``:

      >>> import jax, jax.numpy as jnp
      >>> from jaxmm.custom_vjp import dot_general_bwd, dot_general_fwd
      >>> dn = (((1,), (0,)), ((), ()))
      >>> @jax.custom_vjp
      ... def layer(x, w):
      ...     return jnp.tanh(x @ w)
      >>> def layer_fwd(x, w):
      ...     y, residuals = dot_general_fwd(x, w, dn)
      ...     z = jnp.tanh(y)
      ...     return z, (residuals, z)
      >>> def layer_bwd(saved, dz):
      ...     residuals, z = saved
      ...     return dot_general_bwd(residuals, dz * (1 - z**2))  # (dx, dw)
      >>> layer.defvjp(layer_fwd, layer_bwd)
      >>> x, w = jnp.ones((2, 3)), jnp.full((3, 4), 0.1)
      >>> jax.grad(lambda w: layer(x, w).sum())(w)[0]
      Array([1.8302739, 1.8302739, 1.8302739, 1.8302739], dtype=float32)
    """
    lhs, rhs, dimensions = _dot_general.checked_operands(lhs, rhs, dimension_numbers)
    options = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
    )
    return _custom_vjp.fwd(lhs, rhs, dimensions, options)


def dot_general_bwd(residuals: Any, cotangent: jax.Array) -> tuple[Any, Any]:
    """The backward rule of :func:`jaxmm.dot_general`: ``(dlhs, drhs)`` for the result's
    ``cotangent``, from :func:`dot_general_fwd`'s residuals (``None`` for an integer operand,
    which has no cotangent)::

      dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]      (2-D: dL = dY Rᵀ)
      dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]      (2-D: dR = Lᵀ dY)
    """
    return _custom_vjp.bwd(residuals, cotangent)
