"""Grouped (ragged) products for mixture-of-experts layers, as ``lax.ragged_dot(_general)``,
with hand-derived rules and a CPU formulation near the dense product's cost.

``ragged_dot(x[m, k], w[g, k, n], group_sizes[g])`` multiplies the rows of group ``e`` (rows
``start_e ≤ i < start_e + group_sizes[e]``, ``start_e = Σ_{e' < e} group_sizes[e']``) by
``w[e]``: ``Y_e = X_e W_e``; rows past the last group give zeros. The seed's rule applied group by
group gives the backward pass, ``dX_e = dY_e W_eᵀ`` and ``dW_e = X_eᵀ dY_e``: the first is a ragged
product again, the second one whose *summed* axis is ragged (``[g, k, n]``, one sum per group; an
empty group sums nothing and gets an exactly zero gradient). The rules for every mode, the forward
rule and the batching rule are derived in :mod:`jaxmm._ragged_primitive`; the formulations (XLA's
ragged kernel on GPU/TPU, a loop over row tiles on CPU) are in :mod:`jaxmm._ragged_tiles`.

Every mode of ``lax.ragged_dot_general`` is brought to one of two canonical layouts by
transposes and reshapes (whose derivatives are transposes and reshapes): the ragged axis with the
same-kind axes outer to it (``x…``, which ``group_sizes`` may index) in front of it and the inner
ones (``y…``) folded into it, which multiplies every group's size by ``|y…|``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from ._dot_general import dot_general
from ._options import Options
from ._ragged_primitive import ragged
from ._typing import DTypeLike, OutSharding, PrecisionLike

RaggedDotDimensionNumbers = lax.RaggedDotDimensionNumbers

_RAGGED_DOT = RaggedDotDimensionNumbers(
    dot_dimension_numbers=(([1], [1]), ([], [])),
    lhs_ragged_dimensions=[0],
    rhs_group_dimensions=[0],
)


def ragged_dot(
    lhs: jax.Array,
    rhs: jax.Array,
    group_sizes: jax.Array,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    group_offset: jax.Array | None = None,
    out_sharding: OutSharding = None,
) -> jax.Array:
    """Grouped matrix product, as :func:`jax.lax.ragged_dot`, whose derivatives are derived by hand.

    ``Y[i] = X[i] · W[e(i)]`` where ``e(i)`` is the group of row ``i`` (groups are consecutive
    runs of rows, of sizes ``group_sizes``); rows past ``sum(group_sizes)`` give zeros. Backward,
    for the rows of group ``e``: ``dX_e = dY_e W_eᵀ``, ``dW_e = X_eᵀ dY_e`` (zero for an empty
    group); forward: ``dY = ragged_dot(dX, W) + ragged_dot(X, dW)``.

    Args:
      lhs: ``(m, k)`` array, rows sorted by group.
      rhs: ``(g, k, n)`` array, one weight per group.
      group_sizes: ``(g,)`` integer array, the number of rows of each group.
      precision: as in ``lax.ragged_dot``; applies to the backward products too.
      preferred_element_type: accumulation and result dtype, as in ``lax.ragged_dot``.
      group_offset: as in ``lax.ragged_dot``, which does not compute it on this JAX version:
        anything but ``None`` is a ``NotImplementedError``.
      out_sharding: sharding of the result.

    Returns:
      ``(m, n)`` array.

    >>> import jax.numpy as jnp, jaxmm
    >>> x, w = jnp.ones((5, 2)), jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
    >>> jaxmm.ragged_dot(x, w, jnp.array([1, 3]))[:, 0]
    Array([1., 2., 2., 2., 0.], dtype=float32)
    """
    return ragged_dot_general(
        lhs,
        rhs,
        group_sizes,
        _RAGGED_DOT,
        precision,
        preferred_element_type,
        group_offset,
        out_sharding,
    )


def ragged_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    group_sizes: jax.Array,
    ragged_dot_dimension_numbers: RaggedDotDimensionNumbers,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    group_offset: jax.Array | None = None,
    out_sharding: OutSharding = None,
) -> jax.Array:
    """Ragged product with any dimension numbers, as :func:`jax.lax.ragged_dot_general`, whose
    derivatives are derived by hand for every mode.

    The three modes, by the kind of ``lhs``'s ragged axis (``g`` groups; ``x…`` are the axes of
    the same kind outer to the ragged one, which ``group_sizes`` may index):

    1. non-contracting: ``[b…, m…, k…], [g, b…, k…, n…], [b…, x…, g] -> [b…, m…, n…]``;
       backward ``dX_e = dY_e W_eᵀ`` (mode 1) and ``dW_e = X_eᵀ dY_e`` (mode 2).
    2. contracting: ``[b…, m…, k…], [b…, k…, n…], [b…, x…, g] -> [g, b…, m…, n…]``, one sum
       per group; both cotangents are mode-1 products with ``dY`` as the grouped weights.
    3. batch: ``[b…, m…, k…], [b…, k…, n…], [x…, g] -> [b…, m…, n…]``: every batch element
       already meets its own ``rhs`` slice, so (as in lax) this is ``dot_general``, computed by
       :func:`jaxmm.dot_general`.

    Args:
      lhs: array ``[b…, m…, k…]`` (axes in any order, named by the dimension numbers).
      rhs: array, as above for the mode.
      group_sizes: integer array ``[g]`` or ``[b…, x…, g]`` (``[x…, g]`` in mode 3).
      ragged_dot_dimension_numbers: a ``lax.RaggedDotDimensionNumbers``.
      precision, preferred_element_type, group_offset, out_sharding: as in
        :func:`jaxmm.ragged_dot`.

    Returns:
      ``lax.ragged_dot_general``'s result: ``dot_general``'s shape, with a leading ``g`` in mode 2.

    >>> import jax.numpy as jnp, jaxmm
    >>> from jax import lax
    >>> dims = lax.RaggedDotDimensionNumbers((([0], [0]), ([], [])), [0], [])
    >>> jaxmm.ragged_dot_general(jnp.ones((4, 2)), jnp.ones((4, 3)), jnp.array([1, 3]), dims).shape
    (2, 2, 3)
    """
    if group_offset is not None:
        raise NotImplementedError("Unimplemented group_offset support (as lax.ragged_dot_general).")
    dims = ragged_dot_dimension_numbers
    # lax's own checks of shapes, dimension numbers and dtypes (its exception types and
    # messages), on shapes only: before any work.
    out_type = jax.eval_shape(
        functools.partial(
            lax.ragged_dot_general,
            ragged_dot_dimension_numbers=dims,
            precision=precision,
            preferred_element_type=preferred_element_type,
        ),
        lhs,
        rhs,
        group_sizes,
    )
    options = Options.of(precision, preferred_element_type)
    lhs, rhs, group_sizes = jnp.asarray(lhs), jnp.asarray(rhs), jnp.asarray(group_sizes)
    layout = _layout(lhs.shape, rhs.shape, group_sizes.shape, dims)
    if layout is None:  # mode 3
        return dot_general(
            lhs, rhs, dims.dot_dimension_numbers, options.precision,
            options.preferred_element_type, out_sharding=out_sharding,
        )  # fmt: skip
    canonical_lhs = lhs.transpose(layout.lhs_axes).reshape(layout.lhs_shape)
    canonical_rhs = rhs.transpose(layout.rhs_axes).reshape(layout.rhs_shape)
    sizes = jnp.broadcast_to(group_sizes, layout.sizes_shape) if group_sizes.ndim == 1 else None
    sizes = group_sizes.reshape(layout.sizes_shape) if sizes is None else sizes
    if layout.inner != 1:
        sizes = sizes * layout.inner
    out = ragged(
        canonical_lhs,
        canonical_rhs,
        sizes,
        mode=layout.mode,
        precision=options.precision,
        preferred_element_type=options.preferred_element_type,
    ).reshape(out_type.shape)
    if out_sharding is not None:
        out = jax.lax.with_sharding_constraint(out, out_sharding)
    return out


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the operands of one call become a canonical layout (see :mod:`jaxmm._ragged_tiles`)."""

    mode: str
    lhs_axes: tuple[int, ...]
    lhs_shape: tuple[int, ...]
    rhs_axes: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    sizes_shape: tuple[int, ...]
    inner: int  # |y…|: the inner axes folded into the ragged one


def _size(shape: tuple[int, ...], axes: list[int]) -> int:
    """How many elements the given axes of a shape span."""
    return math.prod(shape[d] for d in axes)


@functools.lru_cache(maxsize=1024)
def _layout(
    lhs_shape: tuple[int, ...],
    rhs_shape: tuple[int, ...],
    sizes_shape: tuple[int, ...],
    dims: RaggedDotDimensionNumbers,
) -> _Layout | None:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = map(
        lambda pair: tuple(map(list, pair)), dims.dot_dimension_numbers
    )
    ragged_dim = dims.lhs_ragged_dimensions[0]
    lhs_free = [d for d in range(len(lhs_shape)) if d not in lhs_contract + lhs_batch]
    group_dims = list(dims.rhs_group_dimensions)
    taken = rhs_contract + rhs_batch + group_dims
    rhs_free = [d for d in range(len(rhs_shape)) if d not in taken]
    batch = _size(lhs_shape, lhs_batch)
    groups = sizes_shape[-1]
    if ragged_dim in lhs_free:
        at = lhs_free.index(ragged_dim)
        outer, inner = lhs_free[:at], lhs_free[at + 1 :]
        lhs_axes = lhs_batch + outer + [ragged_dim] + inner + lhs_contract
        rows = lhs_shape[ragged_dim] * _size(lhs_shape, inner)
        lhs_canonical = (batch, _size(lhs_shape, outer), rows, _size(lhs_shape, lhs_contract))
        rhs_axes = rhs_batch + group_dims + rhs_contract + rhs_free
        contract = _size(rhs_shape, rhs_contract)
        rhs_canonical = (batch, groups, contract, _size(rhs_shape, rhs_free))
        mode = "rows"
    elif ragged_dim in lhs_contract:
        at = lhs_contract.index(ragged_dim)
        outer, inner = lhs_contract[:at], lhs_contract[at + 1 :]
        lhs_axes = lhs_batch + lhs_contract + lhs_free
        rows = lhs_shape[ragged_dim] * _size(lhs_shape, inner)
        lhs_canonical = (batch, _size(lhs_shape, outer), rows, _size(lhs_shape, lhs_free))
        rhs_axes = rhs_batch + rhs_contract + rhs_free
        rhs_canonical = (batch, lhs_canonical[1], rows, _size(rhs_shape, rhs_free))
        mode = "contracting"
    else:
        return None
    return _Layout(
        mode,
        tuple(lhs_axes),
        lhs_canonical,
        tuple(rhs_axes),
        rhs_canonical,
        (batch, lhs_canonical[1], groups),
        _size(lhs_shape, inner),
    )
