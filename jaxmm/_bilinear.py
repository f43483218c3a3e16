"""The exact product as a JAX primitive whose rules are written by hand, as ``lax.dot_general``'s.

Why a primitive, not ``jax.custom_vjp``
---------------------------------------
``jax.vmap`` of a ``custom_vjp`` function vmaps its backward rule: for a per-token product
``y = v W`` mapped over tokens with ``W`` shared, the rule ``dW[c, j] = dy[j] v[c]`` runs once per
token, and JAX sums the per-token ``dW`` afterwards. That is an array of ``tokens × W.size``, where
``Σ_n dy[n, j] v[n, c]`` is one product. A primitive carries its own batching rule, which folds the
mapped axes into the product before any rule runs; ``lax.dot_general`` is such a primitive, and so
is this one, with these rules:

- **JVP** (forward mode, and the first half of reverse mode): ``dY = dL·R + L·dR``, each term this
  primitive again (derived in :mod:`jaxmm._rules`). An operand with a symbolic-zero tangent
  (frozen weights, inputs) drops its term: no product is computed for it.
- **Transpose** (the second half of reverse mode): ``jax.grad`` linearizes with the JVP rule and
  transposes each tangent product with the backward rule of :mod:`jaxmm._rules`,
  ``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]`` and ``dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]``.
  What the backward pass keeps is what those products read: the other operand itself, which JAX
  reads "from the argument" where it is one (a weight, a ``lax.scan``'s sliced weights), exactly as
  for ``jnp``.
- **Batching**, derived: ``vmap`` adds one axis ``n`` to some operands. Mapped in ``L`` only,
  ``Y[n, b, i, j] = Σ_c L[n, b, i, c] R[b, c, j]``: ``n`` is one more *free* axis of ``L`` and of
  ``Y``. Mapped in both, ``Y[n, b, i, j] = Σ_c L[n, b, i, c] R[n, b, c, j]``: one more *batch*
  pair. Either way the batched product is this primitive with new dimension numbers, and nothing
  else. The backward rules then treat ``n`` as any other axis of its kind: a free axis of ``L`` is
  summed by ``dR``'s ``Σ_i`` (``dW = Σ_n dyᵀ v``, the contraction ``jnp``'s gradient makes) and kept
  by ``dL``; a batch axis is kept by both. Nested ``vmap`` adds one axis per level, so no
  per-example weight gradient is ever formed, unless the program asks for one
  (``vmap(grad(f))``, where the weight's cotangent is mapped and so the batch pair is kept).
- **Lowering**: ``lax.dot_general`` itself, so that the compiled program is ``jnp``'s.

The primal output of the JVP rule is ``lax.dot_general`` itself, so that a ``jax.checkpoint``
policy sees the product as the ``dot_general`` it is (``dots_saveable`` saves it exactly where it
saves ``jnp``'s). Operands saved narrowed (``residual_dtype``) need a rule that chooses its own
residuals: that is the ``jax.custom_vjp`` of :mod:`jaxmm._custom_vjp`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import _mechanisms, _rules
from ._options import Options
from ._typing import Dimensions

dot_general_p = Primitive("jaxmm_dot_general")


def bilinear_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options
) -> jax.Array:
    """``lax.dot_general`` of checked, canonical arguments as one ``jaxmm_dot_general`` (operands
    saved as they are: ``options.residual`` is ``None``)."""
    out: jax.Array = dot_general_p.bind(lhs, rhs, dimensions=dimensions, options=options)
    return out


def _lax_dot_general(
    lhs: jax.Array, rhs: jax.Array, *, dimensions: Dimensions, options: Options
) -> jax.Array:
    """What the primitive computes and lowers to."""
    return lax.dot_general(lhs, rhs, dimensions, **options.lax_params())


def _abstract_eval(lhs: Any, rhs: Any, *, dimensions: Dimensions, options: Options) -> Any:
    return _mechanisms.result_type(lhs, rhs, dimensions, options)


dot_general_p.def_impl(_lax_dot_general)
dot_general_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(dot_general_p, mlir.lower_fun(_lax_dot_general, multiple_results=False))


def _jvp(primals: Sequence[Any], tangents: Sequence[Any], **params: Any) -> tuple[Any, Any]:
    lhs, rhs = primals
    out = _lax_dot_general(lhs, rhs, **params)
    lhs_dot, rhs_dot = (None if type(t) is ad.Zero else t for t in tangents)
    out_dot = _rules.tangent(lhs, rhs, lhs_dot, rhs_dot, partial(dot_general_p.bind, **params))
    return out, ad.Zero(jax.typeof(out).to_tangent_aval()) if out_dot is None else out_dot


def _transpose(
    cotangent: Any, lhs: Any, rhs: Any, *, dimensions: Dimensions, options: Options
) -> list[Any]:
    linear = (ad.is_undefined_primal(lhs), ad.is_undefined_primal(rhs))
    types = tuple(x.aval if ad.is_undefined_primal(x) else jax.typeof(x) for x in (lhs, rhs))
    if type(cotangent) is ad.Zero:
        ct: Any = ad.Zero((lhs if linear[0] else rhs).aval.to_tangent_aval())
    else:
        ct = _mechanisms.transpose(cotangent, lhs, rhs, linear, types, dimensions, options)
    return [ct, None] if linear[0] else [None, ct]


ad.primitive_jvps[dot_general_p] = _jvp
ad.primitive_transposes[dot_general_p] = _transpose


def _batch(
    axis_data: Any, args: Sequence[jax.Array], dims: Sequence[int | None], **params: Any
) -> tuple[jax.Array, int | None]:
    lhs, rhs = args
    return _mechanisms.batch(
        bilinear_dot_general, lhs, rhs, (dims[0], dims[1]), axis_data=axis_data, **params
    )


batching.fancy_primitive_batchers[dot_general_p] = _batch
