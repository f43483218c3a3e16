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
"""

from __future__ import annotations

import collections
import functools
import string
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import numpy as np
import opt_einsum  # type: ignore[import-untyped]  # (jnp.einsum's own path finder)
from jax import lax

from ._checks import as_array, dot_dtype, result_dtype
from ._dot_general import apply_dot_general, product
from ._options import Options, Product
from ._scope import named
from ._typing import ArrayLike, DTypeLike, OutSharding, PrecisionLike

OptimizeLike = bool | str | list[tuple[int, ...]]
Letters = tuple[str, ...]  # one index letter per axis
Shape = tuple[int, ...]
Step = tuple[tuple[int, ...], Letters]  # (positions of the operands contracted, letters kept)


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
    residual_dtype: DTypeLike | None = None,
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
    )
    return apply_einsum(product, subscripts, operands, optimize, opts)


def apply_einsum(
    product: Product,
    subscripts: str | ArrayLike,
    operands: tuple[Any, ...],
    optimize: OptimizeLike,
    options: Options,
) -> jax.Array:
    """``einsum`` with every contraction computed by ``product``: the one parser, path and layout
    plan of every differentiation mechanism."""
    if not isinstance(subscripts, str):
        # jnp.einsum's operand/sublist form, einsum(x, [0, 1], y, [1, 2], [0, 2]): the same
        # parser as jnp's (opt_einsum's) turns it into subscripts, with the same errors.
        subscripts, operands = opt_einsum.parser.convert_interleaved_input((subscripts, *operands))
    assert isinstance(subscripts, str)
    arrays = tuple(as_array(x, "einsum", i + 1) for i, x in enumerate(operands))
    shapes = tuple(x.shape for x in arrays)
    letters, out_letters = _parse(subscripts, shapes)
    _check_sizes(subscripts, letters, shapes)
    steps = _path(letters, out_letters, shapes, optimize)
    result: jax.Array = _einsum(arrays, letters, out_letters, steps, options, product)
    return result


def num_operands(subscripts: Any, operands: tuple[Any, ...]) -> int:
    """How many arrays an einsum call names: in the sublist form every other argument."""
    return len(operands) if isinstance(subscripts, str) else (len(operands) + 1) // 2


# One compiled program when called un-jitted, inlined when traced (see ``_matmul``).
@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5), inline=True)
def _einsum(
    arrays: tuple[jax.Array, ...],
    letters: tuple[Letters, ...],
    out_letters: Letters,
    steps: tuple[Step, ...],
    options: Options,
    product: Product,
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
        y, y_letters = _contract(a[:2], b[:2], wanted, result, step_options, product)
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
    product: Product,
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
    y = apply_dot_general(product, a, b, dimension_numbers, product_options)
    return y, product_letters


def _permuted_sharding(out_sharding: Any, product_letters: Letters, wanted: Letters) -> Any:
    """The sharding for the product's own axis order, given the one asked for in ``wanted``'s."""
    if out_sharding is None or tuple(product_letters) == tuple(wanted):
        return out_sharding
    if not isinstance(out_sharding, jax.sharding.NamedSharding):
        raise NotImplementedError("einsum's out_sharding must be a NamedSharding.")
    spec = tuple(out_sharding.spec) + (None,) * (len(wanted) - len(out_sharding.spec))
    permuted = (spec[list(wanted).index(c)] for c in product_letters)
    return out_sharding.update(spec=jax.sharding.PartitionSpec(*permuted))


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


class _LeftToRight(opt_einsum.paths.PathOptimizer):  # type: ignore[misc]
    """``optimize=False``: contract the operands in the order given, as ``jnp.einsum``."""

    def __call__(
        self, inputs: list[Any], output: Any, size_dict: Any, memory_limit: Any = None
    ) -> list[tuple[int, int]]:
        return [(0, 1)] * (len(inputs) - 1)


def _path(
    letters: tuple[Letters, ...], out_letters: Letters, shapes: tuple[Shape, ...], optimize: Any
) -> tuple[Step, ...]:
    """The contraction steps ``jnp.einsum`` takes: ``(operand positions, letters kept)`` each,
    the positions into the list of operands left, the result appended last."""
    if isinstance(optimize, list):
        if optimize and optimize[0] == "einsum_path":  # NumPy's form of a path
            optimize = optimize[1:]
        optimize = tuple(tuple(step) for step in optimize)
    return _cached_path(tuple(letters), tuple(out_letters), shapes, optimize)


@functools.lru_cache(maxsize=256)
def _cached_path(
    letters: tuple[Letters, ...], out_letters: Letters, shapes: tuple[Shape, ...], optimize: Any
) -> tuple[Step, ...]:
    spec = ",".join("".join(term) for term in letters) + "->" + "".join(out_letters)
    strategy: Any
    if optimize is True:
        strategy = "optimal"
    elif optimize is False:
        strategy = _LeftToRight()
    else:
        strategy = list(optimize) if isinstance(optimize, tuple) else optimize
    dummies = [_Shaped(shape) for shape in shapes]
    # einsum_call=True: opt_einsum's (operands, contraction list) form, as jnp.einsum uses it.
    contractions: Any = opt_einsum.contract_path(
        spec, *dummies, einsum_call=True, use_blas=True, optimize=strategy
    )[1]
    steps = []
    for positions, _, step_spec, *_ in contractions:
        if len(positions) > 2:
            raise ValueError(
                f"einsum optimize={optimize!r} contracts {len(positions)} operands at once; "
                "jaxmm.einsum (like jnp.einsum) contracts two at a time."
            )
        steps.append((tuple(positions), tuple(step_spec.split("->")[1])))
    return tuple(steps)


class _Shaped:
    """What opt_einsum needs to know of an operand: its shape."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape


def _parse(subscripts: str, shapes: tuple[Shape, ...]) -> tuple[tuple[Letters, ...], Letters]:
    """Letters for each axis of every operand and of the output, ``...`` given fresh letters."""
    spec = subscripts.replace(" ", "")
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(
            f"einsum {subscripts!r} names {len(terms)} operand(s), but {len(shapes)} were given."
        )
    for term in terms + [output]:
        if any(c not in string.ascii_letters for c in term.replace("...", "")):
            raise ValueError(f"einsum {subscripts!r}: invalid subscript characters in {term!r}.")
        if term.count("...") > 1 or term.replace("...", "").count(".") > 0:
            raise ValueError(f"einsum {subscripts!r}: at most one '...' per term, in {term!r}.")

    # '...' stands for the leading axes not named by letters, broadcast NumPy-style (right
    # aligned) between the operands; each broadcast position gets an unused letter.
    unused = [c for c in string.ascii_letters if c not in spec]
    ellipsis_ranks = [
        _ellipsis_rank(term, shape, subscripts, position)
        for position, (term, shape) in enumerate(zip(terms, shapes))
    ]
    num_ellipsis = max(ellipsis_ranks)
    if num_ellipsis > len(unused):
        raise ValueError(f"einsum {subscripts!r}: too many axes under '...' to name.")
    ellipsis_letters = "".join(unused[:num_ellipsis])
    letters = [
        tuple(term.replace("...", ellipsis_letters[num_ellipsis - rank :]))
        for term, rank in zip(terms, ellipsis_ranks)
    ]
    if not arrow:  # implicit output: '...' then the letters used once, in alphabetical order
        named = "".join(term.replace("...", "") for term in terms)
        output = "..." + "".join(sorted(c for c in set(named) if named.count(c) == 1))
    out_letters = tuple(output.replace("...", ellipsis_letters))

    repeated = sorted({c for c in out_letters if out_letters.count(c) > 1})
    if repeated:
        raise ValueError(
            f"einsum {subscripts!r}: output index {repeated[0]!r} appears more than once."
        )
    missing = [c for c in out_letters if not any(c in term for term in letters)]
    if missing:
        raise ValueError(
            f"einsum {subscripts!r}: output index {missing[0]!r} appears in no operand."
        )
    return tuple(letters), out_letters


def _ellipsis_rank(term: str, shape: tuple[int, ...], subscripts: str, position: int) -> int:
    named = len(term.replace("...", ""))
    if ("..." in term and named > len(shape)) or ("..." not in term and named != len(shape)):
        raise ValueError(
            f"einsum {subscripts!r}: operand {position} has shape {shape} (rank {len(shape)}) "
            f"but its subscripts {term!r} name {named} axes."
        )
    return len(shape) - named


def _check_sizes(subscripts: str, letters: tuple[Letters, ...], shapes: tuple[Shape, ...]) -> None:
    """Every index has one size, or size 1 where it broadcasts against another operand; a letter
    repeated within one operand (a diagonal) has one size there."""
    seen: dict[str, tuple[int, int]] = {}  # letter -> (size, operand position)
    for position, (term, shape) in enumerate(zip(letters, shapes)):
        own: dict[str, int] = {}
        for c, size in zip(term, shape):
            if c in own and own[c] != size:
                raise ValueError(
                    f"einsum {subscripts!r}: index {c!r} is repeated in operand {position} "
                    f"(shape {shape}) with sizes {own[c]} and {size}; a diagonal needs equal "
                    "sizes."
                )
            own[c] = size
            if c not in seen or seen[c][0] == 1:
                seen[c] = (size, position)
            elif size not in (1, seen[c][0]):
                other_size, other = seen[c]
                raise ValueError(
                    f"einsum {subscripts!r}: index {c!r} has size {other_size} in operand "
                    f"{other} (shape {shapes[other]}) and {size} in operand {position} "
                    f"(shape {shape})."
                )
