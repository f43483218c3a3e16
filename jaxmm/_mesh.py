"""A per-device function over the mesh axes that shard the tokens and the vocabulary.

``linear_cross_entropy`` runs its chunked loops on each device's own tokens and vocabulary
columns, and writes the few cross-device sums its derivation needs as collectives. Under explicit
sharding this module reads from the operands' types which mesh axes shard the tokens (``x``'s
rows) and the vocabulary (``w``'s columns), and runs the function under ``jax.shard_map`` with
those axes; without explicit sharding it runs the function as it is, on the whole arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ._rules import full_spec

Axes = tuple[str, ...]


def lay_out(
    x: jax.Array, w: jax.Array, labels: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, Axes, Axes, tuple[int, ...]]:
    """Tokens flattened (``x`` ``[N, d]``, ``labels`` and ``mask`` ``[N]``), the mesh axes
    sharding the tokens and the vocabulary, and the order of the token axes in ``N``.

    Token axes sharded over devices come first (a transpose on each device, when it is not the
    leading one that is sharded), so that each device's tokens stay together when flattened. A
    mesh axis sharding both the tokens and the vocabulary is kept on the vocabulary; a sharded
    feature axis ``d`` is gathered (the one gather, and only if the caller shards it).
    """
    leading = tuple(range(x.ndim - 1))
    sharded = [axis for axis in leading if _axes(x, axis)]
    order = (*sharded, *(axis for axis in leading if axis not in sharded))
    if order != leading:
        x = x.transpose(*order, x.ndim - 1)
        labels, mask = labels.transpose(order), mask.transpose(order)
    x, labels, mask = x.reshape(-1, x.shape[-1]), labels.reshape(-1), mask.reshape(-1)
    token_axes, vocab_axes = _axes(x, 0), _axes(w, 1)
    token_axes = tuple(a for a in token_axes if a not in vocab_axes)
    if not (token_axes or vocab_axes or _axes(x, 1) or _axes(w, 0) or _axes(labels, 0)):
        return x, w, labels, mask, (), (), order
    # The mesh the arrays carry, so that no jax.set_mesh context is needed.
    mesh = next(m for m in (jax.typeof(a).sharding.mesh for a in (x, w, labels)) if not m.empty)

    def reshard(array: jax.Array, *spec: Any) -> jax.Array:
        resharded: jax.Array = jax.sharding.reshard(array, jax.NamedSharding(mesh, P(*spec)))
        return resharded

    tokens = token_axes or None
    x, w = reshard(x, tokens, None), reshard(w, None, vocab_axes or None)
    labels, mask = reshard(labels, tokens), reshard(mask, tokens)
    return x, w, labels, mask, token_axes, vocab_axes, order


def restore(losses: jax.Array, token_shape: tuple[int, ...], order: tuple[int, ...]) -> jax.Array:
    """Per-token losses ``[N]`` back in the tokens' own shape and axis order."""
    losses = losses.reshape(tuple(token_shape[axis] for axis in order))
    inverse = tuple(int(i) for i in np.argsort(order))
    return losses.transpose(inverse) if inverse != tuple(range(len(order))) else losses


def _axes(x: jax.Array, axis: int) -> Axes:
    """The explicit mesh axes that shard ``x``'s ``axis`` (none outside explicit sharding)."""
    entry = full_spec(jax.typeof(x).sharding, x.ndim)[axis]
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def on_mesh(
    function: Callable[..., Any], token_axes: Axes, vocab_axes: Axes, returns: tuple[str, ...]
) -> Callable[..., Any]:
    """``function(x, w, *vectors)`` on each device's rows of ``x`` (and of the ``[N]`` vectors)
    and columns of ``w``; its results are laid out as ``returns`` names them: ``"tokens"`` an
    ``[N]`` vector, ``"x"`` and ``"w"`` like ``x`` and ``w``."""
    if not (token_axes or vocab_axes):
        return function
    tokens, vocab = token_axes or None, vocab_axes or None

    def run(x: jax.Array, w: jax.Array, *vectors: jax.Array) -> Any:
        in_specs = (P(tokens, None), P(None, vocab), *(P(tokens) for _ in vectors))
        layouts = {"tokens": P(tokens), "x": in_specs[0], "w": in_specs[1]}
        out_specs = tuple(layouts[kind] for kind in returns)
        mesh = jax.typeof(w).sharding.mesh
        sharded = jax.shard_map(function, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
        return sharded(x, w, *vectors)

    return run
