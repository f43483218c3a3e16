"""Platform tuning of the backward products: a formulation that XLA's CPU backend runs faster, kept
apart from the rules (:mod:`jaxmm._rules`), which read as their derivation.

Where XLA's CPU backend is fast, and where not (measured on the project's 2-core x86 machine with
jaxlib 0.10.2; README "Performance"): a dot runs on the fast YNNPACK kernels only when the
contracted axes of its *first* operand are that operand's trailing axes. The lhs rule's product
dY·Rᵀ contracts dY's trailing axes; the rhs rule's Lᵀ·dY contracts dY's *leading* free axes and
falls to a generic kernel that takes about 1.3-1.6x the time of a forward product. For small
products (about 96³ to 200³) transposing the saved operand first and putting it first wins: the
whole step gets 15-30 % faster. From 256³ up, XLA's transpose costs as much as it saves, and below
96³ the step is dominated by dispatch, so there the direct form stays. GPUs and TPUs take
transposed operands for free and always run the direct form, and so do complex and integer types,
which YNNPACK does not take; lax.platform_dependent picks the form for the platform compiled for.

Measured again with JAX 0.10.2 on the same machine (2026-12-02), 128³ step: 0.56x of ``jnp``'s with
this form, 0.92x without; 192³: 0.91x / 0.94x; 256³: 0.99x / 0.99x. Delete this module (and its
one call in :mod:`jaxmm._rules`) when XLA's CPU dot emitter takes a transposed first operand at
full speed: the rule then compiles to ``jnp``'s program everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax import lax

SAVED_FIRST_FLOPS = (2**20, 2**24)  # 2·m·k·n of the product, both ends included


def saved_first_pays(
    cotangent: jax.Array, saved: jax.Array, summed: tuple[int, ...], target_type: Any
) -> bool:
    """Whether the saved-operand-first form is the faster one on CPU for this product."""
    trailing = summed == tuple(range(cotangent.ndim - len(summed), cotangent.ndim))
    if trailing:  # dY's summed axes already trail: the direct form is the fast one
        return False
    real = (jax.numpy.issubdtype(x.dtype, np.floating) for x in (cotangent, saved))
    if not all(real):  # YNNPACK takes real floating types only
        return False
    flops = 2 * math.prod(target_type.shape) * math.prod(cotangent.shape[a] for a in summed)
    low, high = SAVED_FIRST_FLOPS
    return bool(low <= flops <= high)


def saved_first(
    cotangent: jax.Array,
    saved: jax.Array,
    *,
    dot: Callable[..., jax.Array],
    summed: tuple[int, ...],
    rhs_dimension_numbers: tuple[Sequence[int], Sequence[int], Sequence[int]],
    product_axes: tuple[int, ...],
    sharding: Callable[[tuple[int, ...]], Any],
) -> jax.Array:
    """``Σ_j dY[b, i, j] R[b, c, j]`` with the saved ``R`` laid out as ``(b, c, j)`` and put first:
    the product's axes are ``(b, c, i)`` (``product_axes``, in the target's numbering), transposed
    back to the target's order. The barrier keeps XLA from folding the transpose back into the dot
    (which would be the direct form again)."""
    contract, batch, free = rhs_dimension_numbers
    saved_t = lax.optimization_barrier(_transpose(saved, (*batch, *sorted(contract), *free)))
    saved_t_free = tuple(range(saved.ndim - len(free), saved.ndim))
    cotangent_batch = tuple(range(len(batch)))
    product = dot(
        saved_t,
        cotangent,
        ((saved_t_free, summed), (cotangent_batch, cotangent_batch)),
        out_sharding=sharding(product_axes),
    )
    return _transpose(product, tuple(np.argsort(product_axes, kind="stable")))


def _transpose(x: jax.Array, permutation: tuple[int, ...]) -> jax.Array:
    if permutation == tuple(range(x.ndim)):
        return x
    return lax.transpose(x, permutation)
