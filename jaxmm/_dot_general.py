"""``dot_general`` with a hand-derived backward pass: the public function, the one entry point
every layout and mechanism shares, and the choice of mechanism.

The rules, derived, are in :mod:`jaxmm._rules`; the mechanisms that give them to JAX are the
primitive of :mod:`jaxmm._bilinear` (the default), the ``jax.custom_vjp`` of
:mod:`jaxmm._custom_vjp` (the default for operands saved narrowed, ``residual_dtype``, and the
mechanism of ``jaxmm.custom_vjp``) and the hijax primitive of :mod:`jaxmm._primitive`
(``jaxmm.experimental``).
"""

from __future__ import annotations

from typing import Any

import jax

from ._bilinear import bilinear_dot_general
from ._checks import as_array, canonicalize_dimension_numbers, check_dot_general
from ._compat import cast_to_varying, varying_axes
from ._custom_vjp import dot_general as custom_vjp_dot_general
from ._options import Options
from ._scope import named, staged
from ._typing import (
    ArrayLike,
    Dimensions,
    DotDimensionNumbers,
    DTypeLike,
    OutSharding,
    PrecisionLike,
    ResidualDTypeLike,
)


@named("jaxmm.dot_general")
def dot_general(
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    *,
    out_sharding: OutSharding = None,
    reduction_order: Any = None,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """General dot product, as ``lax.dot_general``, whose backward pass is derived by hand.

    A drop-in for :func:`jax.lax.dot_general` (same arguments, result, dtypes and errors), usable as
    the ``dot_general=`` of Flax layers. Its derivatives (the backward rule below and, with the
    default options, the forward rule ``dY = dL·R + L·dR``) are written out by hand from their
    derivation instead of being left to JAX's autodiff.

    Args:
      lhs: array of any rank ``(..., )``.
      rhs: array of any rank ``(..., )``.
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``, each a
        sequence of axis indices. Paired contracting axes are summed over; paired batch axes are
        kept; every other axis is free.
      precision: as in ``lax.dot_general``; applies to the backward products too.
      preferred_element_type: accumulation and result dtype, as in ``lax.dot_general``; the
        backward products accumulate in it too, and each cotangent is cast back to its operand's
        dtype.
      out_sharding: sharding of the result, as in ``lax.dot_general``.
      reduction_order: JAX's (0.12.1 and newer) summation-order control; jaxmm takes only
        ``None`` (NotImplementedError otherwise: its backward products contract other axes).
      residual_dtype: jaxmm's own option, off (``None``) by default: the dtype in which to save
        the operands for the backward pass, one of ``jnp.bfloat16`` and ``jnp.float16`` (half
        the memory of float32), ``jnp.float8_e4m3fn`` and ``jnp.float8_e5m2`` (a quarter), or
        ``jnp.float32`` (half of float64). Each real floating operand wider than it is saved
        narrowed and widened again in the backward pass: the forward result is exact, the
        gradient reads operands rounded to that dtype (relative error per entry 2^-8 bfloat16,
        2^-11 float16, 2^-4 e4m3, 2^-3 e5m2). Where the dtype has a narrower exponent range
        than the operand (float16, fp8), the operand is divided by a power of two chosen from
        its largest magnitude before narrowing, and multiplied back after, so that nothing
        overflows and only entries far below the largest (2e-12 of it in float16, 2e-5 in e4m3)
        are flushed to zero; NaN and inf stay as they are. Complex and integer operands are
        saved as they are. Any other dtype is a TypeError. The saved operands are named
        ``"jaxmm_lhs"`` / ``"jaxmm_rhs"`` for :func:`jax.checkpoint` policies
        (``jax.checkpoint_policies.save_only_these_names("jaxmm_lhs", "jaxmm_rhs")``).
      residual_scaling: ``"tensor"`` (default): one scale per saved operand; ``"channel"``: one
        per index of its batch and contracting axes (the maximum taken over its free axes), so
        that a channel of small values is not flushed because another holds large ones.

    Returns:
      Array of shape ``batch + lhs_free + rhs_free``: the batch axes (in the order of
      ``lhs_batch``), then the lhs free axes, then the rhs free axes, each in increasing order.

    Backward (``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]``)::

      dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]      (2-D: dL = dY Rᵀ)
      dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]      (2-D: dR = Lᵀ dY)

    Example:
      >>> import jax, jax.numpy as jnp, jaxmm
      >>> x = jnp.arange(6.0).reshape(2, 3)
      >>> w = jnp.ones((3, 4))
      >>> jaxmm.dot_general(x, w, (((1,), (0,)), ((), ()))).shape
      (2, 4)
      >>> jax.grad(lambda w: jaxmm.dot_general(x, w, (((1,), (0,)), ((), ()))).sum())(w)[:, 0]
      Array([3., 5., 7.], dtype=float32)

      Saving the operands in float8 (a quarter of the memory), scaled so that 1e5 fits:

      >>> big = jnp.full((2, 3), 1e5)
      >>> f8 = dict(residual_dtype=jnp.float8_e4m3fn)
      >>> jax.grad(lambda w: jaxmm.dot_general(big, w, (((1,), (0,)), ((), ())), **f8).sum())(w)
      Array([[196608., 196608., 196608., 196608.],
             [196608., 196608., 196608., 196608.],
             [196608., 196608., 196608., 196608.]], dtype=float32)
    """
    return apply_dot_general(
        lhs,
        rhs,
        dimension_numbers,
        Options.of(
            precision,
            preferred_element_type,
            out_sharding,
            residual_dtype,
            residual_scaling,
            reduction_order=reduction_order,
        ),
    )


def apply_dot_general(
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    options: Options,
) -> jax.Array:
    """Check ``dot_general``'s arrays and dimension numbers against each other, then compute the
    product by ``options.mechanism`` (``None``: :func:`default_mechanism`): the one entry point of
    every differentiation mechanism and of every layout (``matmul``, ``einsum``, ...)."""
    lhs, rhs, dimensions = checked_operands(lhs, rhs, dimension_numbers)
    result: jax.Array = _checked_dot_general(lhs, rhs, dimensions, options)
    return result


def checked_operands(
    lhs: ArrayLike, rhs: ArrayLike, dimension_numbers: DotDimensionNumbers
) -> tuple[jax.Array, jax.Array, Dimensions]:
    """The operands as arrays and the dimension numbers canonical, checked against each other
    (TypeError / ValueError naming the offending shapes and axes, before any work)."""
    lhs = as_array(lhs, "dot_general", 0)
    rhs = as_array(rhs, "dot_general", 1)
    dimensions = canonicalize_dimension_numbers(dimension_numbers)
    check_dot_general(lhs.shape, rhs.shape, dimensions)
    return lhs, rhs, dimensions


@staged(2, 3)
def _checked_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options
) -> jax.Array:
    lhs, rhs = match_varying_axes(lhs, rhs)
    mechanism = options.mechanism or default_mechanism
    return mechanism(lhs, rhs, dimensions, options)


def match_varying_axes(lhs: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inside ``shard_map``, mark each operand as varying along the other's varying axes.

    ``lax.dot_general`` does this implicitly. Here it is explicit and outside the custom rule, so
    that the rule sees operands of one type: a weight replicated across devices meets per-device
    data, its cotangent is per-device, and JAX's transpose of the cast (a ``psum``) sums those
    per-device cotangents back to the replicated weight, the cross-device form of summing a
    broadcast operand's cotangent.
    """
    lhs_axes, rhs_axes = varying_axes(lhs), varying_axes(rhs)
    if lhs_axes == rhs_axes:
        return lhs, rhs
    if rhs_axes - lhs_axes:
        lhs = cast_to_varying(lhs, tuple(sorted(rhs_axes - lhs_axes)))
    if lhs_axes - rhs_axes:
        rhs = cast_to_varying(rhs, tuple(sorted(lhs_axes - rhs_axes)))
    return lhs, rhs


def default_mechanism(
    lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options
) -> jax.Array:
    """How :func:`dot_general` differentiates a product: operands saved as they are, by the
    primitive of :mod:`jaxmm._bilinear` (whose batching rule folds ``vmap``'s axes into the
    product, and whose residuals are JAX's own choice, as for ``jnp``); operands saved narrowed,
    by the ``jax.custom_vjp`` of :mod:`jaxmm._custom_vjp`, which chooses its residuals itself."""
    if options.residual is None:
        return bilinear_dot_general(lhs, rhs, dimensions, options)
    out: jax.Array = custom_vjp_dot_general(lhs, rhs, dimensions, options)
    return out
