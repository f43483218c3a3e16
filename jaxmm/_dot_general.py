"""``dot_general`` with a hand-derived backward pass: the public function and its ``custom_vjp``.

The rules, derived, are in :mod:`jaxmm._rules`; this module gives them to ``jax.custom_vjp``
for products whose operands are saved narrowed (``residual_dtype``), and chooses, for each
product, that or the primitive of :mod:`jaxmm._bilinear`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ._bilinear import bilinear_dot_general
from ._checks import as_array, canonicalize_dimension_numbers, check_dot_general
from ._compat import (
    cast_to_varying,
    is_saved,
    not_saved_marker,
    unwanted_cotangent_as_zeros,
    varying_axes,
)
from ._options import Options, Product
from ._residuals import load_operand, save_operand
from ._rules import has_cotangent, lhs_cotangent, rhs_cotangent
from ._scope import named, staged
from ._typing import (
    ArrayLike,
    Dimensions,
    DotDimensionNumbers,
    DTypeLike,
    OutSharding,
    PrecisionLike,
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
    residual_dtype: DTypeLike | None = None,
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
        product,
        lhs,
        rhs,
        dimension_numbers,
        Options.of(
            precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
        ),
    )


def apply_dot_general(
    product: Product,
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    options: Options,
) -> jax.Array:
    """Check ``dot_general``'s arrays and dimension numbers against each other, then compute
    ``product(lhs, rhs, dimension_numbers, options)``: the one entry point of every
    differentiation mechanism (:func:`product` here, the hijax primitive of
    :mod:`jaxmm.experimental`) and of every layout (``matmul``, ``einsum``, ...)."""
    lhs = as_array(lhs, "dot_general", 0)
    rhs = as_array(rhs, "dot_general", 1)
    dimensions = canonicalize_dimension_numbers(dimension_numbers)
    check_dot_general(lhs.shape, rhs.shape, dimensions)
    result: jax.Array = _checked_dot_general(lhs, rhs, dimensions, options, product)
    return result


@staged(2, 3, 4)
def _checked_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options, product: Product
) -> jax.Array:
    lhs, rhs = match_varying_axes(lhs, rhs)
    return product(lhs, rhs, dimensions, options)


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


def product(lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options) -> jax.Array:
    """The product of :func:`dot_general`: operands saved as they are, by the primitive of
    :mod:`jaxmm._bilinear` (whose batching rule folds ``vmap``'s axes into the product, and whose
    residuals are JAX's own choice, as for ``jnp``); operands saved narrowed, by the
    ``jax.custom_vjp`` below, which chooses its residuals itself."""
    if options.residual is None:
        return bilinear_dot_general(lhs, rhs, dimensions, options)
    return _dot_general(lhs, rhs, dimensions, options)


# Forward, then the forward rule (what it saves) and the backward rule (what it computes of it).
@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot_general(
    lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options
) -> jax.Array:
    return lax.dot_general(lhs, rhs, dimensions, **options.lax_params())


def _dot_general_fwd(
    lhs_primal: Any, rhs_primal: Any, dimensions: Dimensions, options: Options
) -> tuple[jax.Array, tuple[Any, Any, _Types]]:
    # With ``symbolic_zeros=True`` each primal arrives wrapped with a ``perturbed`` flag: an operand
    # that no derivative flows into (frozen weights, inputs) needs no cotangent, so its cotangent
    # product is skipped, and the other operand is not saved for it.
    # The plain primitive, not the custom_vjp function: jax.hessian differentiates this rule (and
    # the bwd rule) forward, which JAX refuses for a custom_vjp function.
    lhs, rhs = lhs_primal.value, rhs_primal.value
    out = lax.dot_general(lhs, rhs, dimensions, **options.lax_params())
    # dL needs R and dR needs L: the residuals are the two operands, each only if it is needed.
    types = _Types(jax.typeof(lhs), jax.typeof(rhs))
    lhs_wanted = lhs_primal.perturbed and has_cotangent(types.lhs)
    rhs_wanted = rhs_primal.perturbed and has_cotangent(types.rhs)
    saved = []
    for side, operand, wanted in (("lhs", lhs, rhs_wanted), ("rhs", rhs, lhs_wanted)):
        if wanted:
            saved.append(save_operand(operand, options.residual, dimensions, side))
        else:
            saved.append(not_saved_marker(operand, options.residual, side))
    return out, (saved[0], saved[1], types)


def _dot_general_bwd(
    dimensions: Dimensions,
    options: Options,
    residuals: tuple[Any, Any, _Types],
    cotangent: Any,
) -> tuple[jax.Array | None, jax.Array | None]:
    saved_lhs, saved_rhs, types = residuals
    lhs_ct = rhs_ct = None
    rule = (dimensions, options.precision, options.preferred_element_type)
    if not isinstance(cotangent, SymbolicZero):  # else Y does not reach the loss
        if is_saved(saved_rhs, types.rhs):  # R was saved because L's cotangent is wanted
            rhs = load_operand(saved_rhs, types.rhs)
            lhs_ct = lhs_cotangent(cotangent, types.lhs, rhs, *rule)
        if is_saved(saved_lhs, types.lhs):
            lhs = load_operand(saved_lhs, types.lhs)
            rhs_ct = rhs_cotangent(cotangent, lhs, types.rhs, *rule)
    lhs_ct = unwanted_cotangent_as_zeros(lhs_ct, types.lhs)
    rhs_ct = unwanted_cotangent_as_zeros(rhs_ct, types.rhs)
    return lhs_ct, rhs_ct


_dot_general.defvjp(_dot_general_fwd, _dot_general_bwd, symbolic_zeros=True)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Types:
    """The two operands' types (shape, dtype, sharding): static facts for the backward pass."""

    lhs: Any
    rhs: Any
