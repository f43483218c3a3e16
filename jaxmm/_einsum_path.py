"""What ``einsum``'s subscripts say, checked, and the order of its contractions.

The subscripts are parsed here (letters per axis, ``...`` given fresh letters, NumPy's implicit
output), with the errors ``jnp.einsum`` raises for the same mistakes; the contraction order is
opt_einsum's path for the same ``optimize=``, as ``jnp.einsum`` asks for it, so that both
contract the same pairs in the same order.
"""

from __future__ import annotations

import functools
import string
from typing import Any

import opt_einsum  # type: ignore[import-untyped]  # (jnp.einsum's own path finder)

Letters = tuple[str, ...]  # one index letter per axis
Shape = tuple[int, ...]
Step = tuple[tuple[int, ...], Letters]  # (positions of the operands contracted, letters kept)


class _LeftToRight(opt_einsum.paths.PathOptimizer):  # type: ignore[misc]
    """``optimize=False``: contract the operands in the order given, as ``jnp.einsum``."""

    def __call__(
        self, inputs: list[Any], output: Any, size_dict: Any, memory_limit: Any = None
    ) -> list[tuple[int, int]]:
        return [(0, 1)] * (len(inputs) - 1)


def path(
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
        if len(positions) > 2:  # NotImplementedError, as jnp.einsum
            raise NotImplementedError(
                f"einsum optimize={optimize!r} contracts {len(positions)} operands at once; "
                "jaxmm.einsum (like jnp.einsum) contracts two at a time."
            )
        steps.append((tuple(positions), tuple(step_spec.split("->")[1])))
    return tuple(steps)


class _Shaped:
    """What opt_einsum needs to know of an operand: its shape."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape


def parse(subscripts: str, shapes: tuple[Shape, ...]) -> tuple[tuple[Letters, ...], Letters]:
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


def check_sizes(subscripts: str, letters: tuple[Letters, ...], shapes: tuple[Shape, ...]) -> None:
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
