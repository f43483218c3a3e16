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

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._compat import cast_to_varying, varying_axes

# chunk_size=None: blocks of about 2^21 logits (8 MiB in float32): a tile of 2^21 / V tokens (at
# least 8) by the whole vocabulary. Small enough that the compiled temporaries stay a few such
# blocks; large enough that ``dW += X_tileᵀ dU``, which reads and writes ``dW`` once per tile,
# does 0.75 × tile flops per byte of ``dW`` moved.
_BLOCK_ELEMENTS = 2**21
_MIN_TILE = 8

Stats = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The static options, canonicalised; the mesh axes sharding the tokens / vocabulary."""

    reduction: str
    label_smoothing: float
    z_loss: float
    soft_cap: float | None
    chunk_size: int | tuple[int, int] | None  # columns, or (tokens, columns)
    precision: Any
    axis_name: tuple[str, ...] = ()  # the caller's shard_map axes sharding the vocabulary
    token_axes: tuple[str, ...] = ()
    vocab_axes: tuple[str, ...] = ()
    vocab_size: int = 0  # V: every device's columns


def forward_chunks(
    x: jax.Array, w: jax.Array, labels: jax.Array, options: LossOptions, vocab_size: int
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss ``ℓ`` (labels not checked) and ``lse``: one product per block."""
    tile, chunk = _tiling(x, w, options)
    offset = _vocab_offset(w, options)

    def add_tile(k: jax.Array, stats: Stats) -> Stats:
        start, x_tile, labels_tile, _ = _tile(k, tile, x, labels)
        tile_stats = _tile_statistics(x_tile, w, labels_tile, chunk, offset, options)
        # A last tile moved back rewrites its earlier rows with the same values.
        maximum, exp_sum, label_logit, logit_sum = (
            lax.dynamic_update_slice_in_dim(s, t, start, 0) for s, t in zip(stats, tile_stats)
        )
        return maximum, exp_sum, label_logit, logit_sum

    zeros = _varying_zeros((x.shape[0],), _accumulation_dtype(x), x, w)
    stats = lax.fori_loop(0, _count(x.shape[0], tile), add_tile, (zeros,) * 4)
    lse, label_logit, logit_sum = _combine(stats, options)
    return _loss(lse, label_logit, logit_sum, options, vocab_size), lse


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
    tile, _ = _tiling(x, w, options, "whole rows")
    chunk = _dw_chunk(w)
    iota = lax.broadcasted_iota(np.int32, (1, chunk), 1)
    offset = _vocab_offset(w, options)
    dtype = _accumulation_dtype(x)
    dot = partial(lax.dot_general, precision=options.precision, preferred_element_type=dtype)

    def add_tile(k: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        losses, dx, dw = carry
        start, x_tile, labels_tile, fresh_rows = _tile(k, tile, x, labels)
        z, fresh, is_label = _chunk_logits(x_tile, w, labels_tile, 0, w.shape[1], offset, options)
        lse, label_logit, logit_sum = _combine(_statistics(z, fresh, is_label), options)
        g = lax.dynamic_slice_in_dim(token_cotangent, start, tile)
        du = _logit_gradient(z, fresh, is_label, lse, g, options, vocab_size).astype(x.dtype)
        dx_tile = dot(du, w, (((1,), (1,)), ((), ())))  # dU Wᵀ: a row per token, rewritable
        x_fresh = jnp.where(fresh_rows, x_tile, 0)  # rows of an earlier tile: counted once in dW

        def add_columns(c: jax.Array, dw: jax.Array) -> jax.Array:
            # dW += Xᵀ dU by chunks of columns, added in place: no [d, V] temporary.
            column = _chunk_start(c, chunk, w.shape[1])
            du_chunk = lax.dynamic_slice_in_dim(du, column, chunk, axis=1)
            du_chunk = jnp.where(column + iota >= c * chunk, du_chunk, 0)  # each column once
            dw_chunk = dot(x_fresh, du_chunk, (((0,), (0,)), ((), ())))
            dw_old = lax.dynamic_slice_in_dim(dw, column, chunk, axis=1)
            return lax.dynamic_update_slice_in_dim(dw, dw_old + dw_chunk, column, 1)

        dw = lax.fori_loop(0, _count(w.shape[1], chunk), add_columns, dw)
        loss = _loss(lse, label_logit, logit_sum, options, vocab_size)
        losses = lax.dynamic_update_slice_in_dim(losses, loss, start, 0)
        return losses, lax.dynamic_update_slice_in_dim(dx, dx_tile, start, 0), dw

    carry = (
        _varying_zeros((x.shape[0],), dtype, x),  # combined over the columns: varies like x
        _varying_zeros(x.shape, dtype, x, w),
        _varying_zeros(w.shape, dtype, x, w),
    )
    losses, dx, dw = lax.fori_loop(0, _count(x.shape[0], tile), add_tile, carry)
    return (losses, *_sum_over_devices(dx, dw, x, w, options))


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
    tile, chunk = _tiling(x, w, options, "dw")
    offset = _vocab_offset(w, options)
    dtype = _accumulation_dtype(x)
    dot = partial(lax.dot_general, precision=options.precision, preferred_element_type=dtype)

    def add_tile(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
        dx, dw = carry
        start, x_tile, labels_tile, fresh_rows = _tile(k, tile, x, labels)
        lse_tile = lax.dynamic_slice_in_dim(lse, start, tile)
        g = lax.dynamic_slice_in_dim(token_cotangent, start, tile)
        x_fresh = jnp.where(fresh_rows, x_tile, 0)

        def add_chunk(c: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
            dx_tile, dw = carry
            z, fresh, is_label = _chunk_logits(x_tile, w, labels_tile, c, chunk, offset, options)
            du = _logit_gradient(z, fresh, is_label, lse_tile, g, options, vocab_size)
            du = du.astype(x.dtype)  # the products run in the inputs' dtype
            column = _chunk_start(c, chunk, w.shape[1])
            w_chunk = lax.dynamic_slice_in_dim(w, column, chunk, axis=1)
            dx_tile = dx_tile + dot(du, w_chunk, (((1,), (1,)), ((), ())))  # dU Wᵀ
            dw_chunk = dot(x_fresh, du, (((0,), (0,)), ((), ())))  # Xᵀ dU; 0 where not fresh
            dw_old = lax.dynamic_slice_in_dim(dw, column, chunk, axis=1)
            return dx_tile, lax.dynamic_update_slice_in_dim(dw, dw_old + dw_chunk, column, 1)

        dx_tile = _varying_zeros(x_tile.shape, dtype, x, w)
        dx_tile, dw = lax.fori_loop(0, _count(w.shape[1], chunk), add_chunk, (dx_tile, dw))
        return lax.dynamic_update_slice_in_dim(dx, dx_tile, start, 0), dw

    carry = (_varying_zeros(x.shape, dtype, x, w), _varying_zeros(w.shape, dtype, x, w))
    dx, dw = lax.fori_loop(0, _count(x.shape[0], tile), add_tile, carry)
    return _sum_over_devices(dx, dw, x, w, options)


def _tiling(
    x: jax.Array, w: jax.Array, options: LossOptions, chunking: str = "rows"
) -> tuple[int, int]:
    """Tokens per tile and columns per chunk: by default the whole row of this device's columns
    (``"rows"``), or (``"dw"``, where each chunk adds a ``[d, chunk]`` product to ``dW``) about a
    block's worth of ``dW``; ``"whole rows"`` whatever ``chunk_size`` says."""
    tokens, columns = x.shape[0], w.shape[1]
    size = options.chunk_size
    tile, chunk = size if isinstance(size, tuple) else (None, size)
    if chunking == "whole rows" or chunk is None:
        chunk = _dw_chunk(w) if chunking == "dw" else columns
    chunk = min(chunk, columns)
    tile = tile or max(_MIN_TILE, _BLOCK_ELEMENTS // chunk // _MIN_TILE * _MIN_TILE)
    return max(1, min(tile, tokens)), chunk


def _dw_chunk(w: jax.Array) -> int:
    """Columns whose ``[d, chunk]`` slice of ``dW`` is about one block (a multiple of 128)."""
    return min(w.shape[1], max(128, _BLOCK_ELEMENTS // w.shape[0] // 128 * 128))


def _count(size: int, block: int) -> int:
    return -(-size // block)


def _chunk_start(k: jax.Array | int, chunk: int, size: int) -> jax.Array:
    # The last tile or chunk is moved back to end at the last row or column, rather than padding.
    return jnp.minimum(k * chunk, size - chunk)


def _tile(
    k: jax.Array, tile: int, x: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Tile ``k``'s first row, rows of ``x`` and labels, and which rows no earlier tile had
    (``[tile, 1]``)."""
    start = _chunk_start(k, tile, x.shape[0])
    rows = start + lax.broadcasted_iota(np.int32, (tile, 1), 0)
    x_tile = lax.dynamic_slice_in_dim(x, start, tile)
    return start, x_tile, lax.dynamic_slice_in_dim(labels, start, tile), rows >= k * tile


def _vocab_offset(w: jax.Array, options: LossOptions) -> jax.Array:
    """This device's first vocabulary index."""
    if not options.vocab_axes:
        return jnp.asarray(0)
    return lax.axis_index(options.vocab_axes) * w.shape[1]


def _chunk_logits(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    k: jax.Array | int,
    chunk: int,
    offset: jax.Array,
    options: LossOptions,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Chunk ``k``'s logits ``z`` ``[tokens, chunk]``, which of its columns no earlier chunk
    counted (``[1, chunk]``), and where each token's label is among those (``[tokens, chunk]``)."""
    start = _chunk_start(k, chunk, w.shape[1])
    w_chunk = lax.dynamic_slice_in_dim(w, start, chunk, axis=1)
    z = lax.dot_general(
        x,
        w_chunk,
        (((1,), (0,)), ((), ())),
        precision=options.precision,
        preferred_element_type=_accumulation_dtype(x),
    )
    if options.soft_cap is not None:
        z = options.soft_cap * jnp.tanh(z / options.soft_cap)
    column = start + lax.broadcasted_iota(np.int32, (1, chunk), 1)
    fresh = column >= k * chunk
    is_label = fresh & (offset + column == labels[:, None])
    return z, fresh, is_label


def _statistics(z: jax.Array, fresh: jax.Array, is_label: jax.Array) -> Stats:
    """One block's maximum, sum of ``exp(z − maximum)``, label logit and sum of logits."""
    maximum = jnp.max(jnp.where(fresh, z, -jnp.inf), axis=1)
    exp_sum = jnp.sum(jnp.where(fresh, jnp.exp(z - maximum[:, None]), 0), axis=1)
    label_logit = jnp.sum(jnp.where(is_label, z, 0), axis=1)
    return maximum, exp_sum, label_logit, jnp.sum(jnp.where(fresh, z, 0), axis=1)


def _merge(a: Stats, b: Stats) -> Stats:
    """Two blocks' statistics as one's: the sums of exponentials rescaled to the larger maximum
    (``exp(z − m) = exp(z − m') exp(m' − m)``)."""
    maximum = jnp.maximum(a[0], b[0])
    exp_sum = a[1] * jnp.exp(a[0] - maximum) + b[1] * jnp.exp(b[0] - maximum)
    return maximum, exp_sum, a[2] + b[2], a[3] + b[3]


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
        return _merge(stats, _statistics(*_chunk_logits(x, w, labels, c, chunk, offset, options)))

    zeros = _varying_zeros((x.shape[0],), _accumulation_dtype(x), x, w)
    start: Stats = (zeros - jnp.inf, zeros, zeros, zeros)
    stats: Stats = lax.fori_loop(0, _count(w.shape[1], chunk), add_chunk, start)
    return stats


def _combine(stats: Stats, options: LossOptions) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``lse``, the label logit and the sum of logits over every device's columns."""
    maximum, exp_sum, label_logit, logit_sum = stats
    if options.vocab_axes:  # rescale each device's sum to the largest maximum, then add
        largest = lax.pmax(maximum, options.vocab_axes)
        exp_sum = exp_sum * jnp.exp(maximum - largest)
        exp_sum, label_logit, logit_sum = lax.psum(
            (exp_sum, label_logit, logit_sum), options.vocab_axes
        )
        maximum = largest
    return maximum + jnp.log(exp_sum), label_logit, logit_sum


def _loss(
    lse: jax.Array,
    label_logit: jax.Array,
    logit_sum: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> jax.Array:
    smoothing = options.label_smoothing
    loss = lse - (1 - smoothing) * label_logit + options.z_loss * lse**2
    return loss - smoothing / vocab_size * logit_sum if smoothing else loss


def _logit_gradient(
    z: jax.Array,
    fresh: jax.Array,
    is_label: jax.Array,
    lse: jax.Array,
    g: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> jax.Array:
    """``dU = g ((1 + 2 ζ lse) softmax(z) − targets) (1 − (z / c)²)``; 0 in columns not fresh."""
    smoothing, cap = options.label_smoothing, options.soft_cap
    targets = (1 - smoothing) * is_label + smoothing / vocab_size
    softmax_scale = ((1 + 2 * options.z_loss * lse) * g)[:, None]
    dz = softmax_scale * jnp.exp(z - lse[:, None]) - g[:, None] * targets
    if cap is not None:
        dz = dz * (1 - (z / cap) ** 2)
    return jnp.where(fresh, dz, 0)


def _sum_over_devices(
    dx: jax.Array, dw: jax.Array, x: jax.Array, w: jax.Array, options: LossOptions
) -> tuple[jax.Array, jax.Array]:
    """``dX`` summed over the devices holding other columns, ``dW`` over those holding other
    tokens, along the axes where ``x`` (``w``) is the same on every device. Along an axis where
    it varies (inside a caller's ``shard_map``), each device's part is the cotangent of its own
    copy, and JAX's transpose of the cast that made it vary does the sum."""
    return (
        _psum_unless_varying(dx, options.vocab_axes, x),
        _psum_unless_varying(dw, options.token_axes, w),
    )


def _psum_unless_varying(a: jax.Array, axes: tuple[str, ...], like: jax.Array) -> jax.Array:
    axes = tuple(axis for axis in axes if axis not in varying_axes(like))
    return lax.psum(a, axes) if axes else a


def _accumulation_dtype(x: jax.Array) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


def _varying_zeros(shape: tuple[int, ...], dtype: Any, *like: jax.Array) -> jax.Array:
    """Zeros to start a loop's carry: inside ``shard_map``, varying along the mesh axes the
    arrays ``like`` vary along, as the loop body's results do."""
    zeros = jnp.zeros(shape, dtype)
    axes = tuple(sorted(frozenset().union(*(varying_axes(a) for a in like))))
    if not axes:
        return zeros
    return cast_to_varying(zeros, axes)
