"""The blocks of ``linear_cross_entropy``'s loops (:mod:`jaxmm._cross_entropy_chunks`): how the
tokens and the vocabulary are cut into ``[tile, chunk]`` blocks, one block's logits, their
statistics merged online, the per-token loss and ``dU`` (derived in :mod:`jaxmm._cross_entropy`),
and the sums over devices."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._compat import cast_to_varying, varying_axes

# chunk_size=None: tiles of about 2^22 logits (16 MiB in float32), 2^22 / V tokens (at least 8) by
# the whole vocabulary, and chunks of columns whose [d, chunk] slice of dW holds about 2^20
# numbers. Small enough that the compiled temporaries stay a few such blocks whatever V; large
# enough that ``dW += X_tileᵀ dU``, which reads and writes ``dW`` once per tile, does tile / 4
# flops per byte of ``dW`` moved (float32).
BLOCK_ELEMENTS = 2**22
DW_BLOCK_ELEMENTS = 2**20
MIN_TILE = 8

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


def tiling(
    x: jax.Array, w: jax.Array, options: LossOptions, chunking: str = "rows"
) -> tuple[int, int]:
    """Tokens per tile and columns per chunk: by default the whole row of this device's columns
    (``"rows"``), or (``"dw"``, where each chunk adds a ``[d, chunk]`` product to ``dW``) about a
    block's worth of ``dW``; ``"whole rows"`` whatever ``chunk_size`` says."""
    tokens, columns = x.shape[0], w.shape[1]
    size = options.chunk_size
    tile, chunk = size if isinstance(size, tuple) else (None, size)
    if chunking == "whole rows" or chunk is None:
        chunk = dw_chunk(w) if chunking == "dw" else columns
    chunk = min(chunk, columns)
    tile = tile or max(MIN_TILE, BLOCK_ELEMENTS // chunk // MIN_TILE * MIN_TILE)
    return max(1, min(tile, tokens)), chunk


def dw_chunk(w: jax.Array, tile: int = 0) -> int:
    """Columns whose ``[d, chunk]`` slice of ``dW`` (and ``[tile, chunk]`` block of ``dU``) is
    about ``DW_BLOCK_ELEMENTS`` numbers, a multiple of 128."""
    return min(w.shape[1], max(128, DW_BLOCK_ELEMENTS // max(w.shape[0], tile) // 128 * 128))


def block_count(size: int, block: int) -> int:
    return -(-size // block)


def chunk_start(k: jax.Array | int, chunk: int, size: int) -> jax.Array:
    # The last tile or chunk is moved back to end at the last row or column, rather than padding.
    return jnp.minimum(k * chunk, size - chunk)


def token_tile(
    k: jax.Array, tile: int, x: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Tile ``k``'s first row, rows of ``x`` and labels, and which rows no earlier tile had
    (``[tile, 1]``)."""
    start = chunk_start(k, tile, x.shape[0])
    rows = start + lax.broadcasted_iota(np.int32, (tile, 1), 0)
    x_tile = lax.dynamic_slice_in_dim(x, start, tile)
    return start, x_tile, lax.dynamic_slice_in_dim(labels, start, tile), rows >= k * tile


def vocab_offset(w: jax.Array, options: LossOptions) -> jax.Array:
    """This device's first vocabulary index."""
    if not options.vocab_axes:
        return jnp.asarray(0)
    return lax.axis_index(options.vocab_axes) * w.shape[1]


def chunk_logits(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    k: jax.Array | int,
    chunk: int,
    offset: jax.Array,
    options: LossOptions,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Chunk ``k``'s logits ``z`` ``[tokens, chunk]`` and its :func:`chunk_columns`."""
    start = chunk_start(k, chunk, w.shape[1])
    w_chunk = lax.dynamic_slice_in_dim(w, start, chunk, axis=1)
    z = lax.dot_general(
        x,
        w_chunk,
        (((1,), (0,)), ((), ())),
        precision=options.precision,
        preferred_element_type=accumulation_dtype(x),
    )
    if options.soft_cap is not None:
        z = options.soft_cap * jnp.tanh(z / options.soft_cap)
    return (z, *chunk_columns(start, k, chunk, offset, labels))


def chunk_columns(
    start: jax.Array, k: jax.Array | int, chunk: int, offset: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Which columns of chunk ``k`` (from ``start``) no earlier chunk counted (``[1, chunk]``),
    and each token's label's column in the chunk, -1 when not among those (``[tokens]``)."""
    column = lax.broadcasted_iota(np.int32, (1, chunk), 1)
    fresh = start + column >= k * chunk
    label_column = labels - offset - start
    inside = (label_column >= 0) & (label_column < chunk) & (start + label_column >= k * chunk)
    return fresh, jnp.where(inside, label_column, -1)


def statistics(z: jax.Array, fresh: jax.Array, label_column: jax.Array) -> Stats:
    """One block's maximum, sum of ``exp(z − maximum)``, label logit and sum of logits."""
    maximum = jnp.max(jnp.where(fresh, z, -jnp.inf), axis=1)
    exp_sum = jnp.sum(jnp.where(fresh, jnp.exp(z - maximum[:, None]), 0), axis=1)
    # One number per token, picked, rather than a [tokens, chunk] select summed.
    picked = jnp.take_along_axis(z, jnp.maximum(label_column, 0)[:, None], axis=1)[:, 0]
    label_logit = jnp.where(label_column >= 0, picked, 0)
    return maximum, exp_sum, label_logit, jnp.sum(jnp.where(fresh, z, 0), axis=1)


def merge(a: Stats, b: Stats) -> Stats:
    """Two blocks' statistics as one's: the sums of exponentials rescaled to the larger maximum
    (``exp(z − m) = exp(z − m') exp(m' − m)``)."""
    maximum = jnp.maximum(a[0], b[0])
    exp_sum = a[1] * jnp.exp(a[0] - maximum) + b[1] * jnp.exp(b[0] - maximum)
    return maximum, exp_sum, a[2] + b[2], a[3] + b[3]


def combine(stats: Stats, options: LossOptions) -> tuple[jax.Array, jax.Array, jax.Array]:
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


def token_loss(
    lse: jax.Array,
    label_logit: jax.Array,
    logit_sum: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> jax.Array:
    smoothing = options.label_smoothing
    loss = lse - (1 - smoothing) * label_logit + options.z_loss * lse**2
    return loss - smoothing / vocab_size * logit_sum if smoothing else loss


def logit_gradient(
    z: jax.Array,
    fresh: jax.Array,
    label_column: jax.Array,
    lse: jax.Array,
    g: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> jax.Array:
    """``dU = g ((1 + 2 ζ lse) softmax(z) − targets) (1 − (z / c)²)``; 0 in columns not fresh."""
    smoothing, cap = options.label_smoothing, options.soft_cap
    is_label = lax.broadcasted_iota(np.int32, z.shape, 1) == label_column[:, None]
    targets = (1 - smoothing) * is_label + smoothing / vocab_size
    softmax_scale = ((1 + 2 * options.z_loss * lse) * g)[:, None]
    dz = softmax_scale * jnp.exp(z - lse[:, None]) - g[:, None] * targets
    if cap is not None:
        dz = dz * (1 - (z / cap) ** 2)
    return jnp.where(fresh, dz, 0)


def sum_over_devices(
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


def accumulation_dtype(x: jax.Array) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


def varying_zeros(shape: tuple[int, ...], dtype: Any, *like: jax.Array) -> jax.Array:
    """Zeros to start a loop's carry: inside ``shard_map``, varying along the mesh axes the
    arrays ``like`` vary along, as the loop body's results do."""
    zeros = jnp.zeros(shape, dtype)
    axes = tuple(sorted(frozenset().union(*(varying_axes(a) for a in like))))
    if not axes:
        return zeros
    return cast_to_varying(zeros, axes)
