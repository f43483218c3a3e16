"""``matmul`` with NumPy semantics, lowered onto the hand-differentiated ``dot_general``.

The 2-D derivation (the seed note, for ``Y = W X``)
-------------------------------------------------
``Y[a, b] = Σ_c W[a, c] X[c, b]``. By the chain rule,
``dX[i, j] = Σ_{a, b} dY[a, b] ∂Y[a, b]/∂X[i, j]``. ``Y[a, b]`` reads column ``b`` of ``X`` only,
so every term with ``b ≠ j`` is zero; in ``Y[a, j] = … + W[a, i] X[i, j] + …`` the one term
holding ``X[i, j]`` has derivative ``W[a, i]``.
Hence ``dX[i, j] = Σ_a W[a, i] dY[a, j] = (Wᵀ dY)[i, j]``, and in the same way
``dW[i, j] = Σ_b dY[i, b] X[j, b] = (dY Xᵀ)[i, j]``. For ``Y = X W`` the mirror image:
``dX = dY Wᵀ``, ``dW = Xᵀ dY``. The mnemonic: swap ``X`` with ``dX`` and ``Y`` with ``dY``, and
transpose ``W`` where it stands.

Vectors and batches
-------------------
A 1-D ``a`` is a single row (its one axis is contracted, it has no free axis); a 1-D ``b`` is a
single column. Leading axes are batch axes, broadcast as in NumPy. An axis that both operands have
at the same size becomes a ``dot_general`` batch axis. An axis that only one operand has, or that
is 1 in one operand and ``n`` in the other, is an ordinary *free* axis of the operand that has it
at size ``n``, and the size-1 axis is squeezed from the other operand: nothing is ever
materialised by broadcasting.

Why the broadcast cotangent is a sum: say ``W`` is shared across a batch axis ``k`` of ``X``,
``Y[k] = X[k] W``. Every ``Y[k, a, b]`` depends on ``W``, so the chain rule sums over ``k`` too:
``dW = Σ_k X[k]ᵀ dY[k]``. Since ``k`` is a free axis of ``X`` (not a batch axis of the product),
that sum is exactly the contraction over ``X``'s free axes in the general ``dot_general`` rule,
``dR[c, j] = Σ_i dY[i, j] L[i, c]`` with ``i`` running over ``(k, a)``. So the cotangent of a
broadcast operand comes back summed to that operand's own shape, in the same single product, and
re-inserting the squeezed size-1 axes restores its rank.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import lax

from ._checks import as_array, dot_dtype, result_dtype
from ._dot_general import apply_dot_general
from ._options import Options
from ._rules import full_spec
from ._scope import named, staged
from ._typing import ArrayLike, DTypeLike, OutSharding, PrecisionLike, ResidualDTypeLike


@named("jaxmm.matmul")
def matmul(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    reduction_order: Any = None,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Matrix product with the semantics of ``jnp.matmul`` and a hand-derived backward pass.

    Args:
      a: array of shape ``(n,)`` or ``(..., m, n)``.
      b: array of shape ``(n,)`` or ``(..., n, k)``; its leading axes broadcast against ``a``'s.
      precision: as in ``jnp.matmul``; applies to the backward products too.
      preferred_element_type: result and accumulation dtype, as in ``jnp.matmul``.
      out_sharding: sharding of the result, as in ``jnp.matmul``.
      reduction_order: JAX's (0.12.1 and newer) summation-order control; jaxmm takes only
        ``None`` (NotImplementedError otherwise: its backward products contract other axes).
      residual_dtype: jaxmm's own option, off by default: save the operands for the backward
        pass in ``jnp.bfloat16``, ``jnp.float16``, ``jnp.float8_e4m3fn`` or ``jnp.float8_e5m2``
        (or ``jnp.float32``, of float64 operands), scaled by a power of two where the dtype's
        range is narrower; the forward result stays exact (see :func:`jaxmm.dot_general`).
      residual_scaling: ``"tensor"`` (default) or ``"channel"``: one scale per saved operand,
        or one per index of its kept axes (see :func:`jaxmm.dot_general`).

    Returns:
      Array of shape ``(..., m, k)`` (the leading axes broadcast together), with the axis ``m``
      dropped when ``a`` is 1-D and ``k`` dropped when ``b`` is 1-D; dtype as ``jnp.matmul``'s.

    Backward, for ``Y = A B`` with upstream gradient ``dY``::

      dA = dY Bᵀ      dA[i, c] = Σ_j dY[i, j] B[c, j]
      dB = Aᵀ dY      dB[c, j] = Σ_i A[i, c] dY[i, j]

    summed over every batch axis along which an operand was broadcast.

    Example:
      >>> import jax, jax.numpy as jnp, jaxmm
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> w = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> jaxmm.matmul(x, w)
      Array([[1., 4.],
             [3., 8.]], dtype=float32)
      >>> jax.grad(lambda w: jaxmm.matmul(x, w).sum())(w)  # Xᵀ dY with dY = ones
      Array([[4., 4.],
             [6., 6.]], dtype=float32)
    """
    return apply_matmul(
        a,
        b,
        Options.of(
            precision,
            preferred_element_type,
            out_sharding,
            residual_dtype,
            residual_scaling,
            reduction_order=reduction_order,
        ),
    )


def apply_matmul(a: ArrayLike, b: ArrayLike, options: Options) -> jax.Array:
    """``matmul`` with every product computed by ``options.mechanism``: the one layout plan of
    every differentiation mechanism, and of ``matvec``, ``vecmat`` and ``vecdot``."""
    out: jax.Array = _matmul(as_array(a, "matmul", 0), as_array(b, "matmul", 1), options)
    return out


@staged(2)
def _matmul(a: jax.Array, b: jax.Array, options: Options) -> jax.Array:
    for position, operand in enumerate((a, b)):
        if operand.ndim < 1:
            raise ValueError(
                f"matmul input operand {position} must have ndim at least 1, but it has ndim 0 "
                f"(shapes {a.shape} and {b.shape})."
            )
    a_is_matrix, b_is_matrix = a.ndim > 1, b.ndim > 1
    a_inner = a.shape[-1]
    b_inner = b.shape[-2] if b_is_matrix else b.shape[0]
    if a_inner != b_inner:
        raise TypeError(
            f"matmul contracting dimensions differ: a of shape {a.shape} has {a_inner} columns, "
            f"b of shape {b.shape} has {b_inner} rows."
        )

    result = result_dtype((a, b), options.preferred_element_type)

    # Classify each broadcast batch position (right-aligned, as in NumPy).
    a_batch_shape = a.shape[:-2] if a_is_matrix else ()
    b_batch_shape = b.shape[:-2] if b_is_matrix else ()
    num_batch = max(len(a_batch_shape), len(b_batch_shape))
    a_sizes = (None,) * (num_batch - len(a_batch_shape)) + a_batch_shape
    b_sizes = (None,) * (num_batch - len(b_batch_shape)) + b_batch_shape
    a_specs = _batch_specs(a, a_is_matrix, num_batch)
    b_specs = _batch_specs(b, b_is_matrix, num_batch)

    a_squeeze: list[int] = []  # axes to squeeze from a, from b, and to re-insert
    b_squeeze: list[int] = []
    both_squeeze: list[int] = []
    a_batch: list[int] = []  # dot_general batch axes, in the squeezed operands
    b_batch: list[int] = []
    out_batch: list[int] = []  # output position of each product axis
    out_a_free: list[int] = []
    out_b_free: list[int] = []
    for position, (a_size, b_size, a_spec, b_spec) in enumerate(
        zip(a_sizes, b_sizes, a_specs, b_specs)
    ):
        a_axis = len(out_batch) + len(out_a_free) + len(a_squeeze)  # this axis in a, if a has it
        b_axis = len(out_batch) + len(out_b_free) + len(b_squeeze)
        if a_size is None:
            out_b_free.append(position)
        elif b_size is None:
            out_a_free.append(position)
        elif a_size == 1 and b_size == 1 and a_spec is None and b_spec is None:
            a_squeeze.append(a_axis)
            b_squeeze.append(b_axis)
            both_squeeze.append(position)
        elif a_size == 1 and a_spec is None:  # a is broadcast along b's axis
            a_squeeze.append(a_axis)
            out_b_free.append(position)
        elif b_size == 1 and b_spec is None:  # b is broadcast along a's axis
            b_squeeze.append(b_axis)
            out_a_free.append(position)
        elif a_size == b_size and a_spec == b_spec:
            a_batch.append(len(out_batch) + len(out_a_free))
            b_batch.append(len(out_batch) + len(out_b_free))
            out_batch.append(position)
        else:
            raise ValueError(
                f"matmul batch dimensions do not broadcast: a of shape {a.shape} and b of shape "
                f"{b.shape} have batch shapes {a_batch_shape} and {b_batch_shape} "
                f"(sizes {a_size} and {b_size} at broadcast position {position})."
            )
    if a_is_matrix:
        out_a_free.append(num_batch)
    if b_is_matrix:
        out_b_free.append(num_batch + a_is_matrix)

    a = lax.squeeze(a, a_squeeze) if a_squeeze else a
    b = lax.squeeze(b, b_squeeze) if b_squeeze else b
    y = apply_dot_general(
        a,
        b,
        (((a.ndim - 1,), (b.ndim - 1 - b_is_matrix,)), (tuple(a_batch), tuple(b_batch))),
        options.replace(
            preferred_element_type=dot_dtype((a, b), result, options.preferred_element_type)
        ),
    )
    # dot_general emits (batch, a free, b free); put each axis at its broadcast position.
    permutation = tuple(int(p) for p in np.argsort(out_batch + out_a_free + out_b_free))
    if permutation != tuple(range(y.ndim)):
        y = lax.transpose(y, permutation)
    if both_squeeze:
        y = lax.expand_dims(y, both_squeeze)
    return y if y.dtype == result else lax.convert_element_type(y, result)


def _batch_specs(x: jax.Array, is_matrix: bool, num_batch: int) -> tuple[Any, ...]:
    """The sharding of each leading (batch) axis, right-aligned to ``num_batch`` positions.

    A size-1 axis that is sharded is not squeezed away (as in ``jnp.matmul``): squeezing it would
    drop its sharding.
    """
    if not is_matrix:
        return (None,) * num_batch
    spec = full_spec(jax.typeof(x).sharding, x.ndim)
    batch_spec = spec[:-2]
    return (None,) * (num_batch - len(batch_spec)) + batch_spec
