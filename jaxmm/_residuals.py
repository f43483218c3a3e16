"""What the forward pass saves of an operand for the backward pass, and how it is read back.

The default saves the operand itself. With ``residual_dtype`` a real floating operand wider than
that dtype is saved narrowed, and widened again when the backward pass reads it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from jax import lax

SCALINGS = ("tensor", "channel")


class ResidualFormat(NamedTuple):
    """How operands are saved for the backward pass: the canonical, hashable (static) form of the
    public ``residual_dtype`` and ``residual_scaling`` options."""

    dtype: np.dtype
    scaling: str  # one of SCALINGS


def canonicalize_residual(dtype: Any, scaling: str = "tensor") -> ResidualFormat | None:
    """``None`` (save the operands as they are), or the format to save them in.

    A ``ResidualFormat`` passes through unchanged, so that a public function can hand its
    canonical options on to another public function.
    """
    if isinstance(dtype, ResidualFormat):
        return dtype
    if scaling not in SCALINGS:
        raise ValueError(f"residual_scaling must be one of {SCALINGS}, got {scaling!r}.")
    if dtype is None:
        return None
    dtype = jax.dtypes.canonicalize_dtype(np.dtype(dtype))
    if not jax.numpy.issubdtype(dtype, np.floating):
        raise TypeError(f"residual_dtype must be a real floating-point dtype, got {dtype}.")
    return ResidualFormat(dtype, scaling)


def save_operand(operand: jax.Array, residual: ResidualFormat | None) -> Any:
    """The operand as saved for the backward pass: in ``residual.dtype`` if that is narrower."""
    if (
        residual is None
        or not jax.numpy.issubdtype(operand.dtype, np.floating)
        or residual.dtype.itemsize >= operand.dtype.itemsize
    ):
        return operand
    return lax.convert_element_type(operand, residual.dtype)


def load_operand(saved: Any, operand_type: Any) -> jax.Array:
    """A saved operand back in its own dtype (exact: every narrow value is a wide one)."""
    dtype = operand_type.dtype
    return saved if saved.dtype == dtype else lax.convert_element_type(saved, dtype)
