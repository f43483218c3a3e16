"""The types of jaxmm's public signatures: JAX's own, so that a type checker treats a jaxmm call
exactly as the ``jnp`` / ``lax`` call it replaces."""

from __future__ import annotations

from collections.abc import Sequence

from jax import lax
from jax.sharding import NamedSharding, PartitionSpec
from jax.typing import ArrayLike as ArrayLike
from jax.typing import DTypeLike as DTypeLike

# As lax.PrecisionLike (spelled out: older JAX releases do not export it).
PrecisionLike = (
    None
    | str
    | lax.Precision
    | tuple[str, str]
    | tuple[lax.Precision, lax.Precision]
    | lax.DotAlgorithm
    | lax.DotAlgorithmPreset
)

# ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)), as lax.DotDimensionNumbers.
DotDimensionNumbers = tuple[
    tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]
]

# The same, canonical (checked, tuples of ints): what jaxmm's internals pass around.
Dimensions = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]

# jaxmm's residual_dtype: one dtype for every operand, or one (or None: as it is) per operand.
ResidualDTypeLike = DTypeLike | Sequence[DTypeLike | None] | None

# As the out_sharding of jnp.matmul, jnp.einsum and lax.dot_general.
OutSharding = NamedSharding | PartitionSpec | None

__all__ = [
    "ArrayLike",
    "DTypeLike",
    "Dimensions",
    "DotDimensionNumbers",
    "OutSharding",
    "PrecisionLike",
    "ResidualDTypeLike",
]
