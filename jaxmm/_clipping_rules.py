"""What :func:`jaxmm.clipped_grad`'s norm pass puts after each product that reads a parameter:
the identity on the product's output, whose backward rule passes the output cotangent ``dY`` on
unchanged (the product's own rules then give the other operand's cotangent) and returns, as the
cotangent of a zero per-example input, the example's squared norm of the parameter's gradient
(:func:`parameter_norm_sq`, derived there)."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._clipping_gather import GatherTap, tied_rows
from ._rules import free_axes


@dataclasses.dataclass(frozen=True, eq=False)
class Tap:
    """One tapped product: its primitive and parameters, which operand is the parameter, and the
    gather it is tied to (``None`` if untied)."""

    primitive: Any
    params: dict[str, Any]
    param_side: int  # 0: lhs, 1: rhs
    gather: GatherTap | None = None

    def __call__(self, lhs: jax.Array, rhs: jax.Array, probe: jax.Array, link: Any = None) -> Any:
        """The product, as the traced equation computes it (its own rules give the activation's
        cotangent; the parameter is not differentiated in this pass), then the identity whose
        rule reads off ``‖dR‖²``."""
        out = self.primitive.bind(lhs, rhs, **self.params)
        activation = rhs if self.param_side == 0 else lhs
        return _norm_tap(out, activation, probe, link, self)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _norm_tap(out: jax.Array, activation: jax.Array, probe: jax.Array, link: Any, tap: Tap) -> Any:
    """``out`` itself; its backward rule passes ``dY`` on and returns ``‖dR‖²`` for ``probe``."""
    return out


def _norm_tap_fwd(
    out: jax.Array, activation: jax.Array, probe: jax.Array, link: Any, tap: Tap
) -> tuple[jax.Array, tuple[Any, ...]]:
    indices = None if link is None else link[1]
    return out, (activation, probe, indices)


def _norm_tap_bwd(
    tap: Tap, residuals: tuple[Any, ...], cotangent: jax.Array
) -> tuple[jax.Array, None, jax.Array, Any]:
    activation, probe, indices = residuals
    dimensions = product_dimensions(tap.params)
    precision = product_precision(tap.params)
    param_free_first = tap.param_side == 0
    if param_free_first:  # the rule below is written for the parameter as R: swap the roles
        dimensions = (dimensions[0][::-1], dimensions[1][::-1])
    norm_sq = parameter_norm_sq(
        cotangent, activation, dimensions, precision, probe.dtype, param_free_first
    )
    link_ct = None
    if tap.gather is not None:  # P[k_n] for the tied gather's cross term
        (contract, _), _ = dimensions
        row_axis = 0 if param_free_first else activation.ndim - len(contract)  # P's rows, in dY
        num_rows = cotangent.shape[row_axis]
        index, kept = tap.gather.rows(indices, num_rows)
        rows = tied_rows(
            cotangent.astype(probe.dtype), activation, dimensions, param_free_first, index, kept
        )
        link_ct = (rows, None)
    return cotangent, None, norm_sq, link_ct


_norm_tap.defvjp(_norm_tap_fwd, _norm_tap_bwd)


def product_dimensions(params: dict[str, Any]) -> Any:
    """A product equation's dimension numbers, as tuples: ``lax.dot_general``'s parameter
    ``dimension_numbers`` (lists from ``jnp``), or jaxmm's primitive's ``dimension_numbers`` /
    ``dimensions`` (the name depends on the jaxmm version)."""
    numbers = params["dimension_numbers"] if "dimension_numbers" in params else params["dimensions"]
    (lc, rc), (lb, rb) = numbers
    return (tuple(lc), tuple(rc)), (tuple(lb), tuple(rb))


def product_precision(params: dict[str, Any]) -> Any:
    """A product equation's precision: a parameter of its own, or in jaxmm's ``options``."""
    if "options" in params:
        return params["options"].precision
    return params.get("precision")


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
