"""``linear_cross_entropy``'s loops, one block of ``[tile tokens, chunk columns]`` logits at a time
(the derivation, and why in blocks: :mod:`jaxmm._cross_entropy`).

- :func:`forward_chunks`: the loss alone, one product per block (an online log-sum-exp over the
  chunks of each tile of tokens).
- :func:`gradient_chunks`: the loss, ``dX`` and ``dW`` of a scalar reduction in one pass, three
  products per tile of tokens, which holds its whole row of logits ``[tile, V]``.
- :func:`backward_chunks`: ``dX`` and ``dW`` for per-token cotangents (``reduction="none"``), the
  logits recomputed block by block from the forward pass's ``lse``.

Each runs over this device's vocabulary columns (and tokens); the collectives that combine devices
are named in :mod:`jaxmm._cross_entropy`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from ._cross_entropy_blocks import (
    LossOptions,
    Stats,
    accumulation_dtype,
    block_count,
    chunk_columns,
    chunk_logits,
    chunk_start,
    combine,
    dw_chunk,
    logit_gradient,
    merge,
    statistics,
    sum_over_devices,
    tiling,
    token_loss,
    token_tile,
    varying_zeros,
    vocab_offset,
)


def forward_chunks(
    x: jax.Array, w: jax.Array, labels: jax.Array, options: LossOptions, vocab_size: int
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss ``ℓ`` (labels not checked) and ``lse``: one product per block."""
    tile, chunk = tiling(x, w, options)
    offset = vocab_offset(w, options)

    def add_tile(k: jax.Array, stats: Stats) -> Stats:
        start, x_tile, labels_tile, _ = token_tile(k, tile, x, labels)
        tile_stats = _tile_statistics(x_tile, w, labels_tile, chunk, offset, options)
        # A last tile moved back rewrites its earlier rows with the same values.
        maximum, exp_sum, label_logit, logit_sum = (
            lax.dynamic_update_slice_in_dim(s, t, start, 0) for s, t in zip(stats, tile_stats)
        )
        return maximum, exp_sum, label_logit, logit_sum

    zeros = varying_zeros((x.shape[0],), accumulation_dtype(x), x, w)
    stats = lax.fori_loop(0, block_count(x.shape[0], tile), add_tile, (zeros,) * 4)
    lse, label_logit, logit_sum = combine(stats, options)
    return token_loss(lse, label_logit, logit_sum, options, vocab_size), lse


def gradient_chunks(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    token_cotangent: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token loss, ``dX = dU Wᵀ`` and ``dW = Xᵀ dU`` with ``g = token_cotangent``: per tile,
    its row of logits (one product) and their ``lse``, then chunk by chunk of the row ``dU``,
    ``dX`` and ``dW`` (two more)."""
    tile, _ = tiling(x, w, options, "whole rows")
    chunk = dw_chunk(w, tile)
    offset = vocab_offset(w, options)
    dtype = accumulation_dtype(x)

    def add_tile(k: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        losses, dx, dw = carry
        start, x_tile, labels_tile, fresh_rows = token_tile(k, tile, x, labels)
        z, fresh, label_column = chunk_logits(
            x_tile, w, labels_tile, 0, w.shape[1], offset, options
        )
        lse, label_logit, logit_sum = combine(statistics(z, fresh, label_column), options)
        g = lax.dynamic_slice_in_dim(token_cotangent, start, tile)
        add_products = _chunk_products(x_tile, fresh_rows, w, chunk, options)

        def add_chunk(c: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
            column = chunk_start(c, chunk, w.shape[1])
            z_chunk = lax.dynamic_slice_in_dim(z, column, chunk, axis=1)
            fresh, label_column = chunk_columns(column, c, chunk, offset, labels_tile)
            du = logit_gradient(z_chunk, fresh, label_column, lse, g, options, vocab_size)
            return add_products(du.astype(x.dtype), column, *carry)

        dx_tile = varying_zeros(x_tile.shape, dtype, x, w)
        dx_tile, dw = lax.fori_loop(0, block_count(w.shape[1], chunk), add_chunk, (dx_tile, dw))
        loss = token_loss(lse, label_logit, logit_sum, options, vocab_size)
        losses = lax.dynamic_update_slice_in_dim(losses, loss, start, 0)
        return losses, lax.dynamic_update_slice_in_dim(dx, dx_tile, start, 0), dw

    carry = (
        varying_zeros((x.shape[0],), dtype, x),  # combined over the columns: varies like x
        varying_zeros(x.shape, dtype, x, w),
        varying_zeros(w.shape, dtype, x, w),
    )
    losses, dx, dw = lax.fori_loop(0, block_count(x.shape[0], tile), add_tile, carry)
    return (losses, *sum_over_devices(dx, dw, x, w, options))


def backward_chunks(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    lse: jax.Array,
    token_cotangent: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> tuple[jax.Array, jax.Array]:
    """``dX = dU Wᵀ`` and ``dW = Xᵀ dU``, ``dU`` recomputed one block at a time."""
    tile, chunk = tiling(x, w, options, "dw")
    offset = vocab_offset(w, options)
    dtype = accumulation_dtype(x)

    def add_tile(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
        dx, dw = carry
        start, x_tile, labels_tile, fresh_rows = token_tile(k, tile, x, labels)
        lse_tile = lax.dynamic_slice_in_dim(lse, start, tile)
        g = lax.dynamic_slice_in_dim(token_cotangent, start, tile)
        add_products = _chunk_products(x_tile, fresh_rows, w, chunk, options)

        def add_chunk(c: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
            z, fresh, label_column = chunk_logits(x_tile, w, labels_tile, c, chunk, offset, options)
            du = logit_gradient(z, fresh, label_column, lse_tile, g, options, vocab_size)
            return add_products(du.astype(x.dtype), chunk_start(c, chunk, w.shape[1]), *carry)

        dx_tile = varying_zeros(x_tile.shape, dtype, x, w)
        dx_tile, dw = lax.fori_loop(0, block_count(w.shape[1], chunk), add_chunk, (dx_tile, dw))
        return lax.dynamic_update_slice_in_dim(dx, dx_tile, start, 0), dw

    carry = (varying_zeros(x.shape, dtype, x, w), varying_zeros(w.shape, dtype, x, w))
    dx, dw = lax.fori_loop(0, block_count(x.shape[0], tile), add_tile, carry)
    return sum_over_devices(dx, dw, x, w, options)


def _chunk_products(
    x_tile: jax.Array, fresh_rows: jax.Array, w: jax.Array, chunk: int, options: LossOptions
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``(du, column, dx_tile, dw) ↦`` the tile's ``dX += dU W_chunkᵀ`` and the chunk's columns of
    ``dW += X_tileᵀ dU``, added in place (no ``[d, V]`` temporary). The products run in the
    inputs' dtype, accumulated in float32; ``dU`` is 0 in the columns of an earlier chunk."""
    dot = partial(
        lax.dot_general,
        precision=options.precision,
        preferred_element_type=accumulation_dtype(x_tile),
    )
    x_fresh = jnp.where(fresh_rows, x_tile, 0)  # rows of an earlier tile: counted once in dW

    def add(
        du: jax.Array, column: jax.Array, dx_tile: jax.Array, dw: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        w_chunk = lax.dynamic_slice_in_dim(w, column, chunk, axis=1)
        dx_tile = dx_tile + dot(du, w_chunk, (((1,), (1,)), ((), ())))  # dU Wᵀ: rows rewritable
        dw_chunk = dot(x_fresh, du, (((0,), (0,)), ((), ())))
        dw_old = lax.dynamic_slice_in_dim(dw, column, chunk, axis=1)
        return dx_tile, lax.dynamic_update_slice_in_dim(dw, dw_old + dw_chunk, column, 1)

    return add


def _tile_statistics(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    chunk: int,
    offset: jax.Array,
    options: LossOptions,
) -> Stats:
    """A tile's statistics over this device's columns, merged chunk by chunk (online)."""

    def add_chunk(c: jax.Array, stats: Stats) -> Stats:
        return merge(stats, statistics(*chunk_logits(x, w, labels, c, chunk, offset, options)))

    zeros = varying_zeros((x.shape[0],), accumulation_dtype(x), x, w)
    start: Stats = (zeros - jnp.inf, zeros, zeros, zeros)
    stats: Stats = lax.fori_loop(0, block_count(w.shape[1], chunk), add_chunk, start)
    return stats
