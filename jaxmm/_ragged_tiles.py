"""The two formulations of a ragged product, on the canonical layouts of :mod:`jaxmm._ragged`.

The canonical layouts (``P = B·X`` "row blocks", each with its own group sizes)::

    rows        lhs [B, X, M, K]  rhs [B, G, K, N]  sizes [B, X, G]  ->  out [B, X, M, N]
    contracting lhs [B, X, K, M]  rhs [B, X, K, N]  sizes [B, X, G]  ->  out [G, B, M, N]

In ``rows`` mode (lax's ragged *non-contracting* mode) row ``m`` of block ``(b, x)`` belongs to
group ``g`` when it lies in ``[start_g, start_g + size_g)``, ``start_g = Σ_{g' < g} size_g'``,
and meets ``rhs[b, g]``; rows in no group give zeros. In ``contracting`` mode the groups split
the summed axis ``K`` instead and each group gets its own output ``out[g]``.

- :func:`native`: ``lax.ragged_dot_general`` in the matching mode; GPU and TPU lower it to their
  ragged kernels.
- :func:`tiled`: what XLA's CPU backend lacks. ``lax.ragged_dot_general`` on CPU masks the
  operand once per group and multiplies densely: ``G`` times the FLOPs. Here the rows of each
  group (already contiguous) are cut into tiles of ``TILE_ROWS`` rows, the last tile of a group
  partly empty; a loop over the tiles multiplies each tile with its own group's weight only. The
  partly empty tiles (fewer than one per group) are the only work beyond the dense product, and
  nothing of the size of ``G`` copies of an operand is ever formed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

# Rows per tile: a [TILE_ROWS, K] x [K, N] product keeps a CPU core busy, and the partly empty
# tiles (at most one per group) cost at most G · TILE_ROWS rows of waste.
TILE_ROWS = 128


def native_dimension_numbers(mode: str) -> lax.RaggedDotDimensionNumbers:
    """``lax.ragged_dot_general``'s dimension numbers of a canonical layout."""
    if mode == "rows":
        return lax.RaggedDotDimensionNumbers(
            dot_dimension_numbers=(([3], [2]), ([0], [0])),
            lhs_ragged_dimensions=[2],
            rhs_group_dimensions=[1],
        )
    return lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([1, 2], [1, 2]), ([0], [0])),
        lhs_ragged_dimensions=[2],
        rhs_group_dimensions=[],
    )


def native(lhs: jax.Array, rhs: jax.Array, sizes: jax.Array, *, mode: str, **params: Any) -> Any:
    """The product as ``lax.ragged_dot_general`` computes it."""
    return lax.ragged_dot_general(lhs, rhs, sizes, native_dimension_numbers(mode), **params)


def _tile_schedule(sizes: jax.Array, rows: int, tile: int) -> tuple[jax.Array, ...]:
    """Tiles of every group of every row block, in order: how many there are, and for each its
    first row, the end of its group (rows of the flattened ``[P·rows]`` axis) and its block and
    group (``block · G + g``). Groups past ``rows`` are cut at ``rows``, as lax does."""
    blocks, groups = sizes.shape
    ends = jnp.minimum(jnp.cumsum(jnp.maximum(sizes, 0), axis=1), rows)
    starts = jnp.concatenate([jnp.zeros_like(ends[:, :1]), ends[:, :-1]], axis=1)
    tiles_per_group = ((ends - starts + tile - 1) // tile).reshape(-1)
    tile_ends = jnp.cumsum(tiles_per_group)
    # Each group needs at most one partly empty tile: ≤ ceil(rows / tile) + G - 1 per block.
    capacity = blocks * (-(-rows // tile) + groups - 1)
    index = jnp.arange(capacity, dtype=tile_ends.dtype)
    owner = jnp.minimum(jnp.searchsorted(tile_ends, index, side="right"), blocks * groups - 1)
    within = index - (tile_ends[owner] - tiles_per_group[owner])
    block_offset = (owner // groups) * rows
    first = block_offset + starts.reshape(-1)[owner] + within * tile
    end = block_offset + ends.reshape(-1)[owner]
    return tile_ends[-1], first, end, owner


def _tile_rows(first: jax.Array, end: jax.Array, total: int, tile: int) -> tuple[Any, Any]:
    """Where a tile's slice starts (clamped, as ``dynamic_slice`` clamps, so that it stays in
    bounds) and which of its rows belong to the tile's group."""
    start = jnp.minimum(first, total - tile)
    row = start + jnp.arange(tile)
    return start, (row >= first) & (row < end)


def _accumulation_dtype(dtype: Any) -> Any:
    # Sums over several tiles are kept in float32 when the result is narrower, so that a
    # bfloat16 result is rounded once, as one dense product rounds it.
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.float32
    return dtype


def tiled(lhs: jax.Array, rhs: jax.Array, sizes: jax.Array, *, mode: str, **params: Any) -> Any:
    """The product as a loop over tiles of rows of one group each (CPU)."""
    out_type = jax.eval_shape(lambda a, b, c: native(a, b, c, mode=mode, **params), lhs, rhs, sizes)
    precision, preferred = params["precision"], params["preferred_element_type"]
    batch, blocks_per_batch = lhs.shape[:2]
    groups = sizes.shape[-1]
    rows = lhs.shape[2]
    total = batch * blocks_per_batch * rows
    tile = min(TILE_ROWS, total)
    if tile == 0 or groups == 0:
        return jnp.zeros(out_type.shape, out_type.dtype)
    count, first, end, owner = _tile_schedule(sizes.reshape(-1, groups), rows, tile)
    # What a tile meets: the weight rhs[b, g] (rows mode), or the output out[g, b] that sums
    # every block x of batch b (contracting mode).
    expert = (owner // groups // blocks_per_batch) * groups + owner % groups
    flat_lhs = lhs.reshape(total, lhs.shape[3])
    if mode == "rows":
        weights = rhs.reshape(batch * groups, *rhs.shape[2:])

        def multiply_tile(i: jax.Array, out: jax.Array) -> jax.Array:
            start, valid = _tile_rows(first[i], end[i], total, tile)
            block = lax.dynamic_slice_in_dim(flat_lhs, start, tile)
            weight = lax.dynamic_index_in_dim(weights, expert[i], keepdims=False)
            product = lax.dot(block, weight, precision=precision, preferred_element_type=preferred)
            kept = lax.dynamic_slice_in_dim(out, start, tile)
            # Rows of the neighbouring group (or past the last) keep what their own tile wrote.
            return lax.dynamic_update_slice_in_dim(
                out, jnp.where(valid[:, None], product.astype(out.dtype), kept), start, 0
            )

        out = jnp.zeros((total, rhs.shape[3]), out_type.dtype)
        out = lax.fori_loop(0, count, multiply_tile, out)
        return out.reshape(out_type.shape)

    accumulation = _accumulation_dtype(out_type.dtype)
    flat_rhs = rhs.reshape(total, rhs.shape[3])

    def accumulate_tile(i: jax.Array, out: jax.Array) -> jax.Array:
        start, valid = _tile_rows(first[i], end[i], total, tile)
        # Both operands are masked, as lax masks both: a row of another group adds nothing
        # (not even a NaN from 0 · inf).
        left = jnp.where(valid[:, None], lax.dynamic_slice_in_dim(flat_lhs, start, tile), 0)
        right = jnp.where(valid[:, None], lax.dynamic_slice_in_dim(flat_rhs, start, tile), 0)
        product = lax.dot_general(
            left, right, (([0], [0]), ([], [])), precision, preferred_element_type=accumulation
        )
        slot = lax.dynamic_index_in_dim(out, expert[i], keepdims=False)
        updated: jax.Array = lax.dynamic_update_index_in_dim(out, slot + product, expert[i], 0)
        return updated

    out = jnp.zeros((batch * groups, lhs.shape[3], rhs.shape[3]), accumulation)
    out = lax.fori_loop(0, count, accumulate_tile, out)
    out = out.reshape(batch, groups, *out.shape[1:])
    # [B, G, M, N] -> [G, B, M, N]; with one batch a reshape, which XLA does not copy.
    out = out.reshape(out_type.shape) if batch == 1 else out.transpose(1, 0, 2, 3)
    result: jax.Array = out.astype(out_type.dtype)
    return result
