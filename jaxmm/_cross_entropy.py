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

In blocks
---------
Every sum over ``v`` above is a sum over vocabulary chunks, and every sum over ``n`` one over
tiles of tokens: the loops run over blocks of ``[tile, chunk]`` logits and never hold
``[tokens, V]``. Each block needs its own logits and the per-token ``lse``, which needs the whole
row. Undifferentiated, a tile accumulates ``lse`` online over its chunks (a running maximum ``m``
and the sum of exponentials rescaled to it, ``Σ exp(z − m) = Σ exp(z − m') exp(m' − m)``), ``z[y]``
and ``Σ_v z[v]``: one product per block.

Differentiated, a scalar reduction (``"mean"``, ``"sum"``) has one cotangent ``ḡ`` for all
tokens, and ``g[n] = ḡ γ[n]`` with ``γ[n] = m[n]`` (sum) or ``m[n] / Σ_n m[n]`` (mean) known in
the forward pass. ``dU`` is linear in ``g``, so ``dX = ḡ dX₁`` and ``dW = ḡ dW₁`` with
``dX₁, dW₁`` the gradients for ``g = γ``. The forward pass forms those, and the backward pass only
multiplies them by ``ḡ``: three products in all (the logits, ``dU Wᵀ``, ``Xᵀ dU``), where
recomputing the logits in the backward pass makes four.

The forward pass can form ``dU`` only once it has ``lse``, the whole row's. Why not online, like
``lse``: with ``l[n]`` the log-sum-exp of the chunks seen so far,

    dW₁[i, v] = Σ_n X[n, i] γ[n] ((1 + 2 ζ lse[n]) exp(z[n, v] − l[n]) exp(l[n] − lse[n]) − t[n, v])

needs a correction ``exp(l[n] − lse[n])`` (and ``lse[n]`` in the z-loss factor) that differs from
token to token, inside a sum over the tokens: a column of ``dW₁`` already summed cannot be
corrected afterwards (a row of ``dX₁``, one token's, could). So the loop runs over tiles of tokens,
each holding its whole row of logits ``[tile, V]`` (the tile chosen so that this stays a small
block): the logits (product one), their ``lse`` and loss; then, chunk by chunk of that row,
``dU``, the tile's rows of ``dX₁ += dU W_chunkᵀ`` (product two) and the chunk's columns of
``dW₁ += X_tileᵀ dU`` (product three). Exact, with no rescaling. It keeps ``dX₁`` and ``dW₁``:
the size of ``x`` and ``w`` (in their dtype), which the gradient step returns anyway, in place of
``x`` and ``w`` themselves, which a recomputing backward pass keeps. ``reduction="none"`` has a
cotangent per token, known only in the backward pass, which recomputes each block's logits from
``x``, ``w`` and ``lse``.

A last tile (chunk) that would run past the tokens (``V``) is moved back to end there: its rows
(columns) already counted are rewritten with the same values, and left out of the sums.

With the vocabulary sharded over devices (``W``'s last axis along mesh axes, by explicit sharding
or by ``axis_name`` inside the caller's ``shard_map``), each device runs the same loops over its
own columns. The sums over ``v`` become per-device partial sums combined by an all-reduce of one
number per token (``pmax`` of the maxima first, to rescale the sums of exponentials); ``dX``'s sum
over ``v`` is one all-reduce of ``[tokens, d]``; ``dW``'s sum over tokens is one all-reduce over the
mesh axes that shard the tokens. Neither ``W`` nor any logits cross devices.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ._checks import (
    linear_cross_entropy_arrays,
    linear_cross_entropy_axes,
    linear_cross_entropy_options,
)
from ._compat import cast_to_varying, varying_axes
from ._cross_entropy_blocks import LossOptions, accumulation_dtype
from ._cross_entropy_chunks import backward_chunks, forward_chunks, gradient_chunks
from ._dot_general import match_varying_axes
from ._mesh import lay_out, on_mesh, restore
from ._options import Options
from ._scope import named, staged
from ._typing import ArrayLike, PrecisionLike


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
    chunk_size: int | tuple[int, int] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> jax.Array:
    """Softmax cross-entropy of the logits ``x @ w`` against integer labels, without the logits.

    The same loss as ``optax.softmax_cross_entropy_with_integer_labels(x @ w, labels)`` (with
    optax's label smoothing, a z-loss and a logit soft cap as options), computed and
    differentiated one block of ``[tile tokens, chunk columns]`` logits at a time, never holding
    ``[tokens, V]``. Differentiated, the ``"mean"`` and ``"sum"`` losses form their gradients in
    the forward pass (three products, as autodiff of ``x @ w`` does) and keep them for the
    backward pass, which scales them by the cotangent; ``"none"`` keeps one log-sum-exp per token
    and recomputes the logits in the backward pass (four products). For each token, with
    ``z = x w`` accumulated in float32 (``z = c tanh(z / c)`` when ``logit_soft_cap=c``) and
    ``lse = logsumexp(z)``::

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
      chunk_size: ``None``: tiles of about 2²² / V tokens (at least 8) by the whole vocabulary
        (128 tokens for V = 32768). An int: vocabulary columns per chunk (of the undifferentiated
        loss and of ``"none"``'s backward pass; the tiles of a differentiated scalar loss always
        hold whole rows), with tiles of about 2²² / chunk tokens; a pair: (tokens, columns).
      axis_name: inside ``jax.shard_map``, the mesh axis (or tuple of axes) along which ``w``'s
        columns are sharded: each device passes its own ``(d, V / devices)`` columns, the same
        ``x`` and labels (global indices in ``[0, V)``), and gets the whole vocabulary's loss and
        gradients; only per-token numbers and ``dX`` (``[tokens, d]``) cross devices. Outside
        ``shard_map``, explicitly sharded arguments are laid out from their own shardings, with
        or without ``jax.set_mesh``.

    Returns:
      float32 (float64 for float64 inputs) scalar, or shape ``(...)`` for ``"none"``.

    Backward (``dU`` the loss's derivative w.r.t. the pre-cap logits, ``g`` the token's cotangent;
    derived in the module's docstring)::

      dU = g ((1 + 2 z_loss lse) softmax(z) − targets) (1 − (z / c)²)
      dX = dU Wᵀ        dW = Xᵀ dU           (block by block, accumulated in float32)

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
        precision = Options.of(precision).precision
        options = LossOptions(
            *checked, precision=precision, axis_name=linear_cross_entropy_axes(axis_name)
        )
        loss: jax.Array = _checked_linear_cross_entropy(x, w, labels, mask, options)
        return loss


def _vary_like(a: jax.Array, like: jax.Array) -> jax.Array:
    """``a``, marked as varying along the ``shard_map`` axes that ``like`` varies along."""
    axes = tuple(sorted(varying_axes(like) - varying_axes(a)))
    return cast_to_varying(a, axes) if axes else a


@staged(4)
def _checked_linear_cross_entropy(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> jax.Array:
    token_shape = labels.shape
    if options.axis_name:  # inside the caller's shard_map: w holds this device's columns
        x, labels, mask = x.reshape(-1, x.shape[-1]), labels.reshape(-1), mask.reshape(-1)
        order = tuple(range(len(token_shape)))
        vocab_size = w.shape[1] * lax.axis_size(options.axis_name)
        options = dataclasses.replace(options, vocab_axes=options.axis_name)
        # w varies like x (its cotangent then summed over x's devices by JAX); x stays the same
        # along the vocabulary's axes, its cotangent summed here, and the loss as well.
        w = _vary_like(w, x)
    else:
        x, w, labels, mask, token_axes, vocab_axes, order = lay_out(x, w, labels, mask)
        vocab_size = w.shape[1]
        options = dataclasses.replace(options, token_axes=token_axes, vocab_axes=vocab_axes)
        x, w = match_varying_axes(x, w)
    options = dataclasses.replace(options, vocab_size=vocab_size)
    loss = _linear_cross_entropy(x, w, labels, mask, options)
    return restore(loss, token_shape, order) if options.reduction == "none" else loss


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_cross_entropy(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> jax.Array:
    # Not differentiated: the loss alone, one product per block.
    losses, _ = _on_mesh(forward_chunks, options, ("tokens", "tokens"))(x, w, labels)
    return _reduce(losses, labels, mask, options)


def _linear_cross_entropy_fwd(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    if options.reduction == "none":  # a cotangent per token, known only in the backward pass
        losses, lse = _on_mesh(forward_chunks, options, ("tokens", "tokens"))(x, w, labels)
        return _reduce(losses, labels, mask, options), (x, w, labels, mask, lse)
    # A scalar's: dX = ḡ dX₁, dW = ḡ dW₁, with dX₁ and dW₁ formed now, for g = γ (docstring).
    unit = _token_cotangent(jnp.ones((), accumulation_dtype(x)), labels, mask, options)
    returns = ("tokens", "x", "w")
    losses, dx, dw = _on_mesh(gradient_chunks, options, returns)(x, w, labels, unit)
    return _reduce(losses, labels, mask, options), (dx.astype(x.dtype), dw.astype(w.dtype))


def _linear_cross_entropy_bwd(
    options: LossOptions, residuals: tuple[jax.Array, ...], cotangent: jax.Array
) -> tuple[jax.Array, jax.Array, None, None]:
    if options.reduction != "none":
        dx, dw = residuals
        return cotangent.astype(dx.dtype) * dx, cotangent.astype(dw.dtype) * dw, None, None
    x, w, labels, mask, lse = residuals
    token_cotangent = _token_cotangent(cotangent, labels, mask, options)
    returns = ("x", "w")
    dx, dw = _on_mesh(backward_chunks, options, returns)(x, w, labels, lse, token_cotangent)
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None


_linear_cross_entropy.defvjp(_linear_cross_entropy_fwd, _linear_cross_entropy_bwd)


def _reduce(
    losses: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> jax.Array:
    """The reduction of the kept tokens' losses; NaN for a kept token with a label out of range."""
    losses = jnp.where(mask, jnp.where(_valid(labels, options), losses, jnp.nan), 0)
    if options.reduction == "none":
        return losses
    loss = jnp.sum(losses)
    if options.reduction == "mean":
        loss = loss / jnp.sum(mask, dtype=loss.dtype)  # NaN when no token is kept
    return loss


def _token_cotangent(
    cotangent: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> jax.Array:
    """``g[n]``, the reduction's derivative (module docstring); a dropped token's is 0, not 0/0,
    and a kept token's with a label out of range NaN."""
    if options.reduction == "mean":
        cotangent = cotangent / jnp.sum(mask, dtype=cotangent.dtype)
    token_cotangent = jnp.where(mask, cotangent, 0)
    return jnp.where(_valid(labels, options) | ~mask, token_cotangent, jnp.nan)


def _valid(labels: jax.Array, options: LossOptions) -> jax.Array:
    return (labels >= 0) & (labels < options.vocab_size)


def _on_mesh(kernel: Any, options: LossOptions, returns: tuple[str, ...]) -> Any:
    function = partial(kernel, options=options, vocab_size=options.vocab_size)
    if options.axis_name:  # already per device, in the caller's shard_map
        return function
    return on_mesh(function, options.token_axes, options.vocab_axes, returns)
