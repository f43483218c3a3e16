"""``dot_general`` with a hand-derived backward pass.

The derivation, for any dimension numbers
-----------------------------------------
Group the axes of each operand into three kinds: *batch* axes (paired between the operands and kept
in the output), *contracting* axes (paired and summed over) and *free* axes (all the others, kept in
the output). With one multi-index for each kind, ``lax.dot_general`` computes

    Y[b, i, j] = Σ_c L[b, i, c] · R[b, c, j]

where ``b`` runs over the batch axes, ``i`` over the lhs free axes, ``j`` over the rhs free axes and
``c`` over the contracting axes; the output axes come in the order (batch, lhs free, rhs free).

As in the seed derivation for ``Y = W X``, the chain rule gives
``dL[b, i, c] = Σ_{b', i', j'} dY[b', i', j'] · ∂Y[b', i', j'] / ∂L[b, i, c]``. ``Y[b', i', j']``
depends on ``L[b, i, c]`` only when ``b' = b`` and ``i' = i`` (it reads row ``i`` of batch ``b``
only), and then its derivative is ``R[b, c, j']``. Every other term vanishes, leaving

    dL[b, i, c] = Σ_j dY[b, i, j] · R[b, c, j]

which is again a ``dot_general``: of ``dY`` with ``R``, contracting ``dY``'s rhs-free axes with
``R``'s free axes and pairing the batch axes. It yields the axes in the order (batch, lhs free,
rhs's remaining = contracting axes); one transpose puts them back in ``L``'s own order. For
``Y = L R`` with 2-D operands this is ``dL = dY Rᵀ``; the rhs rule is the same rule with the roles
of the operands swapped, ``dR[b, c, j] = Σ_i dY[b, i, j] · L[b, i, c]`` (``dR = Lᵀ dY``). Nothing is
conjugated: for complex operands JAX's convention is the plain transpose.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ._checks import (
    as_array,
    canonicalize_dimension_numbers,
    canonicalize_precision,
    canonicalize_preferred_element_type,
    check_dot_general,
)
from ._compat import cast_to_varying, unwanted_cotangent_as_zeros, varying_axes
from ._residuals import (
    ResidualFormat,
    canonicalize_residual,
    is_scaled,
    load_operand,
    save_operand,
)
from ._typing import ArrayLike, DotDimensionNumbers, DTypeLike, PrecisionLike


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
    """General dot product, as ``lax.dot_general``, whose backward pass is derived by hand.

    A drop-in for :func:`jax.lax.dot_general` (same arguments, result, dtypes and errors), usable as
    the ``dot_general=`` of Flax layers. Its VJP is written out from the derivation in this module's
    docstring instead of being left to JAX's autodiff.

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
        _dot_general,
        lhs,
        rhs,
        dimension_numbers,
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


def apply_dot_general(
    product: Callable[..., jax.Array],
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike,
    preferred_element_type: DTypeLike | None,
    out_sharding: Any,
    residual: ResidualFormat | None,
) -> jax.Array:
    """Check and canonicalize ``dot_general``'s arguments, then call
    ``product(lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding,
    residual_dtype)``: the one entry point of every differentiation mechanism (the
    ``jax.custom_vjp`` here, the primitive of :mod:`jaxmm.experimental`)."""
    lhs = as_array(lhs, "dot_general", 0)
    rhs = as_array(rhs, "dot_general", 1)
    dimension_numbers = canonicalize_dimension_numbers(dimension_numbers)
    check_dot_general(lhs.shape, rhs.shape, dimension_numbers)
    result: jax.Array = _checked_dot_general(
        lhs,
        rhs,
        dimension_numbers,
        canonicalize_precision(precision),
        canonicalize_preferred_element_type(preferred_element_type),
        out_sharding,
        canonicalize_residual(residual),
        product,
    )
    return result


# Compiled as one program when called un-jitted (as jnp's functions are), so that an eager
# gradient runs a few cached executables instead of the custom rule op by op; inlined into the
# caller's program when traced.
@partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7), inline=True)
def _checked_dot_general(lhs: jax.Array, rhs: jax.Array, *static: Any) -> jax.Array:
    *options, product = static
    lhs, rhs = _match_varying_axes(lhs, rhs)
    result: jax.Array = product(lhs, rhs, *options)
    return result


def _match_varying_axes(lhs: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
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


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike,
    preferred_element_type: DTypeLike | None,
    out_sharding: Any,
    residual: ResidualFormat | None,
) -> jax.Array:
    return lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Types:
    """The two operands' types (shape, dtype, sharding): static facts for the backward pass."""

    lhs: Any
    rhs: Any


def _wanted(primal: Any) -> bool:
    # Integer and boolean operands have no cotangent (JAX gives them float0 zeros).
    return bool(primal.perturbed and jax.numpy.issubdtype(primal.value.dtype, np.inexact))


def _not_saved(operand: jax.Array, residual: ResidualFormat | None) -> Any:
    """What stands in the residuals for an operand nobody needs: empty arrays, in the tree
    structure ``save_operand`` gives that operand, the first of rank one more than the operand's,
    which tells it apart from the operand itself.

    Whether an operand is saved is told by the residual *arrays*, not by static pytree data: the
    residuals' tree structure must not depend on which operands are perturbed, because JAX
    (0.10.2) caches a custom_vjp's forward rule under jit per perturbation pattern but keeps only
    the most recent tree structure, which would unflatten one pattern's residuals with another's
    structure.
    """
    marker = jax.numpy.zeros((0,) * (operand.ndim + 1), bool)
    return (marker, jax.numpy.zeros((0,), bool)) if is_scaled(operand.dtype, residual) else marker


def _is_saved(saved: Any, operand_type: Any) -> bool:
    return bool(jax.tree.leaves(saved)[0].ndim == operand_type.ndim)


def _dot_general_fwd(
    lhs_primal: Any,
    rhs_primal: Any,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike,
    preferred_element_type: DTypeLike | None,
    out_sharding: Any,
    residual: ResidualFormat | None,
) -> tuple[jax.Array, tuple[Any, Any, _Types]]:
    # With ``symbolic_zeros=True`` each primal arrives wrapped with a ``perturbed`` flag: an operand
    # that no derivative flows into (frozen weights, inputs) needs no cotangent, so its cotangent
    # product is skipped, and the other operand is not saved for it.
    # The plain primitive, not the custom_vjp function: jax.hessian differentiates this rule (and
    # the bwd rule) forward, which JAX refuses for a custom_vjp function.
    lhs, rhs = lhs_primal.value, rhs_primal.value
    out = lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )
    # dL needs R and dR needs L: the residuals are the two operands, each only if it is needed.
    # A per-channel scale runs along an operand's batch and contracting axes (_residuals).
    types = _Types(jax.typeof(lhs), jax.typeof(rhs))
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if _wanted(rhs_primal):
        saved_lhs = save_operand(lhs, residual, (*lhs_batch, *lhs_contract), "lhs")
    else:
        saved_lhs = _not_saved(lhs, residual)
    if _wanted(lhs_primal):
        saved_rhs = save_operand(rhs, residual, (*rhs_batch, *rhs_contract), "rhs")
    else:
        saved_rhs = _not_saved(rhs, residual)
    return out, (saved_lhs, saved_rhs, types)


def lhs_cotangent(
    cotangent: jax.Array,
    lhs_type: Any,
    rhs: jax.Array,
    dimension_numbers: DotDimensionNumbers,
    precision: Any,
    preferred_element_type: Any,
    *,
    rhs_free_first: bool = False,
) -> jax.Array:
    """``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]``, in ``L``'s axis order, shape and dtype.

    ``rhs_free_first`` says that the rhs free axes come before the lhs free axes in ``cotangent``:
    that is how the rhs rule reuses this one, with the operands' roles swapped.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_free = _free_axes(lhs_type.ndim, lhs_contract, lhs_batch)
    rhs_free = _free_axes(rhs.ndim, rhs_contract, rhs_batch)
    num_batch = len(lhs_batch)
    # Y's axes are (batch, lhs free, rhs free), or (batch, rhs free, lhs free) when swapped.
    rhs_free_start = num_batch if rhs_free_first else num_batch + len(lhs_free)
    summed = tuple(range(rhs_free_start, rhs_free_start + len(rhs_free)))  # j, in Y
    batch = tuple(range(num_batch))  # b, in Y
    # R's contracting axis rhs_contract[k] is paired with L's axis lhs_contract[k]; a product
    # yields R's contracting axes in R's order, which are these axes of L:
    c_axes = tuple(lhs_contract[k] for k in np.argsort(rhs_contract, kind="stable"))
    dot = partial(
        lax.dot_general, precision=precision, preferred_element_type=preferred_element_type
    )

    def dy_first(cotangent: jax.Array, rhs: jax.Array) -> jax.Array:
        # Σ_j pairs Y's rhs-free axes with R's free axes, b stays paired with R's batch axes; the
        # product's axes are (b, i, c).
        product_axes = (*lhs_batch, *lhs_free, *c_axes)
        product = dot(
            cotangent,
            rhs,
            ((summed, rhs_free), (batch, rhs_batch)),
            out_sharding=_cotangent_sharding(lhs_type, product_axes),
        )
        return _transpose(product, tuple(np.argsort(product_axes, kind="stable")))

    def r_first(cotangent: jax.Array, rhs: jax.Array) -> jax.Array:
        # The same sum with the operands' order swapped, R laid out as (b, c, j) first: the
        # product's axes are (b, c, i). The barrier keeps XLA from folding the transpose back
        # into the dot (which would be dy_first again).
        rhs_t = lax.optimization_barrier(
            _transpose(rhs, (*rhs_batch, *sorted(rhs_contract), *rhs_free))
        )
        rhs_t_free = tuple(range(rhs.ndim - len(rhs_free), rhs.ndim))
        product_axes = (*lhs_batch, *c_axes, *lhs_free)
        product = dot(
            rhs_t,
            cotangent,
            ((rhs_t_free, summed), (batch, batch)),
            out_sharding=_cotangent_sharding(lhs_type, product_axes),
        )
        return _transpose(product, tuple(np.argsort(product_axes, kind="stable")))

    if _r_first_pays(cotangent, rhs, summed, lhs_type):
        # Always traced (the public functions are jitted): resolved when compiled for a platform.
        lhs_cotangent = lax.platform_dependent(cotangent, rhs, cpu=r_first, default=dy_first)
    else:
        lhs_cotangent = dy_first(cotangent, rhs)
    return _cast_like(lhs_cotangent, lhs_type)


def rhs_cotangent(
    cotangent: jax.Array,
    lhs: jax.Array,
    rhs_type: Any,
    dimension_numbers: DotDimensionNumbers,
    precision: Any,
    preferred_element_type: Any,
) -> jax.Array:
    """``dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]``, in ``R``'s axis order, shape and dtype: the
    lhs rule with the operands' roles (and dimension numbers) swapped."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    swapped = ((rhs_contract, lhs_contract), (rhs_batch, lhs_batch))
    return lhs_cotangent(
        cotangent,
        rhs_type,
        lhs,
        swapped,
        precision,
        preferred_element_type,
        rhs_free_first=True,
    )


# Where XLA's CPU backend is fast, and where not (measured on the project's 2-core x86 machine with
# jaxlib 0.10.2; README "Performance"): a dot runs on the fast YNNPACK kernels only when the
# contracted axes of its *first* operand are that operand's trailing axes. The lhs rule's product
# dY·Rᵀ contracts dY's trailing axes; the rhs rule's Lᵀ·dY contracts dY's *leading* free axes and
# falls to a generic kernel that takes about 1.3-1.6x the time of a forward product. For small
# products (about 96³ to 200³) transposing the saved operand first and putting it first wins: the
# whole step gets 15-30 % faster. From 256³ up, XLA's transpose costs as much as it saves, and below
# 96³ the step is dominated by dispatch, so there the direct form stays. GPUs and TPUs take
# transposed operands for free and always run the direct form, and so do complex and integer types,
# which YNNPACK does not take; lax.platform_dependent picks the form for the platform compiled for.
_R_FIRST_FLOPS = (2**20, 2**24)  # 2·m·k·n of the product, both ends included


def _r_first_pays(
    cotangent: jax.Array, saved: jax.Array, summed: tuple[int, ...], target_type: Any
) -> bool:
    trailing = summed == tuple(range(cotangent.ndim - len(summed), cotangent.ndim))
    if trailing:  # dY's summed axes already trail: the direct form is the fast one
        return False
    real = (jax.numpy.issubdtype(x.dtype, np.floating) for x in (cotangent, saved))
    if not all(real):  # YNNPACK takes real floating types only
        return False
    flops = 2 * math.prod(target_type.shape) * math.prod(cotangent.shape[a] for a in summed)
    low, high = _R_FIRST_FLOPS
    return bool(low <= flops <= high)


def _dot_general_bwd(
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike,
    preferred_element_type: DTypeLike | None,
    out_sharding: Any,
    residual: ResidualFormat | None,
    residuals: tuple[Any, Any, _Types],
    cotangent: Any,
) -> tuple[jax.Array | None, jax.Array | None]:
    saved_lhs, saved_rhs, types = residuals
    lhs_ct = rhs_ct = None
    if not isinstance(cotangent, SymbolicZero):  # else Y does not reach the loss
        if _is_saved(saved_rhs, types.rhs):  # R was saved because L's cotangent is wanted
            rhs = load_operand(saved_rhs, types.rhs)
            lhs_ct = lhs_cotangent(
                cotangent, types.lhs, rhs, dimension_numbers, precision, preferred_element_type
            )
        if _is_saved(saved_lhs, types.lhs):
            lhs = load_operand(saved_lhs, types.lhs)
            rhs_ct = rhs_cotangent(
                cotangent, lhs, types.rhs, dimension_numbers, precision, preferred_element_type
            )
    # (On JAX 0.8.0 and 0.8.1 an unwanted cotangent is zeros instead of None: _compat.)
    lhs_ct = unwanted_cotangent_as_zeros(lhs_ct, types.lhs)
    rhs_ct = unwanted_cotangent_as_zeros(rhs_ct, types.rhs)
    return lhs_ct, rhs_ct


_dot_general.defvjp(_dot_general_fwd, _dot_general_bwd, symbolic_zeros=True)


def _free_axes(ndim: int, contract: Sequence[int], batch: Sequence[int]) -> tuple[int, ...]:
    """The axes that are neither contracted nor batched, in increasing order."""
    return tuple(axis for axis in range(ndim) if axis not in contract and axis not in batch)


def _transpose(x: jax.Array, permutation: tuple[int, ...]) -> jax.Array:
    if permutation == tuple(range(x.ndim)):
        return x
    return lax.transpose(x, permutation)


def _cotangent_sharding(operand_type: Any, product_axes: tuple[int, ...]) -> Any:
    """The operand's own sharding, laid out in the order the cotangent product emits its axes, so
    that each cotangent comes out sharded like its primal (``None`` outside any mesh)."""
    sharding = operand_type.sharding
    if sharding.mesh.empty:
        return None
    spec = tuple(sharding.spec) + (None,) * (operand_type.ndim - len(sharding.spec))
    return sharding.update(spec=jax.sharding.PartitionSpec(*(spec[axis] for axis in product_axes)))


def _cast_like(cotangent: jax.Array, primal_type: Any) -> jax.Array:
    """A cotangent has its primal's dtype: the real part for a real operand of a complex product
    (the imaginary part is not a direction the real operand can move in)."""
    if jax.numpy.iscomplexobj(cotangent) and not jax.numpy.issubdtype(
        primal_type.dtype, np.complexfloating
    ):
        cotangent = lax.real(cotangent)
    if cotangent.dtype != primal_type.dtype:
        cotangent = lax.convert_element_type(cotangent, primal_type.dtype)
    return cotangent
