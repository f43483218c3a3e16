"""A small causal transformer written with jaxmm's products, for :func:`jaxmm.clipped_grad`'s
checks, benchmark and example: token embedding (a gather), multi-head attention by
``jaxmm.einsum``, a GELU MLP by ``jaxmm.matmul``, LayerNorm scales and biases, and an output layer
tied to the embedding (or an untied one through ``jaxmm.linear_cross_entropy``); its layers in a
Python loop or under ``lax.scan``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def transformer_params(
    key: jax.Array,
    vocab: int,
    width: int,
    hidden: int,
    layers: int,
    heads: int,
    *,
    head: bool = False,
    stacked: bool = False,
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """Parameters: ``embed`` ``(vocab, width)``, ``layers`` (a list of dicts, each of
    ``wq``/``wk``/``wv`` ``(width, heads, width // heads)``, ``wo`` ``(heads, width // heads,
    width)``, ``up`` ``(width, hidden)``, ``down`` ``(hidden, width)``, biases and LayerNorm
    scales), and, with ``head``, an untied ``head`` ``(width, vocab)``. With ``stacked``,
    ``layers`` is one dict of arrays with a leading ``layers`` axis (run under ``lax.scan``)."""
    keys = iter(jax.random.split(key, 8 * layers + 2))

    def normal(shape: tuple[int, ...], fan_in: int) -> jax.Array:
        weights: jax.Array = jax.random.normal(next(keys), shape) / fan_in**0.5
        return weights.astype(dtype)

    size = width // heads
    params: dict[str, Any] = {"embed": normal((vocab, width), width), "layers": []}
    for _ in range(layers):
        params["layers"].append(
            {
                "wq": normal((width, heads, size), width),
                "wk": normal((width, heads, size), width),
                "wv": normal((width, heads, size), width),
                "wo": normal((heads, size, width), width),
                "up": normal((width, hidden), width),
                "up_bias": jnp.zeros(hidden, dtype),
                "down": normal((hidden, width), hidden),
                "down_bias": jnp.zeros(width, dtype),
                "norm1": jnp.ones(width, dtype),
                "norm2": jnp.ones(width, dtype),
            }
        )
    if stacked:
        params["layers"] = jax.tree.map(lambda *x: jnp.stack(x), *params["layers"])
    params["final_norm"] = jnp.ones(width, dtype)
    if head:
        params["head"] = normal((width, vocab), width)
    return params


def _norm(x: jax.Array, scale: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + 1e-5) * _along_last(scale, x.ndim)


def _along_last(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` of shape ``(n,)`` as ``(1, ..., 1, n)``: broadcast along the last axis, explicitly."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def transformer_layer(h: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    """One pre-norm block on ``h`` of shape ``(batch, sequence, width)``."""
    import jaxmm

    x = _norm(h, p["norm1"])
    q = jaxmm.einsum("btd,dhk->bhtk", x, p["wq"])
    k = jaxmm.einsum("btd,dhk->bhtk", x, p["wk"])
    v = jaxmm.einsum("btd,dhk->bhtk", x, p["wv"])
    scores = jaxmm.einsum("bhtk,bhsk->bhts", q, k) / q.shape[-1] ** 0.5
    causal = jnp.tril(jnp.ones((1, 1, h.shape[1], h.shape[1]), bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
    attended = jaxmm.einsum("bhts,bhsk->bhtk", weights, v)
    h = h + jaxmm.einsum("bhtk,hkd->btd", attended, p["wo"])
    x = _norm(h, p["norm2"])
    up = jax.nn.gelu(jaxmm.matmul(x, p["up"]) + _along_last(p["up_bias"], x.ndim))
    return h + jaxmm.matmul(up, p["down"]) + _along_last(p["down_bias"], x.ndim)


def transformer_loss(params: dict[str, Any], tokens: jax.Array, scan: bool = False) -> jax.Array:
    """Mean next-token cross-entropy of ``tokens`` (integers, shape ``(batch, sequence)``); the
    layers under ``lax.scan`` if ``scan`` (stacked inside) or if they are stacked already."""
    import jaxmm

    h = params["embed"][tokens[:, :-1]]
    if isinstance(params["layers"], dict):
        h, _ = lax.scan(lambda h, p: (transformer_layer(h, p), None), h, params["layers"])
    elif scan:
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *params["layers"])
        h, _ = lax.scan(lambda h, p: (transformer_layer(h, p), None), h, stacked)
    else:
        for layer in params["layers"]:
            h = transformer_layer(h, layer)
    h = _norm(h, params["final_norm"])
    labels = tokens[:, 1:]
    if "head" in params:
        return jaxmm.linear_cross_entropy(h, params["head"], labels)
    logits = jaxmm.einsum("btd,vd->btv", h, params["embed"])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1))
