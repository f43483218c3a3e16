"""The ragged product as a JAX primitive on two canonical layouts, with its rules derived by hand.

The layouts (see :mod:`jaxmm._ragged_tiles`; ``g(b, x, m)`` is the group of row ``m`` of block
``(b, x)``, none for rows past the last group)::

    rows:        Y[b, x, m, n] = Σ_k L[b, x, m, k] R[b, g(b, x, m), k, n]     (0 where no group)
    contracting: Y[g, b, m, n] = Σ_x Σ_{k : g(b, x, k) = g} L[b, x, k, m] R[b, x, k, n]

Backward rules (the seed's ``dX = dY Wᵀ``, ``dW = Xᵀ dY``, group by group)
--------------------------------------------------------------------------
*Rows.* ``Y[b, x, m, ·]`` reads row ``m`` of ``L`` and, of ``R``, the slice of row ``m``'s group
only. By the chain rule, as in the seed, for rows of group ``e``: ``dL_e = dY_e R_eᵀ``,

    dL[b, x, m, k] = Σ_n dY[b, x, m, n] R[b, g(b, x, m), k, n],

a *rows*-mode product of ``dY`` with ``R`` (its ``k`` and ``n`` swapped): rows in no group get
zero. And ``dR_e = L_eᵀ dY_e`` sums over the rows of group ``e`` only,

    dR[b, e, k, n] = Σ_x Σ_{m : g(b, x, m) = e} L[b, x, m, k] dY[b, x, m, n],

a *contracting*-mode product whose ragged summed axis is the rows axis ``m``: ``L`` is read as
``[B, X, M, K]`` = contracting-mode ``[B, X, K', M']`` with ``K' = M``, and the result
``[G, B, K, N]`` is moved to ``R``'s order. An empty group sums nothing: its gradient is exactly
zero, and rows in no group add nothing.

*Contracting.* ``Y[g, b, ·, ·]`` reads the rows ``k`` of group ``g`` of both operands, so

    dL[b, x, k, m] = Σ_n R[b, x, k, n] dY[g(b, x, k), b, m, n]
    dR[b, x, k, n] = Σ_m L[b, x, k, m] dY[g(b, x, k), b, m, n]

are *rows*-mode products: ``R`` (resp. ``L``) in the lhs place, ``dY`` as the grouped weights
(``[B, G, N, M]``, resp. ``[B, G, M, N]``). The two modes' transposes map into each other.

Forward rule: ``Y`` is bilinear in ``(L, R)`` for fixed groups, so
``dY = Y(dL, R) + Y(L, dR)`` (the product rule, derived in :mod:`jaxmm._rules`), each term this
primitive. The group sizes are integers: they have no tangent (``float0``) and no cotangent.

Batching, derived: ``vmap`` adds an axis ``n`` to some operands.

- Mapped in one operand only, the sizes not mapped: one more free axis of that operand, merged
  into its last axis (``N`` of ``R`` in either mode, ``M`` of the contracting mode's ``L``):
  ``Y[…, (n, j)] = Σ L[…] R[…, (n, j)]`` is the same product. (The rows mode's ``L`` is the
  next case.)
- *Rows*, mapped in ``L`` and/or the sizes, not in ``R``: ``n`` is one more block of rows with
  their own sizes, merged into ``X``. Mapped in ``R`` and more: each ``n`` pairs its rows with
  ``R[n]``, a batch axis merged into ``B`` (the unmapped operands broadcast).
- *Contracting*, mapped in the sizes or in both operands: a batch axis, merged into ``B``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import _ragged_tiles

ragged_p = Primitive("jaxmm_ragged_dot")


def ragged(lhs: jax.Array, rhs: jax.Array, sizes: jax.Array, **params: Any) -> jax.Array:
    """The product of canonical operands (params: ``mode``, ``precision``,
    ``preferred_element_type``)."""
    out: jax.Array = ragged_p.bind(lhs, rhs, sizes, **params)
    return out


@functools.lru_cache(maxsize=4096)
def _abstract_eval(lhs: Any, rhs: Any, sizes: Any, **params: Any) -> Any:
    # lax.ragged_dot_general's own result type, so the primitive is typed as the product it is.
    return jax.typeof(
        jax.eval_shape(functools.partial(_ragged_tiles.native, **params), lhs, rhs, sizes)
    )


@functools.lru_cache(maxsize=256)
def _compiled(**params: Any) -> Any:
    return jax.jit(functools.partial(ragged_p.bind, **params))


def _impl(lhs: Any, rhs: Any, sizes: Any, **params: Any) -> Any:
    # Eagerly, too, the product runs as the platform's lowering below picks it.
    return _compiled(**params)(lhs, rhs, sizes)


ragged_p.def_impl(_impl)
ragged_p.def_abstract_eval(_abstract_eval)

# The one place where the platform picks the formulation: XLA's CPU backend has no ragged kernel
# (lax's lowering there multiplies G masked copies), GPU and TPU have one.
mlir.register_lowering(ragged_p, mlir.lower_fun(_ragged_tiles.native, multiple_results=False))
mlir.register_lowering(
    ragged_p, mlir.lower_fun(_ragged_tiles.tiled, multiple_results=False), platform="cpu"
)


def _jvp(primals: Sequence[Any], tangents: Sequence[Any], **params: Any) -> tuple[Any, Any]:
    lhs, rhs, sizes = primals
    lhs_dot, rhs_dot, _ = tangents
    out = ragged(lhs, rhs, sizes, **params)
    terms = []
    if type(lhs_dot) is not ad.Zero:
        terms.append(ragged(lhs_dot, rhs, sizes, **params))
    if type(rhs_dot) is not ad.Zero:
        terms.append(ragged(lhs, rhs_dot, sizes, **params))
    if not terms:
        return out, ad.Zero(jax.typeof(out).to_tangent_aval())
    return out, functools.reduce(jnp.add, terms)


def _cotangent(
    operand: Any, mode: str, lhs: Any, rhs: Any, sizes: Any, params: dict[str, Any]
) -> Any:
    """One operand's cotangent: the product the derivation names, in the operand's dtype."""
    result = ragged(lhs, rhs, sizes, **dict(params, mode=mode))
    if mode == "contracting":  # [G, B, K, N] -> rhs's [B, G, K, N] (one batch: a reshape)
        swapped = (result.shape[1], result.shape[0], *result.shape[2:])
        result = result.reshape(swapped) if 1 in swapped[:2] else result.transpose(1, 0, 2, 3)
    return result.astype(operand.aval.dtype)


def _transpose(cotangent: Any, lhs: Any, rhs: Any, sizes: Any, **params: Any) -> list[Any]:
    lhs_linear = ad.is_undefined_primal(lhs)
    linear = lhs if lhs_linear else rhs
    if type(cotangent) is ad.Zero:
        zero = ad.Zero(linear.aval.to_tangent_aval())
        return [zero, None, None] if lhs_linear else [None, zero, None]
    if params["mode"] == "rows":
        if lhs_linear:  # dL = rows(dY, R with k, n swapped)
            grad = _cotangent(lhs, "rows", cotangent, rhs.transpose(0, 1, 3, 2), sizes, params)
        else:  # dR = contracting(L, dY): the rows axis m is the summed ragged axis
            grad = _cotangent(rhs, "contracting", lhs, cotangent, sizes, params)
    else:
        other = rhs if lhs_linear else lhs
        # dY [G, B, M, N] as grouped weights: [B, G, N, M] for dL, [B, G, M, N] for dR.
        weights = cotangent.transpose(1, 0, 3, 2) if lhs_linear else cotangent.transpose(1, 0, 2, 3)
        grad = _cotangent(linear, "rows", other, weights, sizes, params)
    return [grad, None, None] if lhs_linear else [None, grad, None]


ad.primitive_jvps[ragged_p] = _jvp
ad.primitive_transposes[ragged_p] = _transpose


def _moved(x: jax.Array, dim: int | None, size: int, position: int, like: Sequence[int]) -> Any:
    """``x`` with the mapped axis at ``position`` (broadcast there if ``x`` is not mapped)."""
    if dim is None:
        shape = (*like[:position], size, *like[position:])
        return lax.broadcast_in_dim(x, shape, [d for d in range(len(shape)) if d != position])
    return jnp.moveaxis(x, dim, position)


def _merged(x: jax.Array, position: int) -> jax.Array:
    """``x`` with its axes ``position`` and ``position + 1`` merged into one."""
    shape = x.shape
    return x.reshape(
        *shape[:position], shape[position] * shape[position + 1], *shape[position + 2 :]
    )


def _batch(
    axis_data: Any, args: Sequence[jax.Array], dims: Sequence[int | None], **params: Any
) -> tuple[jax.Array, int | None]:
    lhs, rhs, sizes = args
    lhs_dim, rhs_dim, sizes_dim = dims  # None: not mapped
    if lhs_dim is None and rhs_dim is None and sizes_dim is None:
        return ragged(lhs, rhs, sizes, **params), None
    size = axis_data.size
    shapes = [
        x.shape if d is None else x.shape[:d] + x.shape[d + 1 :]
        for x, d in zip(args, dims, strict=True)
    ]
    rows_mode = params["mode"] == "rows"
    free = (lhs_dim is None) != (rhs_dim is None) and sizes_dim is None
    if free and (not rows_mode or lhs_dim is None):
        # One more free axis of one operand: merged into its last axis (M of the contracting
        # mode's lhs, N of either rhs), and found in the output next to that axis.
        mapped_dim, operand = (lhs_dim, 0) if lhs_dim is not None else (rhs_dim, 1)
        assert mapped_dim is not None
        moved = list(args)
        moved[operand] = _merged(jnp.moveaxis(args[operand], mapped_dim, 3), 3)
        out = ragged(*moved, **params)
        out_axis = 3 if rows_mode or operand == 1 else 2
        return out.reshape(*out.shape[:out_axis], size, -1, *out.shape[out_axis + 1 :]), out_axis
    if rhs_dim is not None:
        # Mapped in R with L or the sizes (rows), or mapped in both operands or in the sizes
        # (contracting): a batch axis.
        position = rhs_position = 0
    elif rows_mode:  # in L and/or the sizes only: one more block of rows with their own sizes
        position, rhs_position = 1, None
    else:  # contracting, mapped in the sizes (and perhaps L): a batch axis
        position = rhs_position = 0
    new_lhs = _merged(_moved(lhs, lhs_dim, size, position, shapes[0]), position)
    new_sizes = _merged(_moved(sizes, sizes_dim, size, position, shapes[2]), position)
    new_rhs = rhs
    if rhs_position is not None:
        new_rhs = _merged(_moved(rhs, rhs_dim, size, rhs_position, shapes[1]), rhs_position)
    out = ragged(new_lhs, new_rhs, new_sizes, **params)
    out_position = position if rows_mode else 1  # contracting: [G, B, M, N]
    out = out.reshape(*out.shape[:out_position], size, -1, *out.shape[out_position + 1 :])
    return out, out_position


batching.fancy_primitive_batchers[ragged_p] = _batch
