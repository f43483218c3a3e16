"""Input checks shared by the public functions.

Every check runs on shapes alone, at trace time, before any computation is staged. The exception
types are the ones ``jnp.matmul`` and ``lax.dot_general`` raise for the same mistake, so code that
catches JAX's errors catches ours; the messages name the offending shapes and dimensions.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._typing import Dimensions

_SCALAR_TYPES = (bool, int, float, complex, np.generic)


def as_array(x: Any, name: str, position: int) -> jax.Array:
    """``x`` as a JAX array, or the TypeError JAX raises for a value that is not an array.

    Python lists and tuples are refused as ``jnp.matmul`` refuses them: silently turning a nested
    list into an array hides bugs (and costs a host-to-device copy per call).
    """
    if isinstance(x, jax.Array):  # arrays and tracers as they are: no op to trace or dispatch
        return x
    if isinstance(x, (np.ndarray, *_SCALAR_TYPES)) or hasattr(x, "__jax_array__"):
        return jnp.asarray(x)
    raise TypeError(
        f"{name} requires array or scalar arguments, got {type(x).__name__} at position {position}."
    )


def _as_dims(dims: Any, what: str) -> tuple[int, ...]:
    """A tuple of Python ints from an int or a sequence of ints (lists, tuples, NumPy ints)."""
    try:
        if isinstance(dims, (int, np.integer)):
            return (operator.index(dims),)
        return tuple(operator.index(d) for d in dims)
    except TypeError:
        raise TypeError(f"dot_general {what} must be a sequence of ints, got {dims!r}.") from None


def canonicalize_dimension_numbers(dimension_numbers: Any) -> Dimensions:
    """``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))`` as tuples of ints."""
    if dimension_numbers is None:
        raise TypeError(
            "dot_general requires dimension_numbers "
            "((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)), got None."
        )
    try:
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    except (TypeError, ValueError):
        # A sequence of the wrong length is a ValueError in lax.dot_general too.
        raise ValueError(
            "dot_general dimension_numbers must be "
            "((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)), "
            f"got {dimension_numbers!r}."
        ) from None
    return (
        (_as_dims(lhs_contract, "lhs_contracting"), _as_dims(rhs_contract, "rhs_contracting")),
        (_as_dims(lhs_batch, "lhs_batch"), _as_dims(rhs_batch, "rhs_batch")),
    )


def _check_operand_dims(
    side: str, shape: Sequence[int], contract: tuple[int, ...], batch: tuple[int, ...]
) -> None:
    ndim = len(shape)
    bad = [d for d in contract + batch if not 0 <= d < ndim]
    if bad:
        raise TypeError(
            f"dot_general {side} dimension numbers must be nonnegative and less than the rank of "
            f"{side}: {side} has shape {tuple(shape)} (rank {ndim}), got {side}_contracting "
            f"{contract} and {side}_batch {batch}; out of range: {tuple(bad)}."
        )
    for what, dims in (("contracting", contract), ("batch", batch)):
        if len(set(dims)) != len(dims):
            raise TypeError(f"dot_general {side}_{what} dimensions must be distinct, got {dims}.")
    overlap = sorted(set(contract) & set(batch))
    if overlap:
        raise TypeError(
            f"dot_general {side} batch dimensions must be disjoint from its contracting "
            f"dimensions, got {side}_batch {batch} and {side}_contracting {contract} "
            f"(both contain {tuple(overlap)})."
        )


def check_dot_general(
    lhs_shape: Sequence[int], rhs_shape: Sequence[int], dimension_numbers: Dimensions
) -> None:
    """Raise TypeError, as ``lax.dot_general`` does, unless the dimension numbers fit the shapes."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    for what, lhs_dims, rhs_dims in (
        ("contracting", lhs_contract, rhs_contract),
        ("batch", lhs_batch, rhs_batch),
    ):
        if len(lhs_dims) != len(rhs_dims):
            raise TypeError(
                f"dot_general requires equal numbers of lhs_{what} and rhs_{what} dimensions, "
                f"got lhs_{what} {lhs_dims} and rhs_{what} {rhs_dims}."
            )
    _check_operand_dims("lhs", lhs_shape, lhs_contract, lhs_batch)
    _check_operand_dims("rhs", rhs_shape, rhs_contract, rhs_batch)
    for what, lhs_dims, rhs_dims in (
        ("contracting", lhs_contract, rhs_contract),
        ("batch", lhs_batch, rhs_batch),
    ):
        lhs_sizes = tuple(lhs_shape[d] for d in lhs_dims)
        rhs_sizes = tuple(rhs_shape[d] for d in rhs_dims)
        if lhs_sizes != rhs_sizes:
            raise TypeError(
                f"dot_general requires {what} dimensions of equal sizes: lhs of shape "
                f"{tuple(lhs_shape)} has {what} dims {lhs_dims} of sizes {lhs_sizes}, rhs of "
                f"shape {tuple(rhs_shape)} has {what} dims {rhs_dims} of sizes {rhs_sizes}."
            )


def result_dtype(arrays: Sequence[jax.Array], preferred_element_type: Any) -> np.dtype[Any]:
    """The dtype ``jnp.matmul`` / ``jnp.einsum`` return: ``preferred_element_type`` (canonical,
    :class:`~jaxmm._options.Options`) or the operands' promoted dtype."""
    if preferred_element_type is not None:
        return preferred_element_type  # type: ignore[no-any-return]
    return jax.dtypes.result_type(*arrays)


def dot_dtype(
    arrays: Sequence[jax.Array], result: np.dtype[Any], preferred_element_type: Any
) -> np.dtype[Any] | None:
    """The ``preferred_element_type`` to give one product of ``arrays`` computing a ``result``:
    none for operands already of the result dtype (unless asked for), which keeps a weakly-typed
    result weak, as JAX's is."""
    if preferred_element_type is None and all(x.dtype == result for x in arrays):
        return None
    return result


def linear_cross_entropy_arrays(
    x: Any, w: Any, labels: Any, where: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``linear_cross_entropy``'s arrays, checked: ``x`` ``(..., d)`` and ``w`` ``(d, V)``
    floating (in their common dtype), integer ``labels`` and boolean ``where`` of shape
    ``(...)`` (``where=None``: every token)."""
    name = "linear_cross_entropy"
    x, w, labels = as_array(x, name, 0), as_array(w, name, 1), as_array(labels, name, 2)
    mask = jnp.ones(labels.shape, bool) if where is None else as_array(where, name, 3)
    for what, array, kind in (
        ("x", x, np.floating),
        ("w", w, np.floating),
        ("labels", labels, np.integer),
        ("where", mask, np.bool_),
    ):
        if not jnp.issubdtype(array.dtype, kind):
            wanted = {np.floating: "a floating", np.integer: "an integer", np.bool_: "a boolean"}
            raise TypeError(
                f"{name} requires {wanted[kind]} dtype for {what}, got {what} of dtype "
                f"{array.dtype} and shape {array.shape}."
            )
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            f"{name} requires x of shape (..., d) and w of shape (d, V), got x of shape "
            f"{x.shape} and w of shape {w.shape}."
        )
    if w.shape[1] == 0:
        raise ValueError(f"{name} requires a vocabulary of at least one entry, got w {w.shape}.")
    if labels.shape != x.shape[:-1] or mask.shape != labels.shape:
        raise ValueError(
            f"{name} requires labels and where of shape x.shape[:-1] = {x.shape[:-1]}, got x of "
            f"shape {x.shape}, labels of shape {labels.shape} and where of shape {mask.shape}."
        )
    dtype = jnp.result_type(x, w)
    return x.astype(dtype), w.astype(dtype), labels, mask


def linear_cross_entropy_options(
    reduction: Any, label_smoothing: Any, z_loss: Any, logit_soft_cap: Any, chunk_size: Any
) -> tuple[str, float, float, float | None, int | tuple[int, int] | None]:
    """``linear_cross_entropy``'s options, checked, as Python values (static, hashable)."""
    name = "linear_cross_entropy"
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name} reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    label_smoothing, z_loss = float(label_smoothing), float(z_loss)
    if not 0 <= label_smoothing <= 1:
        raise ValueError(f"{name} label_smoothing must be in [0, 1], got {label_smoothing}.")
    if not z_loss >= 0:
        raise ValueError(f"{name} z_loss must be >= 0, got {z_loss}.")
    if logit_soft_cap is not None:
        logit_soft_cap = float(logit_soft_cap)
        if not logit_soft_cap > 0:
            raise ValueError(f"{name} logit_soft_cap must be None or > 0, got {logit_soft_cap}.")
    if chunk_size is not None:
        sizes = (
            chunk_size if isinstance(chunk_size, tuple) and len(chunk_size) == 2 else (chunk_size,)
        )
        if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) for n in sizes):
            raise TypeError(
                f"{name} chunk_size must be None or an int (or a pair of ints: tokens, columns), "
                f"got {chunk_size!r}."
            )
        if any(n < 1 for n in sizes):
            raise ValueError(f"{name} chunk_size must be positive, got {chunk_size}.")
        chunk_size = tuple(int(n) for n in sizes) if len(sizes) == 2 else int(sizes[0])
    return reduction, label_smoothing, z_loss, logit_soft_cap, chunk_size


def linear_cross_entropy_axes(axis_name: Any) -> tuple[str, ...]:
    """``axis_name`` as a tuple of mesh axis names (``None``: none)."""
    if axis_name is None:
        return ()
    axes = (axis_name,) if isinstance(axis_name, str) else axis_name
    if not isinstance(axes, (tuple, list)) or not axes or not all(isinstance(a, str) for a in axes):
        raise TypeError(
            "linear_cross_entropy axis_name must be None, a mesh axis name or a tuple of them, "
            f"got {axis_name!r}."
        )
    return tuple(axes)
