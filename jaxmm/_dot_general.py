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
from functools import partial
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from ._checks import (
    DotDimensionNumbers,
    as_array,
    canonicalize_dimension_numbers,
    canonicalize_precision,
    canonicalize_preferred_element_type,
    check_dot_general,
)


def dot_general(
    lhs: Any,
    rhs: Any,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    out_sharding: Any = None,
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
    """
    lhs = as_array(lhs, "dot_general", 0)
    rhs = as_array(rhs, "dot_general", 1)
    dimension_numbers = canonicalize_dimension_numbers(dimension_numbers)
    check_dot_general(lhs.shape, rhs.shape, dimension_numbers)
    lhs, rhs = _match_varying_axes(lhs, rhs)
    return _dot_general(
        lhs,
        rhs,
        dimension_numbers,
        canonicalize_precision(precision),
        canonicalize_preferred_element_type(preferred_element_type),
        out_sharding,
    )


def _varying_axes(x: jax.Array) -> frozenset:
    """The shard_map mesh axes along which ``x`` varies (empty outside shard_map)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10
    return manual.varying if manual is not None else getattr(aval, "vma", frozenset())


def _match_varying_axes(lhs: jax.Array, rhs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inside ``shard_map``, mark each operand as varying along the other's varying axes.

    ``lax.dot_general`` does this implicitly. Here it is explicit and outside the custom rule, so
    that the rule sees operands of one type: a weight replicated across devices meets per-device
    data, its cotangent is per-device, and JAX's transpose of the cast (a ``psum``) sums those
    per-device cotangents back to the replicated weight, the cross-device form of summing a
    broadcast operand's cotangent.
    """
    lhs_axes, rhs_axes = _varying_axes(lhs), _varying_axes(rhs)
    if lhs_axes == rhs_axes:
        return lhs, rhs
    cast = partial(lax.pcast, to="varying") if hasattr(lax, "pcast") else lax.pvary
    if rhs_axes - lhs_axes:
        lhs = cast(lhs, tuple(sorted(rhs_axes - lhs_axes)))
    if lhs_axes - rhs_axes:
        rhs = cast(rhs, tuple(sorted(lhs_axes - rhs_axes)))
    return lhs, rhs


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding):
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
class _Wanted:
    """Static facts saved for the backward pass (no arrays): the type of each operand whose
    cotangent is asked for, or ``None`` when nobody differentiates with respect to it."""

    lhs: Any
    rhs: Any


def _type_if_wanted(primal: Any) -> Any:
    # Integer and boolean operands have no cotangent (JAX gives them float0 zeros).
    wanted = primal.perturbed and jax.numpy.issubdtype(primal.value.dtype, np.inexact)
    return jax.typeof(primal.value) if wanted else None


def _dot_general_fwd(lhs, rhs, dimension_numbers, precision, preferred_element_type, out_sharding):
    # With ``symbolic_zeros=True`` each primal arrives wrapped with a ``perturbed`` flag: an operand
    # that no derivative flows into (frozen weights, inputs) needs no cotangent, so its cotangent
    # product is skipped, and the other operand is not saved for it.
    wanted = _Wanted(_type_if_wanted(lhs), _type_if_wanted(rhs))
    # The plain primitive, not the custom_vjp function: jax.hessian differentiates this rule (and
    # the bwd rule) forward, which JAX refuses for a custom_vjp function.
    out = lax.dot_general(
        lhs.value,
        rhs.value,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )
    # dL needs R and dR needs L: the residuals are the two operands, each only if it is needed.
    saved_lhs = lhs.value if wanted.rhs is not None else None
    saved_rhs = rhs.value if wanted.lhs is not None else None
    return out, (saved_lhs, saved_rhs, wanted)


def _lhs_cotangent(
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
    rhs_free_in_cotangent = tuple(range(rhs_free_start, rhs_free_start + len(rhs_free)))
    # Σ_j pairs Y's rhs-free axes with R's free axes; b stays paired with R's batch axes.
    contraction = (
        (rhs_free_in_cotangent, rhs_free),
        (tuple(range(num_batch)), rhs_batch),
    )
    # The product's axes are (b, i, R's remaining axes = R's contracting axes in R's order); R's
    # contracting axis rhs_contract[k] is paired with L's axis lhs_contract[k].
    product_axes = (
        *lhs_batch,
        *lhs_free,
        *(lhs_contract[k] for k in np.argsort(rhs_contract, kind="stable")),
    )
    product = lax.dot_general(
        cotangent,
        rhs,
        contraction,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=_cotangent_sharding(lhs_type, product_axes),
    )
    lhs_cotangent = _transpose(product, tuple(np.argsort(product_axes, kind="stable")))
    return _cast_like(lhs_cotangent, lhs_type)


def _dot_general_bwd(
    dimension_numbers, precision, preferred_element_type, out_sharding, residuals, cotangent
):
    saved_lhs, saved_rhs, wanted = residuals
    if isinstance(cotangent, SymbolicZero):  # Y does not reach the loss: nothing to propagate.
        return None, None
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_cotangent = rhs_cotangent = None
    if wanted.lhs is not None:
        lhs_cotangent = _lhs_cotangent(
            cotangent, wanted.lhs, saved_rhs, dimension_numbers, precision, preferred_element_type
        )
    if wanted.rhs is not None:
        # The rhs rule is the lhs rule with the operands' roles (and dimension numbers) swapped.
        swapped = ((rhs_contract, lhs_contract), (rhs_batch, lhs_batch))
        rhs_cotangent = _lhs_cotangent(
            cotangent,
            wanted.rhs,
            saved_lhs,
            swapped,
            precision,
            preferred_element_type,
            rhs_free_first=True,
        )
    return lhs_cotangent, rhs_cotangent


_dot_general.defvjp(_dot_general_fwd, _dot_general_bwd, symbolic_zeros=True)


def _free_axes(ndim: int, contract: tuple[int, ...], batch: tuple[int, ...]) -> tuple[int, ...]:
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
