"""``einsum`` with any number of operands, each pairwise contraction one ``jaxmm.dot_general``.

The operands are contracted two at a time in the order ``jnp.einsum`` takes (opt_einsum's path
for the same ``optimize=``), so the hand-derived rule sees every product. The backward of one
pairwise contraction is the seed's mnemonic in einsum form: the backward of ``'A,B->C'`` with
respect to the first operand is ``'C,B->A'`` (and with respect to the second, ``'A,C->B'``). Each
index of ``A`` is either kept in ``C`` or contracted with ``B``; in ``'C,B->A'`` the indices of
``B`` that reached ``C`` are the ones summed, exactly the ``Σ_j`` of
``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]``. For ``'ij,jk->ik'`` (``Y = X W``):
``dX = einsum('ik,jk->ij', dY, W) = dY Wᵀ`` and ``dW = einsum('ij,ik->jk', X, dY) = Xᵀ dY``.
A chain ``'ij,jk,kl->il'`` is a chain of such products, and its backward is theirs, in reverse.

What one operand does on its own (sum an index no one else has, take a diagonal for a letter
repeated within it, transpose) is linear and not a product: it is done with ``lax`` reductions and
selects, as ``jnp.einsum`` does, and JAX differentiates those (a sum's cotangent is broadcast
back, a diagonal's is put back on the diagonal).

Why its own contraction loop, not ``jnp.einsum``'s
--------------------------------------------------
``jnp.einsum`` takes a private ``_dot_general=`` argument through which each contraction could
be routed to jaxmm's product. jaxmm does not build on it: it is not public API (no release
promises its signature or when it is called), and it cannot say which of the caller's operands
each contraction reads, which ``residual_dtype`` needs (one dtype per operand; intermediate
results are not the caller's). So jaxmm keeps the loop (about 150 lines here) and builds on what
``jnp.einsum`` builds on, opt_einsum's parser and path (:mod:`jaxmm._einsum_path`), with the same
rules for result dtype, sums within one operand, size-1 broadcasting and operand order, so that
results, dtypes, errors (types and the cases that raise) and the compiled dots are ``jnp``'s;
``tests/test_einsum.py`` pins each, including the contraction order for every ``optimize``.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import opt_einsum  # type: ignore[import-untyped]  # (jnp.einsum's own path finder)
from jax import lax

from ._checks import as_array, dot_dtype, result_dtype
from ._dot_general import apply_dot_general
from ._einsum_path import Letters, Shape, Step, check_sizes, parse, path
from ._options import Options
from ._rules import full_spec
from ._scope import named, staged
from ._typing import ArrayLike, DTypeLike, OutSharding, PrecisionLike, ResidualDTypeLike

OptimizeLike = bool | str | list[tuple[int, ...]]


@named("jaxmm.einsum")
def einsum(
    subscripts: str | ArrayLike,
    /,
    *operands: ArrayLike,
    out: None = None,
    optimize: OptimizeLike = "auto",
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    reduction_order: Any = None,
    residual_dtype: ResidualDTypeLike = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """Einstein summation, as ``jnp.einsum``, every contraction a ``jaxmm.dot_general``.

    Args:
      subscripts: ``'A,B,...->C'`` (or without ``->C`` for NumPy's implicit output), where each
        term is a string of index letters, optionally with one ``...`` for broadcast axes. Or,
        as in ``jnp.einsum``, the first operand of the operand/sublist form
        ``einsum(x, [0, 1], y, [1, 2], [0, 2])``: each operand followed by a list of integer
        labels (and ``Ellipsis``), then optionally the output's list.
      *operands: one array per term, with one axis per index of its term (in the sublist form,
        the rest of the operands and lists).
      out: unsupported, as in JAX.
      optimize: the contraction order, as in ``jnp.einsum``: ``'auto'`` (default), ``True``
        (``'optimal'``), ``False`` (left to right), any opt_einsum strategy name (``'greedy'``,
        ``'optimal'``, ``'dp'``, ...) or an explicit path such as ``jnp.einsum_path`` returns.
      precision, preferred_element_type, out_sharding: as in ``jnp.einsum``.
      residual_dtype: jaxmm's own option, off by default: save the operands for the backward
        pass in ``jnp.bfloat16``, ``jnp.float16``, ``jnp.float8_e4m3fn`` or ``jnp.float8_e5m2``
        (or ``jnp.float32``, of float64 operands), scaled by a power of two where the dtype's
        range is narrower; the forward result stays exact (see :func:`jaxmm.dot_general`).
      residual_scaling: ``"tensor"`` (default) or ``"channel"``: one scale per saved operand,
        or one per index of its kept axes (see :func:`jaxmm.dot_general`).

    Returns:
      Array with one axis per index in ``C``.

    An index shared by two operands of a pairwise contraction is a batch axis if it is needed
    later (in ``C`` or in another operand) and contracted otherwise; an index of only one operand
    that is not needed later is summed within that operand first; a letter repeated within one
    operand takes its diagonal (a trace when it is summed too). Boolean operands give a boolean
    result (sums are logical ors), as in ``jnp.einsum``.

    Backward: for each pairwise contraction ``'A,B->C'``, the cotangent of the first operand is
    ``'C,B->A'`` and of the second ``'A,C->B'`` (the hand-derived ``dot_general`` rule).

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> x, w, v = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.ones((4, 5))
      >>> jaxmm.einsum("ij,jk->ik", x, w).shape
      (2, 4)
      >>> jaxmm.einsum("ij,jk,kl->il", x, w, v)[0, 0]
      Array(12., dtype=float32)
      >>> jaxmm.einsum("ii->", jnp.eye(3))  # a trace: no product needed
      Array(3., dtype=float32)
      >>> jaxmm.einsum(x, [0, 1], w, [1, 2], [0, 2]).shape  # the sublist form
      (2, 4)
    """
    if out is not None:
        raise NotImplementedError("The 'out' argument to jaxmm.einsum is not supported.")
    opts = Options.of(
        precision,
        preferred_element_type,
        out_sharding,
        residual_dtype,
        residual_scaling,
        num_operands(subscripts, operands),
        reduction_order=reduction_order,
    )
    return apply_einsum(subscripts, operands, optimize, opts)


def apply_einsum(
    subscripts: str | ArrayLike,
    operands: tuple[Any, ...],
    optimize: OptimizeLike,
    options: Options,
) -> jax.Array:
    """``einsum`` with every contraction computed by ``options.mechanism``: the one parser, path
    and layout plan of every differentiation mechanism."""
    if not isinstance(subscripts, str):
        # jnp.einsum's operand/sublist form, einsum(x, [0, 1], y, [1, 2], [0, 2]): the same
        # parser as jnp's (opt_einsum's) turns it into subscripts, with the same errors.
        subscripts, operands = opt_einsum.parser.convert_interleaved_input((subscripts, *operands))
    assert isinstance(subscripts, str)
    arrays = tuple(as_array(x, "einsum", i + 1) for i, x in enumerate(operands))
    shapes = tuple(x.shape for x in arrays)
    letters, out_letters = parse(subscripts, shapes)
    check_sizes(subscripts, letters, shapes)
    steps = path(letters, out_letters, shapes, optimize)
    result: jax.Array = _einsum(arrays, letters, out_letters, steps, options)
    return result


def num_operands(subscripts: Any, operands: tuple[Any, ...]) -> int:
    """How many arrays an einsum call names: in the sublist form every other argument."""
    return len(operands) if isinstance(subscripts, str) else (len(operands) + 1) // 2


@staged(1, 2, 3, 4)
def _einsum(
    arrays: tuple[jax.Array, ...],
    letters: tuple[Letters, ...],
    out_letters: Letters,
    steps: tuple[Step, ...],
    options: Options,
) -> jax.Array:
    # As jnp.einsum: every product accumulates in the promoted dtype of all the operands (or
    # the preferred one), and a sum within one operand is taken in it.
    result = result_dtype(arrays, options.preferred_element_type)
    # Each term: (array, letters, the dtype it is saved in when it is an operand of a product):
    # the caller's operands as residual_dtype says, intermediate results as
    # ResidualFormat.intermediate says.
    residual = options.residual
    narrow = residual.dtypes if residual else (None,) * len(arrays)
    intermediate = residual.intermediate() if residual else None
    terms = list(zip(arrays, letters, narrow))
    for number, (positions, kept) in enumerate(steps):
        last = number == len(steps) - 1
        if len(positions) == 1:
            x, x_letters, _ = terms.pop(positions[0])
            terms.append((*_reduce(x, x_letters, kept, result), intermediate))
            continue
        # The earlier operand is the lhs: for two operands, dot_general(a, b) as written.
        a, b = (terms[i] for i in sorted(positions))
        for i in sorted(positions, reverse=True):
            terms.pop(i)
        step_options = options.replace(
            out_sharding=options.out_sharding if last else None,
            residual=residual and residual.pair(a[2], b[2]),
        )
        wanted = out_letters if last else kept
        y, y_letters = _contract(a[:2], b[:2], wanted, result, step_options)
        terms.append((y, y_letters, intermediate))
    ((x, x_letters, _),) = terms
    permutation = tuple(x_letters.index(c) for c in out_letters)
    if permutation != tuple(range(len(permutation))):
        x = lax.transpose(x, permutation)
    if options.out_sharding is not None and len(steps[-1][0]) == 1:  # no product took it
        x = jax.sharding.reshard(x, options.out_sharding)
    return x if x.dtype == result else lax.convert_element_type(x, result)


def _contract(
    a_term: tuple[jax.Array, Letters],
    b_term: tuple[jax.Array, Letters],
    wanted: Letters,
    result: np.dtype[Any],
    options: Options,
) -> tuple[jax.Array, Letters]:
    """One pairwise contraction: ``a`` and ``b`` reduced to the indices the other or ``wanted``
    needs, then one ``dot_general`` accumulating in the einsum's ``result`` dtype, sharded as
    ``options.out_sharding`` (given in ``wanted``'s order). Returns the product and its
    letters."""
    (a, a_letters), (b, b_letters) = a_term, b_term
    # A shared index of size 1 in one operand broadcasts against the other (as in jnp.einsum):
    # drop it from the size-1 side, where it is constant, and it becomes the other's own index.
    a, a_letters = _squeeze_broadcast(a, a_letters, b.shape, b_letters)
    b, b_letters = _squeeze_broadcast(b, b_letters, a.shape, a_letters)
    a, a_letters = _reduce(a, a_letters, (*b_letters, *wanted), result)
    b, b_letters = _reduce(b, b_letters, (*a_letters, *wanted), result)

    batch = [c for c in a_letters if c in b_letters and c in wanted]
    contract = [c for c in a_letters if c in b_letters and c not in wanted]
    a_free = [c for c in a_letters if c not in b_letters]
    b_free = [c for c in b_letters if c not in a_letters]
    residual = options.residual
    # dot_general emits (batch, lhs free, rhs free): with the operands swapped the result may
    # already be in the wanted order, and no transpose is needed (as jnp.einsum tries).
    if [*batch, *a_free, *b_free] != list(wanted) == [*batch, *b_free, *a_free]:
        a, a_letters, b, b_letters, a_free, b_free = b, b_letters, a, a_letters, b_free, a_free
        residual = residual and residual.pair(*reversed(residual.dtypes))
    dimension_numbers = (
        (tuple(a_letters.index(c) for c in contract), tuple(b_letters.index(c) for c in contract)),
        (tuple(a_letters.index(c) for c in batch), tuple(b_letters.index(c) for c in batch)),
    )
    product_letters = (*batch, *a_free, *b_free)
    product_options = options.replace(
        preferred_element_type=dot_dtype((a, b), result, options.preferred_element_type),
        out_sharding=_permuted_sharding(options.out_sharding, product_letters, wanted),
        residual=residual,
    )
    y = apply_dot_general(a, b, dimension_numbers, product_options)
    return y, product_letters


def _permuted_sharding(out_sharding: Any, product_letters: Letters, wanted: Letters) -> Any:
    """The sharding for the product's own axis order, given the one asked for in ``wanted``'s."""
    if out_sharding is None or tuple(product_letters) == tuple(wanted):
        return out_sharding
    spec = full_spec(out_sharding, len(wanted))
    permuted = jax.sharding.PartitionSpec(*(spec[list(wanted).index(c)] for c in product_letters))
    if isinstance(out_sharding, jax.sharding.PartitionSpec):  # of the mesh in context
        return permuted
    return out_sharding.update(spec=permuted)


def _sum(x: jax.Array, axes: tuple[int, ...], result_dtype: Any) -> jax.Array:
    """Σ over ``axes`` in the result dtype, a logical or for booleans (as jnp.einsum)."""
    if jax.dtypes.result_type(x, result_dtype) != x.dtype:
        x = lax.convert_element_type(x, result_dtype)
    if x.dtype == np.bool_:
        return lax.reduce_or(x, axes)
    return lax.reduce_sum(x, axes)


def _reduce(
    x: jax.Array, letters: Sequence[str], needed: Sequence[str], result_dtype: Any
) -> tuple[jax.Array, Letters]:
    """``x`` with each repeated letter reduced to its diagonal (one axis if the letter is
    ``needed``, none if not) and each letter nobody else ``needed`` summed out."""
    letters = list(letters)
    for c, count in collections.Counter(letters).items():
        if count == 1:
            continue
        axes = [i for i, d in enumerate(letters) if d == c]
        # x[..., i, ..., i, ...]: keep the elements whose indices along these axes agree, then
        # sum the copies away (all of them when the letter is a trace).
        on_diagonal = functools.reduce(
            lax.bitwise_and,
            (
                lax.eq(
                    lax.broadcasted_iota(np.int32, x.shape, axes[0]),
                    lax.broadcasted_iota(np.int32, x.shape, axis),
                )
                for axis in axes[1:]
            ),
        )
        x = lax.select(on_diagonal, x, lax.full_like(x, 0))
        summed = axes if c not in needed else axes[:-1]
        x = _sum(x, tuple(summed), result_dtype)
        letters = [d for i, d in enumerate(letters) if i not in summed]
    private = tuple(i for i, c in enumerate(letters) if c not in needed)
    if private:
        x = _sum(x, private, result_dtype)
        letters = [c for i, c in enumerate(letters) if i not in private]
    return x, tuple(letters)


def _squeeze_broadcast(
    x: jax.Array, letters: Letters, other_shape: Shape, other_letters: Letters
) -> tuple[jax.Array, Letters]:
    """Drop the size-1 axes of ``x`` whose index the other operand has at another size."""
    size_one = [
        i
        for i, c in enumerate(letters)
        if x.shape[i] == 1 and c in other_letters and other_shape[other_letters.index(c)] != 1
    ]
    if not size_one:
        return x, tuple(letters)
    return lax.squeeze(x, size_one), tuple(c for i, c in enumerate(letters) if i not in size_one)
