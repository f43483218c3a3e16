"""What the forward pass saves of an operand for the backward pass, and how it is read back.

The default saves the operand itself. With ``residual_dtype`` a real floating operand wider than
that dtype is saved narrowed, and widened again when the backward pass reads it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import lax


def save_operand(operand: jax.Array, residual_dtype: Any) -> Any:
    """The operand as saved for the backward pass: in ``residual_dtype`` if that is narrower."""
    if (
        residual_dtype is None
        or not jax.numpy.issubdtype(operand.dtype, np.floating)
        or np.dtype(residual_dtype).itemsize >= operand.dtype.itemsize
    ):
        return operand
    return lax.convert_element_type(operand, residual_dtype)


def load_operand(saved: Any, operand_type: Any) -> jax.Array:
    """A saved operand back in its own dtype (exact: every narrow value is a wide one)."""
    dtype = operand_type.dtype
    return saved if saved.dtype == dtype else lax.convert_element_type(saved, dtype)
