"""``dot_general`` as a ``jax.custom_vjp`` function: the seed's rule as JAX users write it.

For ``Y = L R``, ``dL = dY Rᵀ`` and ``dR = Lᵀ dY``; for any dimension numbers
``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]`` and ``dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]``
(derived in :mod:`jaxmm._rules`). Below: the forward function, its ``fwd`` (the result and what
the backward pass reads), its ``bwd`` (the two products) and ``defvjp``.

Reverse mode only: JAX refuses ``jax.jvp`` of a ``custom_vjp`` function, and under ``jax.vmap``
it runs ``bwd`` once per mapped example before summing (jaxmm's default primitive folds the mapped
axes into one product instead: :mod:`jaxmm._bilinear`).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
from jax.custom_derivatives import SymbolicZero

from ._compat import is_saved, not_saved_marker, unwanted_cotangent_as_zeros
from ._mechanisms import cotangents
from ._options import Options
from ._residuals import is_scaled, load_operand, save_operand
from ._rules import forward, has_cotangent
from ._typing import Dimensions


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dot_general(lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options) -> Any:
    return forward(lhs, rhs, dimensions, options)


def fwd(
    lhs: jax.Array,
    rhs: jax.Array,
    dimensions: Dimensions,
    options: Options,
    wanted: tuple[bool, bool] = (True, True),
) -> tuple[jax.Array, Residuals]:
    """``Y``, and what ``bwd`` reads: ``dL`` needs ``R`` and ``dR`` needs ``L``, so each operand is
    saved (as ``options.residual`` says) only if its partner's cotangent is ``wanted``."""
    lhs_wanted, rhs_wanted = (w and has_cotangent(x) for w, x in zip(wanted, (lhs, rhs)))
    saved = []
    for side, operand, partner_wanted in (("lhs", lhs, rhs_wanted), ("rhs", rhs, lhs_wanted)):
        if partner_wanted:
            saved.append(save_operand(operand, options.residual, dimensions, side))
        else:
            narrow = options.residual and options.residual.of(side)
            saved.append(not_saved_marker(operand, is_scaled(operand.dtype, narrow)))
    facts = Facts((jax.typeof(lhs), jax.typeof(rhs)), dimensions, options)
    return forward(lhs, rhs, dimensions, options), (saved[0], saved[1], facts)


def bwd(residuals: Residuals, cotangent: Any) -> tuple[jax.Array | None, jax.Array | None]:
    """``(dL, dR)`` from the saved operands; ``None`` for one that needs no cotangent."""
    saved_lhs, saved_rhs, facts = residuals
    lhs_type, rhs_type = facts.types
    lhs = load_operand(saved_lhs, lhs_type) if is_saved(saved_lhs, lhs_type) else None
    rhs = load_operand(saved_rhs, rhs_type) if is_saved(saved_rhs, rhs_type) else None
    lhs_ct = rhs_ct = None
    if not isinstance(cotangent, SymbolicZero):  # else Y does not reach the loss
        lhs_ct, rhs_ct = cotangents(
            cotangent, lhs, rhs, facts.types, facts.dimensions, facts.options
        )
    return unwanted_cotangent_as_zeros(lhs_ct, lhs_type), unwanted_cotangent_as_zeros(
        rhs_ct, rhs_type
    )


# ``symbolic_zeros=True``: each primal comes with a ``perturbed`` flag, so that an operand nobody
# differentiates (frozen weights, inputs) costs neither a saved partner nor a cotangent product.
dot_general.defvjp(
    lambda lhs, rhs, dimensions, options: fwd(
        lhs.value, rhs.value, dimensions, options, (lhs.perturbed, rhs.perturbed)
    ),
    lambda dimensions, options, residuals, cotangent: bwd(residuals, cotangent),
    symbolic_zeros=True,
)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Facts:
    """What ``bwd`` needs besides the saved arrays, all static: the operand types (shape, dtype,
    sharding), the dimension numbers and the options."""

    types: tuple[Any, Any]
    dimensions: Dimensions
    options: Options


# ``(saved lhs, saved rhs, facts)``: a saved operand is the operand, its narrowed copy (with a
# scale), or an empty marker where it is not needed (``jaxmm._compat.not_saved_marker``).
Residuals = tuple[Any, Any, Facts]
