"""NumPy's products that lay their operands out for one ``jaxmm.dot_general``: ``dot``,
``tensordot``, ``vdot``, ``inner`` and ``outer`` (the broadcasting ones, ``matvec``, ``vecmat``
and ``vecdot``, are ``matmul``'s plan: :mod:`jaxmm._vectorized`), plus reshapes, transposes and
conjugations.

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
from typing import Any

import jax
from jax import lax

from ._checks import as_array, dot_dtype, result_dtype
from ._dot_general import apply_dot_general
from ._options import Options
from ._scope import named, staged
from ._typing import ArrayLike, Dimensions, DTypeLike, OutSharding, PrecisionLike, ResidualDTypeLike

Axes = tuple[tuple[int, ...], tuple[int, ...]]  # (lhs axes, rhs axes)
_NONE: Axes = ((), ())  # no batch (or no contracting) axes


@named("jaxmm.dot")
def dot(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    reduction_order: Any = None,
    residual_dtype: ResidualDTypeLike = None,
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
    opts = Options.of(
        precision,
        preferred_element_type,
        out_sharding,
        residual_dtype,
        residual_scaling,
        reduction_order=reduction_order,
    )
    return apply_dot(a, b, opts)


def apply_dot(a: ArrayLike, b: ArrayLike, options: Options) -> jax.Array:
    """:func:`dot` by ``options.mechanism``."""
    a, b = as_array(a, "dot", 0), as_array(b, "dot", 1)
    contract: Axes
    if a.ndim == 0 or b.ndim == 0:
        contract = _NONE  # a scaling: every axis is free
    else:
        contract = ((a.ndim - 1,), (max(b.ndim - 2, 0),))
    return _product(a, b, (contract, _NONE), options)


@named("jaxmm.tensordot")
def tensordot(
    a: ArrayLike,
    b: ArrayLike,
    axes: int | Sequence[int] | Sequence[Sequence[int]] = 2,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    residual_dtype: ResidualDTypeLike = None,
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
    opts = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
    )
    return apply_tensordot(a, b, axes, opts)


def apply_tensordot(a: ArrayLike, b: ArrayLike, axes: Any, options: Options) -> jax.Array:
    """:func:`tensordot` by ``options.mechanism``."""
    a, b = as_array(a, "tensordot", 0), as_array(b, "tensordot", 1)
    return _product(a, b, (_tensordot_axes(axes, a.shape, b.shape), _NONE), options)


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
    residual_dtype: ResidualDTypeLike = None,
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
    opts = Options.of(precision, preferred_element_type, None, residual_dtype, residual_scaling)
    return apply_vdot(a, b, opts)


def apply_vdot(a: ArrayLike, b: ArrayLike, options: Options) -> jax.Array:
    """:func:`vdot` by ``options.mechanism``."""
    a, b = as_array(a, "vdot", 0), as_array(b, "vdot", 1)
    a, b = lax.reshape(conj(a), (a.size,)), lax.reshape(b, (b.size,))
    return _product(a, b, (((0,), (0,)), _NONE), options)


@named("jaxmm.inner")
def inner(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: ResidualDTypeLike = None,
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
    opts = Options.of(precision, preferred_element_type, None, residual_dtype, residual_scaling)
    return apply_inner(a, b, opts)


def apply_inner(a: ArrayLike, b: ArrayLike, options: Options) -> jax.Array:
    """:func:`inner` by ``options.mechanism``."""
    a, b = as_array(a, "inner", 0), as_array(b, "inner", 1)
    contract: Axes = _NONE if a.ndim == 0 or b.ndim == 0 else ((a.ndim - 1,), (b.ndim - 1,))
    return _product(a, b, (contract, _NONE), options)


@named("jaxmm.outer")
def outer(
    a: ArrayLike,
    b: ArrayLike,
    out: None = None,
    *,
    residual_dtype: ResidualDTypeLike = None,
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
    return apply_outer(a, b, out, Options.of(None, None, None, residual_dtype, residual_scaling))


def apply_outer(a: ArrayLike, b: ArrayLike, out: None, options: Options) -> jax.Array:
    """:func:`outer` by ``options.mechanism``."""
    if out is not None:
        raise NotImplementedError("The 'out' argument to jaxmm.outer is not supported.")
    a, b = as_array(a, "outer", 0), as_array(b, "outer", 1)
    a, b = lax.reshape(a, (a.size,)), lax.reshape(b, (b.size,))
    return _product(a, b, (_NONE, _NONE), options)


def conj(x: jax.Array) -> jax.Array:
    """``x`` conjugated if complex (the operand ``vdot``, ``vecdot`` and ``vecmat`` conjugate)."""
    return lax.conj(x) if jax.numpy.iscomplexobj(x) else x


@staged(2, 3)
def _product(a: jax.Array, b: jax.Array, dimensions: Dimensions, options: Options) -> jax.Array:
    """``dot_general`` by ``options.mechanism`` in the result dtype ``jnp`` gives (the promoted
    operand dtype, or ``preferred_element_type``)."""
    result = result_dtype((a, b), options.preferred_element_type)
    dot_options = options.replace(
        preferred_element_type=dot_dtype((a, b), result, options.preferred_element_type)
    )
    y = apply_dot_general(a, b, dimensions, dot_options)
    return y if y.dtype == result else lax.convert_element_type(y, result)
