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

from ._checks import (
    linear_cross_entropy_arrays,
    linear_cross_entropy_options,
)
from ._cross_entropy_chunks import LossOptions, backward_chunks, forward_chunks
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
        options = LossOptions(*checked, precision=Options.of(precision).precision)
        loss: jax.Array = _checked_linear_cross_entropy(x, w, labels, mask, options)
        return loss


@staged(4)
def _checked_linear_cross_entropy(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> jax.Array:
    token_shape = labels.shape
    x, w, labels, mask, token_axes, vocab_axes, order = lay_out(x, w, labels, mask)
    options = dataclasses.replace(options, token_axes=token_axes, vocab_axes=vocab_axes)
    x, w = match_varying_axes(x, w)
    loss = _linear_cross_entropy(x, w, labels, mask, options)
    return restore(loss, token_shape, order) if options.reduction == "none" else loss


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_cross_entropy(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> jax.Array:
    return _linear_cross_entropy_fwd(x, w, labels, mask, options)[0]


def _linear_cross_entropy_fwd(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array, options: LossOptions
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    losses, lse = _on_mesh(forward_chunks, options, w, "vectors")(x, w, labels)
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
    options: LossOptions, residuals: tuple[jax.Array, ...], cotangent: jax.Array
) -> tuple[jax.Array, jax.Array, None, None]:
    x, w, labels, mask, lse = residuals
    # g[n]: the reduction's derivative (module docstring); a dropped token's is 0, not 0/0.
    if options.reduction == "mean":
        cotangent = cotangent / jnp.sum(mask, dtype=cotangent.dtype)
    token_cotangent = jnp.where(mask, cotangent, 0)
    valid = (labels >= 0) & (labels < w.shape[1])
    token_cotangent = jnp.where(valid | ~mask, token_cotangent, jnp.nan)
    dx, dw = _on_mesh(backward_chunks, options, w, "operands")(x, w, labels, lse, token_cotangent)
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None


_linear_cross_entropy.defvjp(_linear_cross_entropy_fwd, _linear_cross_entropy_bwd)


def _on_mesh(kernel: Any, options: LossOptions, w: jax.Array, returns: str) -> Any:
    function = partial(kernel, options=options, vocab_size=w.shape[1])  # V: all devices' columns
    return on_mesh(function, options.token_axes, options.vocab_axes, returns)
