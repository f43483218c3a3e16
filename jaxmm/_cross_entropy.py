"""Linear cross-entropy: the output layer's product and its loss, with a hand-derived backward
pass computed one vocabulary chunk at a time, so that the ``[tokens, vocab]`` logits never exist.

The derivation, for one token
-----------------------------
With the token's features ``x[i]``, the weight ``W[i, v]`` (``v`` over a vocabulary of ``V``
entries) and the label ``y``, the logits, their log-sum-exp and the softmax are

    u[v] = Σ_i x[i] W[i, v]                 z[v] = c tanh(u[v] / c)   (soft cap c; else z = u)
    lse = log Σ_v exp z[v]                  p[v] = exp(z[v] − lse)

The loss is the cross-entropy against optax's smoothed targets ``t[v] = (1 − ε) δ[v, y] + ε / V``
plus the z-loss ``ζ lse²``. As ``log p[v] = z[v] − lse`` and ``Σ_v t[v] = 1``,

    ℓ = −Σ_v t[v] log p[v] + ζ lse² = lse − (1 − ε) z[y] − (ε / V) Σ_v z[v] + ζ lse²

Differentiate term by term. ``∂lse/∂z[v] = exp z[v] / Σ_w exp z[w] = p[v]``, so
``∂(ζ lse²)/∂z[v] = 2 ζ lse p[v]``; ``z[y]`` contributes ``δ[v, y]`` and ``Σ_v z[v]`` a 1 to each:

    ∂ℓ/∂z[v] = p[v] + 2 ζ lse p[v] − (1 − ε) δ[v, y] − ε / V = (1 + 2 ζ lse) p[v] − t[v]

the softmax (scaled by the z-loss) minus the targets. The soft cap multiplies each entry by
``∂z/∂u = 1 − tanh²(u / c) = 1 − (z / c)²``. With ``g[n]`` the cotangent of token ``n``'s loss:

    dU[n, v] = g[n] ((1 + 2 ζ lse[n]) p[n, v] − t[n, v]) (1 − (z[n, v] / c)²)

and the seed's rule for ``U = X W`` with ``dU`` for ``dY``:

    dX[n, i] = Σ_v dU[n, v] W[i, v]  (dX = dU Wᵀ)      dW[i, v] = Σ_n X[n, i] dU[n, v]  (dW = Xᵀ dU)

The reductions, with ``m[n]`` the ``where`` mask and ``ḡ`` the cotangent of the result: ``"none"``
returns ``m[n] ℓ[n]``, so ``g[n] = m[n] ḡ[n]``; ``"sum"`` returns ``Σ_n m[n] ℓ[n]``, so
``g[n] = m[n] ḡ``; ``"mean"`` returns ``Σ_n m[n] ℓ[n] / Σ_n m[n]``, so ``g[n] = m[n] ḡ / Σ_n m[n]``
(zero, not 0/0, when no token is kept, as for ``jnp.mean(..., where=m)``).

In chunks
---------
Every sum over ``v`` above is a sum over vocabulary chunks, and each chunk needs only its own
logits and the per-token ``lse``. The forward pass accumulates ``lse`` online (a running maximum
and the sum of exponentials rescaled to it), ``z[y]`` and ``Σ_v z[v]``, then keeps ``lse``: one
number per token. The backward pass recomputes each chunk's ``u`` from ``X`` and ``W`` (one product
more than autodiff does, in exchange for never holding ``[tokens, V]``), forms the chunk's ``dU``,
adds ``dU Wᵀ`` to ``dX`` and writes ``Xᵀ dU`` into that chunk's columns of ``dW``. A last chunk
that would run past ``V`` is moved back to end at ``V``; its columns already counted are left out.

With the vocabulary sharded over devices (``W``'s last axis along mesh axes, explicit sharding),
each device runs the same loop over its own columns. The sums over ``v`` become per-device partial
sums combined by an all-reduce of one number per token (``pmax`` of the running maxima first, to
rescale the sums of exponentials); ``dX``'s sum over ``v`` is one all-reduce at the end; ``dW``'s
sum over tokens is one all-reduce over the mesh axes that shard the tokens. Neither ``W`` nor any
logits cross devices.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._checks import (
    linear_cross_entropy_arrays,
    linear_cross_entropy_options,
)
from ._compat import varying_axes
from ._dot_general import match_varying_axes
from ._mesh import lay_out, on_mesh, restore
from ._options import Options
from ._scope import named, staged
from ._typing import ArrayLike, PrecisionLike

# chunk_size=None: about 2^23 logits per chunk (32 MiB in float32), from 128 to V columns.
_CHUNK_ELEMENTS = 2**23
_MIN_CHUNK = 128


@named("jaxmm.linear_cross_entropy")
def linear_cross_entropy(
    x: ArrayLike,
    w: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_soft_cap: float | None = None,
    precision: PrecisionLike = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """Softmax cross-entropy of the logits ``x @ w`` against integer labels, without the logits.

    The same loss as ``optax.softmax_cross_entropy_with_integer_labels(x @ w, labels)`` (with
    optax's label smoothing, a z-loss and a logit soft cap as options), computed and
    differentiated one chunk of the vocabulary at a time: neither pass holds more than one
    ``[tokens, chunk]`` block of logits, and the backward pass needs only ``x``, ``w``, the labels,
    the mask and one float32 log-sum-exp per token. For each token, with ``z = x w`` accumulated
    in float32 (``z = c tanh(z / c)`` when ``logit_soft_cap=c``) and ``lse = logsumexp(z)``::

      loss = lse − (1 − ε) z[label] − ε mean(z) + z_loss · lse²     (ε = label_smoothing)

    Args:
      x: floating array of shape ``(..., d)``: the final hidden states, one row per token.
      w: floating array of shape ``(d, V)``: the output layer's weight, as a Flax ``Dense`` /
        ``nnx.Linear`` kernel (tied embeddings pass ``embedding.T``).
      labels: integer array of shape ``(...)``, values in ``[0, V)``. A kept token whose label is
        outside that range gets a NaN loss and NaN gradients, never a plausible number (``-1``
        does not mean the last class, as it does for optax).
      where: optional boolean array of shape ``(...)``: the tokens to keep. A dropped token adds
        nothing to the loss or the gradients, whatever its label (padding may use ``-100``).
      reduction: ``"mean"`` (over the kept tokens; NaN with zero gradients when none is kept, as
        ``jnp.mean(loss, where=where)``), ``"sum"``, or ``"none"`` (per-token losses, zero where
        dropped).
      label_smoothing: ε in ``[0, 1]``: targets ``(1 − ε) one_hot(label) + ε / V``.
      z_loss: coefficient (≥ 0) of ``lse²``, which keeps the log-normaliser near zero.
      logit_soft_cap: ``None`` or ``c > 0``: logits ``c tanh(z / c)``.
      precision: as in ``lax.dot_general``, for every product of both passes.
      chunk_size: vocabulary columns per chunk; ``None`` picks about 2²³ logits per chunk
        (1024 columns for 8192 tokens), at least 128 and at most ``V``.

    Returns:
      float32 (float64 for float64 inputs) scalar, or shape ``(...)`` for ``"none"``.

    Backward (``dU`` the loss's derivative w.r.t. the pre-cap logits, ``g`` the token's cotangent;
    derived in the module's docstring)::

      dU = g ((1 + 2 z_loss lse) softmax(z) − targets) (1 − (z / c)²)
      dX = dU Wᵀ        dW = Xᵀ dU           (chunk by chunk, accumulated in float32)

    Gradients come in the dtype of ``x`` and ``w``; labels and mask get none. Forward mode
    (``jax.jvp``) is refused with JAX's error for ``custom_vjp`` functions.

    Example:
      >>> import jax, jax.numpy as jnp, jaxmm
      >>> x = jnp.ones((4, 3))
      >>> w = jnp.zeros((3, 4))
      >>> labels = jnp.array([0, 0, 1, 1])
      >>> jaxmm.linear_cross_entropy(x, w, labels)  # log 4: all logits equal
      Array(1.3862944, dtype=float32)
      >>> dw = jax.grad(jaxmm.linear_cross_entropy, argnums=1)(x, w, labels)
      >>> dw[0]  # mean over tokens of softmax − one_hot(label): 1/4 − 1/2, 1/4 − 0
      Array([-0.25, -0.25,  0.25,  0.25], dtype=float32)
    """
    with jax.named_scope("jaxmm.linear_cross_entropy"):
        x, w, labels, mask = linear_cross_entropy_arrays(x, w, labels, where)
        checked = linear_cross_entropy_options(
            reduction, label_smoothing, z_loss, logit_soft_cap, chunk_size
        )
        options = _Options(*checked, precision=Options.of(precision).precision)
        loss: jax.Array = _checked_linear_cross_entropy(x, w, labels, mask, options)
        return loss


@staged(4)
def _checked_linear_cross_entropy(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: _Options
) -> jax.Array:
    token_shape = labels.shape
    x, w, labels, mask, token_axes, vocab_axes, order = lay_out(x, w, labels, mask)
    options = dataclasses.replace(options, token_axes=token_axes, vocab_axes=vocab_axes)
    x, w = match_varying_axes(x, w)
    loss = _linear_cross_entropy(x, w, labels, mask, options)
    return restore(loss, token_shape, order) if options.reduction == "none" else loss


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Options:
    """The static options, canonicalised, and the mesh axes sharding the tokens / vocabulary."""

    reduction: str
    label_smoothing: float
    z_loss: float
    soft_cap: float | None
    chunk_size: int | None
    precision: Any
    token_axes: tuple[str, ...] = ()
    vocab_axes: tuple[str, ...] = ()


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_cross_entropy(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: _Options
) -> jax.Array:
    return _linear_cross_entropy_fwd(x, w, labels, mask, options)[0]


def _linear_cross_entropy_fwd(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: _Options
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    losses, lse = _on_mesh(_forward_chunks, options, w, "vectors")(x, w, labels)
    valid = (labels >= 0) & (labels < w.shape[1])
    losses = jnp.where(mask, jnp.where(valid, losses, jnp.nan), 0)
    if options.reduction == "none":
        loss = losses
    else:
        loss = jnp.sum(losses)
        if options.reduction == "mean":
            loss = loss / jnp.sum(mask, dtype=loss.dtype)  # NaN when no token is kept
    return loss, (x, w, labels, mask, lse)


def _linear_cross_entropy_bwd(
    options: _Options, residuals: tuple[jax.Array, ...], cotangent: jax.Array
) -> tuple[jax.Array, jax.Array, None, None]:
    x, w, labels, mask, lse = residuals
    # g[n]: the reduction's derivative (module docstring); a dropped token's is 0, not 0/0.
    if options.reduction == "mean":
        cotangent = cotangent / jnp.sum(mask, dtype=cotangent.dtype)
    token_cotangent = jnp.where(mask, cotangent, 0)
    valid = (labels >= 0) & (labels < w.shape[1])
    token_cotangent = jnp.where(valid | ~mask, token_cotangent, jnp.nan)
    dx, dw = _on_mesh(_backward_chunks, options, w, "operands")(x, w, labels, lse, token_cotangent)
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None


_linear_cross_entropy.defvjp(_linear_cross_entropy_fwd, _linear_cross_entropy_bwd)


def _forward_chunks(
    x: jax.Array, w: jax.Array, labels: jax.Array, options: _Options, vocab_size: int
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


def _backward_chunks(
    x: jax.Array,
    w: jax.Array,
    labels: jax.Array,
    lse: jax.Array,
    token_cotangent: jax.Array,
    options: _Options,
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


def _chunking(x: jax.Array, w: jax.Array, options: _Options) -> tuple[int, int, jax.Array]:
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
    options: _Options,
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
    pcast = getattr(lax, "pcast", None)  # lax.pvary before JAX 0.8.2
    varying: jax.Array = (
        pcast(zeros, axes, to="varying") if pcast else getattr(lax, "pvary")(zeros, axes)  # noqa: B009
    )
    return varying


def _on_mesh(kernel: Any, options: _Options, w: jax.Array, returns: str) -> Any:
    function = partial(kernel, options=options, vocab_size=w.shape[1])  # V: all devices' columns
    return on_mesh(function, options.token_axes, options.vocab_axes, returns)
