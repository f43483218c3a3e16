"""``linear_cross_entropy``'s two passes over the vocabulary, one chunk of columns at a time (the
derivation, and why in chunks: :mod:`jaxmm._cross_entropy`): the forward pass's online
log-sum-exp and the backward pass's ``dX = dU Wᵀ`` and ``dW = Xᵀ dU``, each over this device's
columns, combined across devices by the collectives the module docstring of
:mod:`jaxmm._cross_entropy` names."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._compat import cast_to_varying, varying_axes

# chunk_size=None: about 2^23 logits per chunk (32 MiB in float32), from 128 to V columns.
_CHUNK_ELEMENTS = 2**23
_MIN_CHUNK = 128


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The static options, canonicalised, and the mesh axes sharding the tokens / vocabulary."""

    reduction: str
    label_smoothing: float
    z_loss: float
    soft_cap: float | None
    chunk_size: int | None
    precision: Any
    token_axes: tuple[str, ...] = ()
    vocab_axes: tuple[str, ...] = ()


def forward_chunks(
    x: jax.Array, w: jax.Array, labels: jax.Array, options: LossOptions, vocab_size: int
) -> tuple[jax.Array, jax.Array]:
    """Per-token loss ``ℓ`` (labels not checked) and ``lse``, over this device's columns."""
    chunk, chunks, offset = _chunking(x, w, options)
    zeros = _varying_zeros((x.shape[0],), _accumulation_dtype(x), x, w)

    def add_chunk(k: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        running_max, exp_sum, label_logit, logit_sum = carry
        z, fresh, is_label = _chunk_logits(x, w, labels, k, chunk, offset, options)
        new_max = jnp.maximum(running_max, jnp.max(jnp.where(fresh, z, -jnp.inf), axis=1))
        exp_sum = exp_sum * jnp.exp(running_max - new_max) + jnp.sum(
            jnp.where(fresh, jnp.exp(z - new_max[:, None]), 0), axis=1
        )
        label_logit = label_logit + jnp.sum(jnp.where(is_label, z, 0), axis=1)
        logit_sum = logit_sum + jnp.sum(jnp.where(fresh, z, 0), axis=1)
        return new_max, exp_sum, label_logit, logit_sum

    carry = (zeros - jnp.inf, zeros, zeros, zeros)
    running_max, exp_sum, label_logit, logit_sum = lax.fori_loop(0, chunks, add_chunk, carry)
    if options.vocab_axes:  # the other devices' columns: rescale to the largest maximum
        largest = lax.pmax(running_max, options.vocab_axes)
        exp_sum = exp_sum * jnp.exp(running_max - largest)
        exp_sum, label_logit, logit_sum = lax.psum(
            (exp_sum, label_logit, logit_sum), options.vocab_axes
        )
        running_max = largest
    lse = running_max + jnp.log(exp_sum)
    smoothing = options.label_smoothing
    loss = lse - (1 - smoothing) * label_logit + options.z_loss * lse**2
    if smoothing:
        loss = loss - smoothing / vocab_size * logit_sum
    return loss, lse


def backward_chunks(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    lse: jax.Array,
    token_cotangent: jax.Array,
    options: LossOptions,
    vocab_size: int,
) -> tuple[jax.Array, jax.Array]:
    """``dX = dU Wᵀ`` and ``dW = Xᵀ dU``, ``dU`` formed one chunk of columns at a time."""
    chunk, chunks, offset = _chunking(x, w, options)
    dtype = _accumulation_dtype(x)
    smoothing, cap = options.label_smoothing, options.soft_cap
    softmax_scale = (1 + 2 * options.z_loss * lse)[:, None] * token_cotangent[:, None]
    target_scale = token_cotangent[:, None]
    dot = partial(lax.dot_general, precision=options.precision, preferred_element_type=dtype)

    def add_chunk(k: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
        dx, dw = carry
        z, fresh, is_label = _chunk_logits(x, w, labels, k, chunk, offset, options)
        targets = (1 - smoothing) * is_label + smoothing / vocab_size
        dz = softmax_scale * jnp.exp(z - lse[:, None]) - target_scale * targets
        if cap is not None:
            dz = dz * (1 - (z / cap) ** 2)
        du = jnp.where(fresh, dz, 0).astype(x.dtype)  # the products run in the inputs' dtype
        start = _chunk_start(k, chunk, w.shape[1])
        w_chunk = lax.dynamic_slice_in_dim(w, start, chunk, axis=1)
        dx = dx + dot(du, w_chunk, (((1,), (1,)), ((), ())))  # dU Wᵀ, summed over v
        dw_chunk = dot(x, du, (((0,), (0,)), ((), ())))  # Xᵀ dU; zero in the columns not fresh
        dw_old = lax.dynamic_slice_in_dim(dw, start, chunk, axis=1)
        return dx, lax.dynamic_update_slice_in_dim(dw, dw_old + dw_chunk, start, axis=1)

    carry = (_varying_zeros(x.shape, dtype, x, w), _varying_zeros(w.shape, dtype, x, w))
    dx, dw = lax.fori_loop(0, chunks, add_chunk, carry)
    if options.vocab_axes:  # dX sums over every device's columns
        dx = lax.psum(dx, options.vocab_axes)
    if options.token_axes:  # dW sums over every device's tokens
        dw = lax.psum(dw, options.token_axes)
    return dx, dw


def _chunking(x: jax.Array, w: jax.Array, options: LossOptions) -> tuple[int, int, jax.Array]:
    """Columns per chunk, number of chunks, and this device's first vocabulary index."""
    tokens, columns = x.shape[0], w.shape[1]
    chunk = options.chunk_size or max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(tokens, 1) // 128 * 128)
    chunk = min(chunk, columns)
    offset = lax.axis_index(options.vocab_axes) * columns if options.vocab_axes else 0
    return chunk, -(-columns // chunk), jnp.asarray(offset)


def _chunk_start(k: jax.Array, chunk: int, columns: int) -> jax.Array:
    # The last chunk is moved back to end at the last column, rather than padding W.
    return jnp.minimum(k * chunk, columns - chunk)


def _chunk_logits(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    k: jax.Array,
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
