"""NumPy's vectorized products, ``matvec``, ``vecmat`` and ``vecdot``: each one ``jaxmm.matmul``
layout plan (leading axes broadcast, never materialised) of its operands made matrices.

Their backward passes are ``matmul``'s (:mod:`jaxmm._matmul`) read for the vectors: a column
``(n, 1)`` or a row ``(1, n)`` is a matrix, and squeezing the unit axis is linear (its cotangent
is the cotangent re-expanded). ``vecmat`` and ``vecdot`` conjugate their first operand, which
then receives the conjugate of the rule's cotangent (:mod:`jaxmm._products`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax import lax

from ._checks import as_array
from ._matmul import apply_matmul
from ._options import Options
from ._products import conj
from ._scope import named
from ._typing import ArrayLike, DTypeLike, PrecisionLike, ResidualDTypeLike


@named("jaxmm.matvec")
def matvec(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Batched matrix-vector product, as ``jnp.matvec``, by ``jaxmm.matmul``'s layout plan.

    Args:
      x1: array of shape ``(..., m, n)``.
      x2: array of shape ``(..., n)``; the leading axes broadcast against ``x1``'s.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      ``y[..., m] = Σ_n x1[..., m, n] x2[..., n]`` of shape ``(..., m)``.

    Backward: ``dx1 = dy x2ᵀ`` (``dx1[..., m, n] = dy[..., m] x2[..., n]``) and
    ``dx2 = x1ᵀ dy``, each summed over the axes along which it was broadcast.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.matvec(jnp.ones((5, 2, 3)), jnp.ones((5, 3))).shape
      (5, 2)
    """
    return apply_matvec(x1, x2, Options.of(None, None, None, residual_dtype, residual_scaling))


def apply_matvec(x1: ArrayLike, x2: ArrayLike, options: Options) -> jax.Array:
    """:func:`matvec` by ``options.mechanism``."""
    x1, x2 = as_array(x1, "matvec", 0), as_array(x2, "matvec", 1)
    _check_vectorized("matvec", x1, x2, 2, 1, -1)
    x2 = lax.expand_dims(x2, (x2.ndim,))  # (..., n, 1): a batch of columns
    y = apply_matmul(x1, x2, options)
    return lax.squeeze(y, (y.ndim - 1,))


@named("jaxmm.vecmat")
def vecmat(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Batched conjugate vector-matrix product, as ``jnp.vecmat``, by ``jaxmm.matmul``'s plan.

    Args:
      x1: array of shape ``(..., n)``, conjugated if complex.
      x2: array of shape ``(..., n, m)``; the leading axes broadcast against ``x1``'s.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      ``y[..., m] = Σ_n conj(x1[..., n]) x2[..., n, m]`` of shape ``(..., m)``.

    Backward: ``dx1 = conj(x2 dy)`` (``dx1[..., n] = conj(Σ_m x2[..., n, m] dy[..., m])``) and
    ``dx2 = conj(x1) dyᵀ`` (an outer product), each summed over its broadcast axes.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.vecmat(jnp.ones((5, 3)), jnp.ones((5, 3, 2))).shape
      (5, 2)
    """
    return apply_vecmat(x1, x2, Options.of(None, None, None, residual_dtype, residual_scaling))


def apply_vecmat(x1: ArrayLike, x2: ArrayLike, options: Options) -> jax.Array:
    """:func:`vecmat` by ``options.mechanism``."""
    x1, x2 = as_array(x1, "vecmat", 0), as_array(x2, "vecmat", 1)
    _check_vectorized("vecmat", x1, x2, 1, 2, -2)
    x1 = lax.expand_dims(conj(x1), (x1.ndim - 1,))  # (..., 1, n): a batch of rows
    y = apply_matmul(x1, x2, options)
    return lax.squeeze(y, (y.ndim - 2,))


@named("jaxmm.vecdot")
def vecdot(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    axis: int = -1,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Batched conjugate dot product along ``axis``, as ``jnp.vecdot``, by ``jaxmm.matmul``'s plan.

    Args:
      x1: array of shape ``(..., n, ...)``, ``n`` at ``axis``; conjugated if complex.
      x2: array of shape ``(..., n, ...)``; the other axes broadcast against ``x1``'s.
      axis: the axis contracted in both.
      precision, preferred_element_type: as in ``jnp.vecdot``.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      ``y[...] = Σ_n conj(x1[..., n]) x2[..., n]``, the other axes broadcast together.

    Backward: ``dx1[..., n] = conj(dy[...] x2[..., n])`` and ``dx2[..., n] = conj(x1[..., n])
    dy[...]``, each summed over the axes along which it was broadcast.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.vecdot(jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([1.0, 1.0]))
      Array([3., 7.], dtype=float32)
    """
    opts = Options.of(precision, preferred_element_type, None, residual_dtype, residual_scaling)
    return apply_vecdot(x1, x2, axis, opts)


def apply_vecdot(x1: ArrayLike, x2: ArrayLike, axis: int, options: Options) -> jax.Array:
    """:func:`vecdot` by ``options.mechanism``."""
    x1, x2 = as_array(x1, "vecdot", 0), as_array(x2, "vecdot", 1)
    if x1.shape[axis] != x2.shape[axis]:  # an axis out of range is an IndexError, as in jnp
        raise ValueError(
            f"vecdot axes must match: got shapes {x1.shape} and {x2.shape} with axis={axis}."
        )
    x1 = _move_to_end(conj(x1), axis % x1.ndim)
    x2 = _move_to_end(x2, axis % x2.ndim)
    _check_vectorized("vecdot", x1, x2, 1, 1, -1)
    # (..., 1, n) @ (..., n, 1): each pair of vectors is a 1x1 matrix product, the leading axes
    # broadcast by matmul's plan.
    x1, x2 = lax.expand_dims(x1, (x1.ndim - 1,)), lax.expand_dims(x2, (x2.ndim,))
    y = apply_matmul(x1, x2, options)
    return lax.squeeze(y, (y.ndim - 2, y.ndim - 1))


def _move_to_end(x: jax.Array, axis: int) -> jax.Array:
    if axis == x.ndim - 1:
        return x
    return lax.transpose(x, (*(d for d in range(x.ndim) if d != axis), axis))


def _check_vectorized(
    name: str, x1: jax.Array, x2: jax.Array, x1_core: int, x2_core: int, x2_axis: int
) -> None:
    """The ValueError ``jnp.vectorize`` raises, before any work, for operands without their core
    axes (``x1_core`` and ``x2_core`` trailing axes), whose contracted axes (``x1``'s last,
    ``x2``'s ``x2_axis``) differ, or whose leading axes do not broadcast."""
    shapes = f"operands of shapes {x1.shape} and {x2.shape}"
    if x1.ndim < x1_core or x2.ndim < x2_core:
        raise ValueError(f"{name} needs at least {x1_core} and {x2_core} dimensions, got {shapes}.")
    if x1.shape[-1] != x2.shape[x2_axis]:
        raise ValueError(
            f"{name}: inconsistent size of the contracted dimension, {x1.shape[-1]} vs "
            f"{x2.shape[x2_axis]}, for {shapes}."
        )
    try:
        np.broadcast_shapes(x1.shape[: x1.ndim - x1_core], x2.shape[: x2.ndim - x2_core])
    except ValueError:
        raise ValueError(f"{name}: the leading axes of {shapes} do not broadcast.") from None
