"""The rest of NumPy's product family, each one ``jaxmm.dot_general`` (or ``jaxmm.matmul``'s layout
plan) plus reshapes, transposes and conjugations.

Every backward pass here is the one rule of ``_dot_general``, read for the axes each function
contracts: for ``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]``,

    dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]        dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]

(2-D: ``dL = dY Rᵀ``, ``dR = Lᵀ dY``). What surrounds the product is linear and cheap, and JAX
differentiates it: a reshape's cotangent is reshaped back, a transpose's is transposed back, and
``conj`` is its own transpose, so the operand conjugated in the forward pass (``vdot``, ``vecdot``,
``vecmat``) receives the conjugate of the rule's cotangent, e.g. for ``y = Σ_k conj(a_k) b_k``:
``da = conj(dy · b)``, ``db = conj(a) · dy``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
from jax import lax

from ._checks import (
    as_array,
    canonicalize_precision,
    canonicalize_preferred_element_type,
    result_and_dot_dtypes,
)
from ._dot_general import apply_dot_general, product
from ._matmul import apply_matmul
from ._residuals import ResidualFormat, canonicalize_residual
from ._scope import named
from ._typing import ArrayLike, DTypeLike, PrecisionLike

Axes = tuple[tuple[int, ...], tuple[int, ...]]  # (lhs axes, rhs axes)
_NONE: Axes = ((), ())  # no batch (or no contracting) axes


@named("jaxmm.dot")
def dot(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: Any = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Dot product with the semantics of ``jnp.dot``, computed by ``jaxmm.dot_general``.

    Args:
      a: array of shape ``(..., n)``, or a 0-d array (then ``a * b``).
      b: array of shape ``(n,)`` or ``(..., n, k)``, or a 0-d array.
      precision, preferred_element_type, out_sharding: as in ``jnp.dot``.
      residual_dtype, residual_scaling: jaxmm's own options, off by default: how the operands are
        saved for the backward pass (see :func:`jaxmm.dot_general`).

    Returns:
      ``Y[i, j, k] = Σ_c a[i, c] b[j, c, k]`` (``i`` all of ``a``'s leading axes, ``j`` all of
      ``b``'s) of shape ``a.shape[:-1] + b.shape[:-2] + b.shape[-1:]``: no broadcasting, unlike
      ``matmul``, the leading axes of both are kept; for a 1-D ``b`` the shape is
      ``a.shape[:-1]``.

    Backward (2-D, ``Y = A B``): ``dA = dY Bᵀ``, ``dB = Aᵀ dY``; in general
    ``dA[i, c] = Σ_j dY[i, j] B[c, j]`` and ``dB[c, j] = Σ_i A[i, c] dY[i, j]``, with ``i`` all of
    ``a``'s free axes and ``j`` all of ``b``'s.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.dot(jnp.ones((2, 3, 4)), jnp.ones((5, 4, 6))).shape
      (2, 3, 5, 6)
    """
    a, b = as_array(a, "dot", 0), as_array(b, "dot", 1)
    contract: Axes
    if a.ndim == 0 or b.ndim == 0:
        contract = _NONE  # a scaling: every axis is free
    else:
        contract = ((a.ndim - 1,), (max(b.ndim - 2, 0),))
    return _product(
        a,
        b,
        (contract, _NONE),
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


@named("jaxmm.tensordot")
def tensordot(
    a: ArrayLike,
    b: ArrayLike,
    axes: int | Sequence[int] | Sequence[Sequence[int]] = 2,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: Any = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Tensor contraction with the semantics of ``jnp.tensordot``, by ``jaxmm.dot_general``.

    Args:
      a: array of any rank.
      b: array of any rank.
      axes: an int ``n`` (contract the last ``n`` axes of ``a`` with the first ``n`` of ``b``,
        in order), a pair of ints, or a pair of equally long sequences of ints (negative axes
        count from the end).
      precision, preferred_element_type, out_sharding: as in ``jnp.tensordot``.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      ``Y[i, j] = Σ_c a[i, c] b[c, j]`` of shape ``a``'s free axes then ``b``'s free axes.

    Backward: ``dA[i, c] = Σ_j dY[i, j] B[c, j]`` and ``dB[c, j] = Σ_i A[i, c] dY[i, j]``
    (``dA = dY Bᵀ``, ``dB = Aᵀ dY`` with the axes grouped).

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.tensordot(jnp.ones((2, 3, 4)), jnp.ones((4, 3, 5)), axes=((1, 2), (1, 0))).shape
      (2, 5)
    """
    a, b = as_array(a, "tensordot", 0), as_array(b, "tensordot", 1)
    return _product(
        a,
        b,
        (_tensordot_axes(axes, a.shape, b.shape), _NONE),
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


def _tensordot_axes(axes: Any, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> Axes:
    """``axes`` in the forms ``jnp.tensordot`` takes, as (a's, b's) contracting axes."""
    a_ndim, b_ndim = len(a_shape), len(b_shape)
    if type(axes) is int:
        if axes < 0:  # jnp reads a negative count as 0; refused rather than guessed
            raise ValueError(f"tensordot axes must be nonnegative, got {axes}.")
        if axes > min(a_ndim, b_ndim):
            raise TypeError(
                f"Number of tensordot axes (axes {axes}) exceeds input ranks ({a_shape} and "
                f"{b_shape})."
            )
        return tuple(range(a_ndim - axes, a_ndim)), tuple(range(axes))
    if isinstance(axes, (tuple, list)) and len(axes) == 2:
        a_axes, b_axes = axes
        if isinstance(a_axes, int) and isinstance(b_axes, int):
            return (_axis(a_axes, a_shape),), (_axis(b_axes, b_shape),)
        if isinstance(a_axes, (tuple, list)) and isinstance(b_axes, (tuple, list)):
            if len(a_axes) != len(b_axes):
                raise TypeError(
                    f"tensordot requires axes lists to have equal length, got {a_axes} and "
                    f"{b_axes}."
                )
            return (
                tuple(_axis(axis, a_shape) for axis in a_axes),
                tuple(_axis(axis, b_shape) for axis in b_axes),
            )
        raise TypeError(
            "tensordot requires both axes lists to be either ints, tuples or lists, got "
            f"{a_axes} and {b_axes}."
        )
    raise TypeError(
        "tensordot axes argument must be an int, a pair of ints, or a pair of lists/tuples of "
        f"ints, got {axes!r}."
    )


def _axis(axis: Any, shape: tuple[int, ...]) -> int:
    """``axis`` of an array of ``shape`` as a nonnegative int, or the ValueError JAX raises."""
    index = operator.index(axis)
    if not -len(shape) <= index < len(shape):
        raise ValueError(
            f"axis {index} is out of bounds for array of dimension {len(shape)} (shape {shape})."
        )
    return index % len(shape)


@named("jaxmm.vdot")
def vdot(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Conjugate dot product of two flattened arrays, as ``jnp.vdot``, by ``jaxmm.dot_general``.

    Args:
      a: array of any shape, conjugated if complex, flattened.
      b: array of any shape with as many elements as ``a``, flattened.
      precision, preferred_element_type: as in ``jnp.vdot``.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      The 0-d array ``y = Σ_k conj(a_k) b_k``.

    Backward: ``da = conj(dy · b)`` and ``db = conj(a) · dy``, each in its operand's shape.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.vdot(jnp.array([1j, 2.0]), jnp.array([1j, 3.0]))
      Array(7.+0.j, dtype=complex64)
    """
    a, b = as_array(a, "vdot", 0), as_array(b, "vdot", 1)
    return _product(
        lax.reshape(_conj(a), (a.size,)),
        lax.reshape(b, (b.size,)),
        (((0,), (0,)), _NONE),
        precision,
        preferred_element_type,
        None,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


@named("jaxmm.inner")
def inner(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Inner product over the last axes, as ``jnp.inner`` (no conjugation), by
    ``jaxmm.dot_general``.

    Args:
      a: array of shape ``(..., n)``, or a 0-d array (then ``a * b``).
      b: array of shape ``(..., n)``, or a 0-d array.
      precision, preferred_element_type: as in ``jnp.inner``.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      ``Y[i, j] = Σ_c a[i, c] b[j, c]`` of shape ``a.shape[:-1] + b.shape[:-1]``.

    Backward: ``dA = dY B`` and ``dB = dYᵀ A`` (``dA[i, c] = Σ_j dY[i, j] B[j, c]``).

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.inner(jnp.ones((2, 3)), jnp.ones((5, 3))).shape
      (2, 5)
    """
    a, b = as_array(a, "inner", 0), as_array(b, "inner", 1)
    contract: Axes = _NONE if a.ndim == 0 or b.ndim == 0 else ((a.ndim - 1,), (b.ndim - 1,))
    return _product(
        a,
        b,
        (contract, _NONE),
        precision,
        preferred_element_type,
        None,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


@named("jaxmm.outer")
def outer(
    a: ArrayLike,
    b: ArrayLike,
    out: None = None,
    *,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Outer product of two flattened arrays, as ``jnp.outer``, by ``jaxmm.dot_general``.

    Args:
      a: array of any shape, flattened to ``(m,)``.
      b: array of any shape, flattened to ``(n,)``.
      out: unsupported, as in JAX.
      residual_dtype, residual_scaling: jaxmm's own options (see :func:`jaxmm.dot_general`).

    Returns:
      ``Y[i, j] = a_i b_j`` of shape ``(a.size, b.size)``.

    Backward: ``da = dY b`` and ``db = dYᵀ a`` (``da_i = Σ_j dY[i, j] b_j``), reshaped to the
    operands' shapes.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> jaxmm.outer(jnp.array([1.0, 2.0]), jnp.array([1.0, 2.0, 3.0]))
      Array([[1., 2., 3.],
             [2., 4., 6.]], dtype=float32)
    """
    if out is not None:
        raise NotImplementedError("The 'out' argument to jaxmm.outer is not supported.")
    a, b = as_array(a, "outer", 0), as_array(b, "outer", 1)
    return _product(
        lax.reshape(a, (a.size,)),
        lax.reshape(b, (b.size,)),
        (_NONE, _NONE),
        None,
        None,
        None,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


@named("jaxmm.matvec")
def matvec(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    residual_dtype: DTypeLike | None = None,
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
    x1, x2 = as_array(x1, "matvec", 0), as_array(x2, "matvec", 1)
    _check_vectorized("matvec", x1, x2, 2, 1, -1)
    y = apply_matmul(
        product,
        x1,
        lax.expand_dims(x2, (x2.ndim,)),  # (..., n, 1): a batch of columns
        None,
        None,
        None,
        canonicalize_residual(residual_dtype, residual_scaling),
    )
    return lax.squeeze(y, (y.ndim - 1,))


@named("jaxmm.vecmat")
def vecmat(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    residual_dtype: DTypeLike | None = None,
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
    x1, x2 = as_array(x1, "vecmat", 0), as_array(x2, "vecmat", 1)
    _check_vectorized("vecmat", x1, x2, 1, 2, -2)
    y = apply_matmul(
        product,
        lax.expand_dims(_conj(x1), (x1.ndim - 1,)),  # (..., 1, n): a batch of rows
        x2,
        None,
        None,
        None,
        canonicalize_residual(residual_dtype, residual_scaling),
    )
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
    residual_dtype: DTypeLike | None = None,
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
    x1, x2 = as_array(x1, "vecdot", 0), as_array(x2, "vecdot", 1)
    if x1.shape[axis] != x2.shape[axis]:  # an axis out of range is an IndexError, as in jnp
        raise ValueError(
            f"vecdot axes must match: got shapes {x1.shape} and {x2.shape} with axis={axis}."
        )
    x1 = _move_to_end(_conj(x1), axis % x1.ndim)
    x2 = _move_to_end(x2, axis % x2.ndim)
    _check_vectorized("vecdot", x1, x2, 1, 1, -1)
    # (..., 1, n) @ (..., n, 1): each pair of vectors is a 1x1 matrix product, the leading axes
    # broadcast by matmul's plan.
    y = apply_matmul(
        product,
        lax.expand_dims(x1, (x1.ndim - 1,)),
        lax.expand_dims(x2, (x2.ndim,)),
        precision,
        preferred_element_type,
        None,
        canonicalize_residual(residual_dtype, residual_scaling),
    )
    return lax.squeeze(y, (y.ndim - 2, y.ndim - 1))


def _conj(x: jax.Array) -> jax.Array:
    return lax.conj(x) if jax.numpy.iscomplexobj(x) else x


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


# One program when called un-jitted, inlined when traced (as in ``_matmul``).
@partial(jax.jit, static_argnums=(2, 3, 4, 5, 6), inline=True)
def _jitted_product(
    a: jax.Array,
    b: jax.Array,
    dimension_numbers: Any,
    precision: Any,
    preferred_element_type: Any,
    out_sharding: Any,
    res: ResidualFormat | None,
) -> jax.Array:
    result_dtype: Any
    result_dtype, dot_dtype = result_and_dot_dtypes(a, b, preferred_element_type)
    y = apply_dot_general(product, a, b, dimension_numbers, precision, dot_dtype, out_sharding, res)
    return y if y.dtype == result_dtype else lax.convert_element_type(y, result_dtype)


def _product(
    a: jax.Array,
    b: jax.Array,
    dimension_numbers: Any,
    precision: PrecisionLike,
    preferred_element_type: DTypeLike | None,
    out_sharding: Any,
    residual: ResidualFormat | None,
) -> jax.Array:
    """``jaxmm.dot_general`` in the result dtype ``jnp`` gives (the promoted operand dtype, or
    ``preferred_element_type``)."""
    product: jax.Array = _jitted_product(
        a,
        b,
        dimension_numbers,
        canonicalize_precision(precision),
        canonicalize_preferred_element_type(preferred_element_type),
        out_sharding,
        residual,
    )
    return product
