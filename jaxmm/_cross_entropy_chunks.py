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

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._cross_entropy_blocks import (
    LossOptions,
    Stats,
    accumulation_dtype,
    block_count,
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
    the logits (one product), their ``lse``, ``dU``, then ``dX`` and ``dW`` (two more)."""
    tile, _ = tiling(x, w, options, "whole rows")
    chunk = dw_chunk(w)
    iota = lax.broadcasted_iota(np.int32, (1, chunk), 1)
    offset = vocab_offset(w, options)
    dtype = accumulation_dtype(x)
    dot = partial(lax.dot_general, precision=options.precision, preferred_element_type=dtype)

    def add_tile(k: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        losses, dx, dw = carry
        start, x_tile, labels_tile, fresh_rows = token_tile(k, tile, x, labels)
        z, fresh, is_label = chunk_logits(x_tile, w, labels_tile, 0, w.shape[1], offset, options)
        lse, label_logit, logit_sum = combine(statistics(z, fresh, is_label), options)
        g = lax.dynamic_slice_in_dim(token_cotangent, start, tile)
        du = logit_gradient(z, fresh, is_label, lse, g, options, vocab_size).astype(x.dtype)
        dx_tile = dot(du, w, (((1,), (1,)), ((), ())))  # dU Wᵀ: a row per token, rewritable
        x_fresh = jnp.where(fresh_rows, x_tile, 0)  # rows of an earlier tile: counted once in dW

        def add_columns(c: jax.Array, dw: jax.Array) -> jax.Array:
            # dW += Xᵀ dU by chunks of columns, added in place: no [d, V] temporary.
            column = chunk_start(c, chunk, w.shape[1])
            du_chunk = lax.dynamic_slice_in_dim(du, column, chunk, axis=1)
            du_chunk = jnp.where(column + iota >= c * chunk, du_chunk, 0)  # each column once
            dw_chunk = dot(x_fresh, du_chunk, (((0,), (0,)), ((), ())))
            dw_old = lax.dynamic_slice_in_dim(dw, column, chunk, axis=1)
            return lax.dynamic_update_slice_in_dim(dw, dw_old + dw_chunk, column, 1)

        dw = lax.fori_loop(0, block_count(w.shape[1], chunk), add_columns, dw)
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
    dot = partial(lax.dot_general, precision=options.precision, preferred_element_type=dtype)

    def add_tile(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
        dx, dw = carry
        start, x_tile, labels_tile, fresh_rows = token_tile(k, tile, x, labels)
        lse_tile = lax.dynamic_slice_in_dim(lse, start, tile)
        g = lax.dynamic_slice_in_dim(token_cotangent, start, tile)
        x_fresh = jnp.where(fresh_rows, x_tile, 0)

        def add_chunk(c: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
            dx_tile, dw = carry
            z, fresh, is_label = chunk_logits(x_tile, w, labels_tile, c, chunk, offset, options)
            du = logit_gradient(z, fresh, is_label, lse_tile, g, options, vocab_size)
            du = du.astype(x.dtype)  # the products run in the inputs' dtype
            column = chunk_start(c, chunk, w.shape[1])
            w_chunk = lax.dynamic_slice_in_dim(w, column, chunk, axis=1)
            dx_tile = dx_tile + dot(du, w_chunk, (((1,), (1,)), ((), ())))  # dU Wᵀ
            dw_chunk = dot(x_fresh, du, (((0,), (0,)), ((), ())))  # Xᵀ dU; 0 where not fresh
            dw_old = lax.dynamic_slice_in_dim(dw, column, chunk, axis=1)
            return dx_tile, lax.dynamic_update_slice_in_dim(dw, dw_old + dw_chunk, column, 1)

        dx_tile = varying_zeros(x_tile.shape, dtype, x, w)
        dx_tile, dw = lax.fori_loop(0, block_count(w.shape[1], chunk), add_chunk, (dx_tile, dw))
        return lax.dynamic_update_slice_in_dim(dx, dx_tile, start, 0), dw

    carry = (varying_zeros(x.shape, dtype, x, w), varying_zeros(w.shape, dtype, x, w))
    dx, dw = lax.fori_loop(0, block_count(x.shape[0], tile), add_tile, carry)
    return sum_over_devices(dx, dw, x, w, options)


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
