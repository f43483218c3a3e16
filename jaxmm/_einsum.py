"""Two-operand ``einsum`` whose contraction is one ``jaxmm.dot_general``.

The seed's mnemonic in einsum form: the backward of ``'A,B->C'`` with respect to the first
operand is ``'C,B->A'`` (and with respect to the second, ``'A,C->B'``). Each index of ``A`` is
either kept in ``C`` or contracted with ``B``; in ``'C,B->A'`` the indices of ``B`` that reached
``C`` are the ones summed, exactly the ``Σ_j`` of ``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]``.
For ``'ij,jk->ik'`` (``Y = X W``): ``dX = einsum('ik,jk->ij', dY, W) = dY Wᵀ`` and
``dW = einsum('ij,ik->jk', X, dY) = Xᵀ dY``.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
from jax import lax

from ._checks import (
    as_array,
    canonicalize_precision,
    canonicalize_preferred_element_type,
    result_and_dot_dtypes,
)
from ._dot_general import dot_general
from ._residuals import ResidualFormat, canonicalize_residual
from ._typing import ArrayLike, DTypeLike, PrecisionLike


def einsum(
    subscripts: str,
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: Any = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Two-operand Einstein summation, as ``jnp.einsum``, contracted by ``jaxmm.dot_general``.

    Args:
      subscripts: ``'A,B->C'`` (or ``'A,B'`` for NumPy's implicit output), where ``A``, ``B`` and
        ``C`` are strings of index letters, optionally with one ``...`` each for broadcast axes.
      a: array with one axis per index in ``A``.
      b: array with one axis per index in ``B``.
      precision, preferred_element_type, out_sharding: as in ``jnp.einsum``.
      residual_dtype: jaxmm's own option, off by default: save the operands for the backward
        pass in ``jnp.bfloat16``, ``jnp.float16``, ``jnp.float8_e4m3fn`` or ``jnp.float8_e5m2``
        (or ``jnp.float32``, of float64 operands), scaled by a power of two where the dtype's
        range is narrower; the forward result stays exact (see :func:`jaxmm.dot_general`).
      residual_scaling: ``"tensor"`` (default) or ``"channel"``: one scale per saved operand,
        or one per index of its kept axes (see :func:`jaxmm.dot_general`).

    Returns:
      Array with one axis per index in ``C``.

    An index shared by ``a`` and ``b`` is a batch axis if it is in ``C`` and contracted otherwise;
    an index of only one operand that is not in ``C`` is summed within that operand first. A letter
    repeated within one operand (a trace or a diagonal) is refused with a ValueError.

    Backward: the backward of ``'A,B->C'`` with respect to ``a`` is ``'C,B->A'``, with respect to
    ``b`` it is ``'A,C->B'`` (the hand-derived ``dot_general`` rule).

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> jaxmm.einsum("ij,jk->ik", x, w).shape
      (2, 4)
    """
    return apply_einsum(
        dot_general,
        subscripts,
        (a, b),
        precision,
        preferred_element_type,
        out_sharding,
        canonicalize_residual(residual_dtype, residual_scaling),
    )


def apply_einsum(
    dot_general: Callable[..., jax.Array],
    subscripts: str,
    operands: tuple[ArrayLike, ...],
    precision: PrecisionLike,
    preferred_element_type: DTypeLike | None,
    out_sharding: Any,
    residual: ResidualFormat | None,
) -> jax.Array:
    """``einsum`` with every contraction computed by ``dot_general`` (a function with the
    signature of :func:`jaxmm.dot_general`): the one parser and layout plan of every
    differentiation mechanism."""
    if not isinstance(subscripts, str):
        raise TypeError(f"einsum subscripts must be a string, got {type(subscripts).__name__}.")
    a, b = operands
    return _einsum(
        subscripts,
        as_array(a, "einsum", 1),
        as_array(b, "einsum", 2),
        canonicalize_precision(precision),
        canonicalize_preferred_element_type(preferred_element_type),
        out_sharding,
        canonicalize_residual(residual),
        dot_general,
    )


# One compiled program when called un-jitted, inlined when traced (see ``_matmul``).
@partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7), inline=True)
def _einsum(
    subscripts, a, b, precision, preferred_element_type, out_sharding, residual, dot_general
):
    a_letters, b_letters, out_letters = _parse(subscripts, a.shape, b.shape)

    # A shared index of size 1 in one operand broadcasts against the other (as in jnp.einsum):
    # drop it from the size-1 side, where it is constant, and it becomes the other's own index.
    a, a_letters = _squeeze_broadcast(a, a_letters, b.shape, b_letters)
    b, b_letters = _squeeze_broadcast(b, b_letters, a.shape, a_letters)
    # Indices summed within one operand only: Σ over an axis no one else sees.
    a, a_letters = _sum_private(a, a_letters, b_letters + out_letters)
    b, b_letters = _sum_private(b, b_letters, a_letters + out_letters)

    batch = [c for c in a_letters if c in b_letters and c in out_letters]
    contract = [c for c in a_letters if c in b_letters and c not in out_letters]
    for c in batch + contract:
        a_size, b_size = a.shape[a_letters.index(c)], b.shape[b_letters.index(c)]
        if a_size != b_size:
            raise ValueError(
                f"einsum {subscripts!r}: index {c!r} has size {a_size} in operand 0 "
                f"(shape {a.shape}) and {b_size} in operand 1 (shape {b.shape})."
            )
    dimension_numbers = (
        (tuple(a_letters.index(c) for c in contract), tuple(b_letters.index(c) for c in contract)),
        (tuple(a_letters.index(c) for c in batch), tuple(b_letters.index(c) for c in batch)),
    )

    result_dtype, dot_dtype = result_and_dot_dtypes(a, b, preferred_element_type)
    product = dot_general(
        a,
        b,
        dimension_numbers,
        precision,
        dot_dtype,
        out_sharding=out_sharding,
        residual_dtype=residual,
    )
    # dot_general emits (batch, a's free, b's free); reorder to the requested output.
    product_letters = (
        batch
        + [c for c in a_letters if c not in b_letters]
        + [c for c in b_letters if c not in a_letters]
    )
    permutation = tuple(product_letters.index(c) for c in out_letters)
    if permutation != tuple(range(len(permutation))):
        product = lax.transpose(product, permutation)
    if product.dtype != result_dtype:
        product = lax.convert_element_type(product, result_dtype)
    return product


def _parse(subscripts: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]):
    """Letters for each axis of ``a``, ``b`` and the output, with ``...`` given fresh letters."""
    spec = subscripts.replace(" ", "")
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != 2:
        raise ValueError(
            f"jaxmm.einsum takes exactly two operands, but {subscripts!r} names {len(terms)}."
        )
    for term in terms + [output]:
        if any(c not in string.ascii_letters for c in term.replace("...", "")):
            raise ValueError(f"einsum {subscripts!r}: invalid subscript characters in {term!r}.")
        if term.count("...") > 1 or term.replace("...", "").count(".") > 0:
            raise ValueError(f"einsum {subscripts!r}: at most one '...' per term, in {term!r}.")

    # '...' stands for the leading axes not named by letters, broadcast NumPy-style (right
    # aligned) between the operands; each broadcast position gets an unused letter.
    unused = [c for c in string.ascii_letters if c not in spec]
    a_term, b_term = terms
    a_ellipsis = _ellipsis_rank(a_term, a_shape, subscripts, 0)
    b_ellipsis = _ellipsis_rank(b_term, b_shape, subscripts, 1)
    num_ellipsis = max(a_ellipsis, b_ellipsis)
    ellipsis_letters = "".join(unused[:num_ellipsis])
    a_letters = a_term.replace("...", ellipsis_letters[num_ellipsis - a_ellipsis :])
    b_letters = b_term.replace("...", ellipsis_letters[num_ellipsis - b_ellipsis :])
    if not arrow:  # implicit output: '...' then the letters used once, in alphabetical order
        named = a_term.replace("...", "") + b_term.replace("...", "")
        output = "..." + "".join(sorted(c for c in set(named) if named.count(c) == 1))
    out_letters = output.replace("...", ellipsis_letters)

    for which, letters in (
        ("operand 0", a_letters),
        ("operand 1", b_letters),
        ("output", out_letters),
    ):
        repeated = sorted({c for c in letters if letters.count(c) > 1})
        if repeated:
            raise ValueError(
                f"einsum {subscripts!r}: index {repeated[0]!r} is repeated in the {which}; "
                "traces and diagonals are not supported by jaxmm.einsum."
            )
    missing = [c for c in out_letters if c not in a_letters and c not in b_letters]
    if missing:
        raise ValueError(
            f"einsum {subscripts!r}: output index {missing[0]!r} appears in no operand."
        )
    return list(a_letters), list(b_letters), list(out_letters)


def _ellipsis_rank(term: str, shape: tuple[int, ...], subscripts: str, position: int) -> int:
    named = len(term.replace("...", ""))
    if ("..." in term and named > len(shape)) or ("..." not in term and named != len(shape)):
        raise ValueError(
            f"einsum {subscripts!r}: operand {position} has shape {shape} (rank {len(shape)}) "
            f"but its subscripts {term!r} name {named} axes."
        )
    return len(shape) - named


def _squeeze_broadcast(x, letters, other_shape, other_letters):
    """Drop the size-1 axes of ``x`` whose index the other operand has at another size."""
    size_one = [
        i
        for i, c in enumerate(letters)
        if x.shape[i] == 1 and c in other_letters and other_shape[other_letters.index(c)] != 1
    ]
    if not size_one:
        return x, letters
    return lax.squeeze(x, size_one), [c for i, c in enumerate(letters) if i not in size_one]


def _sum_private(x: jax.Array, letters: list[str], elsewhere: list[str]):
    """Sum out the axes whose index appears neither in the other operand nor in the output."""
    private = [i for i, c in enumerate(letters) if c not in elsewhere]
    if not private:
        return x, letters
    return lax.reduce_sum(x, private), [c for i, c in enumerate(letters) if i not in private]
