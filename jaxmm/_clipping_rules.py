"""The product that :func:`jaxmm.clipped_grad`'s norm pass puts in place of each product that
reads a parameter: forward as the product, backward the ordinary cotangent of the other operand
plus, as the cotangent of a zero per-example input, the example's squared norm of the
parameter's gradient (:func:`parameter_norm_sq`, derived there)."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._clipping_gather import GatherTap, tied_rows
from ._rules import free_axes, lhs_cotangent


@dataclasses.dataclass(frozen=True, eq=False)
class Tap:
    """One tapped product: its primitive and parameters, which operand is the parameter, and the
    gather it is tied to (``None`` if untied)."""

    primitive: Any
    params: dict[str, Any]
    param_side: int  # 0: lhs, 1: rhs
    gather: GatherTap | None = None

    def __call__(self, lhs: jax.Array, rhs: jax.Array, probe: jax.Array, link: Any = None) -> Any:
        return _tapped_product(lhs, rhs, probe, link, self)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _tapped_product(
    lhs: jax.Array, rhs: jax.Array, probe: jax.Array, link: Any, tap: Tap
) -> jax.Array:
    out: jax.Array = tap.primitive.bind(lhs, rhs, **tap.params)
    return out


def _tapped_product_fwd(
    lhs: jax.Array, rhs: jax.Array, probe: jax.Array, link: Any, tap: Tap
) -> tuple[jax.Array, tuple[Any, ...]]:
    indices = None if link is None else link[1]
    return _tapped_product(lhs, rhs, probe, link, tap), (lhs, rhs, probe, indices)


def _tapped_product_bwd(
    tap: Tap, residuals: tuple[Any, ...], cotangent: jax.Array
) -> tuple[Any, Any, jax.Array, Any]:
    lhs, rhs, probe, indices = residuals
    dimensions = canonical(tap.params["dimension_numbers"])
    precision = tap.params.get("precision")
    param_free_first = tap.param_side == 0
    if param_free_first:  # the rule below is written for the parameter as R: swap the roles
        dimensions = (dimensions[0][::-1], dimensions[1][::-1])
        lhs, rhs = rhs, lhs
    activation_ct = _activation_cotangent(
        cotangent, lhs, rhs, dimensions, precision, param_free_first
    )
    norm_sq = parameter_norm_sq(
        cotangent, lhs, dimensions, precision, probe.dtype, param_free_first
    )
    link_ct = None
    if tap.gather is not None:  # P[k_n] for the tied gather's cross term
        (_, param_contract), _ = dimensions
        num_rows = rhs.shape[1 - param_contract[0]]
        index, kept = tap.gather.rows(indices, num_rows)
        rows = tied_rows(
            cotangent.astype(probe.dtype), lhs, dimensions, param_free_first, index, kept
        )
        link_ct = (rows, None)
    if param_free_first:
        return None, activation_ct, norm_sq, link_ct
    return activation_ct, None, norm_sq, link_ct


_tapped_product.defvjp(_tapped_product_fwd, _tapped_product_bwd)


def canonical(dimension_numbers: Any) -> Any:
    """Dimension numbers as tuples (``jnp`` gives lists)."""
    (lc, rc), (lb, rb) = dimension_numbers
    return (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))


def _activation_cotangent(
    cotangent: jax.Array,
    activation: jax.Array,
    param: jax.Array,
    dimensions: Any,
    precision: Any,
    param_free_first: bool,
) -> jax.Array | None:
    """The ordinary backward rule of the activation operand (:func:`jaxmm._rules.lhs_cotangent`,
    written with the activation as ``L``); ``None`` for an operand without a cotangent."""
    if not jnp.issubdtype(activation.dtype, np.inexact):
        return None
    return lhs_cotangent(
        cotangent,
        jax.typeof(activation),
        param,
        dimensions,
        precision,
        None,
        rhs_free_first=param_free_first,
    )


def parameter_norm_sq(
    cotangent: jax.Array,
    activation: jax.Array,
    dimensions: Any,
    precision: Any,
    dtype: Any,
    param_free_first: bool,
) -> jax.Array:
    """``‖dR‖²_F`` for one example, where ``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]``, ``L`` is the
    example's activation and ``dY`` (``cotangent``) its output cotangent.

    The backward rule gives ``dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]``. Squaring and summing,

        ‖dR‖² = Σ_{b, c, j} Σ_{i, i'} dY[b, i, j] L[b, i, c] dY[b, i', j] L[b, i', c]
              = Σ_{b, i, i'} (Σ_c L[b, i, c] L[b, i', c]) · (Σ_j dY[b, i, j] dY[b, i', j])
              = ⟨K_L, K_dY⟩,

    two Gram matrices over the free axes ``i`` that ``dR`` sums (for ``Y = X W`` with ``X`` of
    shape ``[T, d]``: ``‖Xᵀ dY‖² = ⟨X Xᵀ, dY dYᵀ⟩``; ``T = 1`` is ``‖x‖² ‖dy‖²``). With ``B``,
    ``I``, ``C``, ``J`` the sizes of the batch, summed-free, contracting and parameter-free axes,
    the Gram form costs ``B·I²·(C + J)`` multiply-adds and holds ``B·I²`` numbers; forming
    ``dR`` and squaring it costs ``B·I·C·J`` and holds ``B·C·J``. The cheaper one is taken.

    Shapes: ``cotangent`` is ``Y``'s (batch, then ``L``'s free, then ``R``'s free axes; ``R``'s
    first when ``param_free_first``); ``activation`` is ``L``; the result is a scalar of ``dtype``.
    """
    (contract, _), (batch, _) = dimensions
    free = free_axes(activation.ndim, contract, batch)
    num_batch, num_free = len(batch), len(free)
    num_param_free = cotangent.ndim - num_batch - num_free
    if param_free_first:
        summed_start, param_start = num_batch + num_param_free, num_batch
    else:
        summed_start, param_start = num_batch, num_batch + num_free
    sizes = activation.shape
    i = math.prod(sizes[axis] for axis in free)
    c = math.prod(sizes[axis] for axis in contract)
    j = math.prod(cotangent.shape[param_start : param_start + num_param_free])
    activation = activation.astype(jnp.promote_types(activation.dtype, dtype))
    cotangent = cotangent.astype(jnp.promote_types(cotangent.dtype, dtype))
    y_batch = tuple(range(num_batch))
    y_free = tuple(range(summed_start, summed_start + num_free))
    y_param = tuple(range(param_start, param_start + num_param_free))
    if i * (c + j) <= c * j:
        gram_activation = lax.dot_general(
            activation, activation, ((contract, contract), (batch, batch)), precision=precision
        )
        gram_cotangent = lax.dot_general(
            cotangent, cotangent, ((y_param, y_param), (y_batch, y_batch)), precision=precision
        )
        total = jnp.sum(gram_activation * gram_cotangent)
    else:
        gradient = lax.dot_general(
            cotangent, activation, ((y_free, free), (y_batch, batch)), precision=precision
        )
        total = jnp.sum(gradient * gradient)
    return total.astype(dtype)
