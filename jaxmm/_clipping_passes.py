"""The two passes of :func:`jaxmm.clipped_grad`: the per-example norms read off one backward
pass (:mod:`jaxmm._clipping_norms`), then the weighted sum ``Σ_b c_b ∇ℓ_b`` by one more; and the
branch that jax-privacy's semantics need when some example's gradient is not finite."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._clipping_gather import GatherTap, tapped_gather
from ._clipping_norms import evaluate, evaluate_scan, find_taps, inlined_jaxpr
from ._clipping_rules import Tap


def clip_factors(
    norms: jax.Array, clip: Any, rescale_to_unit_norm: bool, padding: jax.Array
) -> jax.Array:
    """``c_b``, as jax-privacy's ``clip_pytree`` computes one example's scale: ``min(1, C/‖g‖)``,
    divided by ``C`` when rescaling (``1/‖g‖`` for ``C = 0``), and 0 where that is not finite (a
    zero or non-finite norm) or the example is padding."""
    clip = jnp.maximum(clip, 0.0)
    scale = jnp.minimum(1.0, clip / norms)
    if rescale_to_unit_norm:
        scale = jnp.where(clip > 0, scale / clip, 1 / norms)
    scale = jnp.nan_to_num(scale, nan=0.0, posinf=0.0)
    return jnp.where(padding, jnp.zeros_like(scale), scale)


def _global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass
class Traced:
    """One call's per-example program: flat parameters ``theta`` (``theta_def``), batched leaves
    ``xs`` (leading axis ``B``), ``loss(theta, x)`` of one example, its inlined jaxpr ``closed``,
    the tapped products ``taps`` and the indices ``tapped`` of the parameters they read."""

    theta: list[jax.Array]
    theta_def: Any
    xs: list[Any]
    loss: Callable[[Any, Any], tuple[jax.Array, list[Any]]]
    aux_def: list[Any]
    closed: Any
    taps: dict[int, Any]
    tapped: dict[int, list[int]]


def trace(fun: Callable[..., Any], o: Any, args: Any, kwargs: Any, batch_size: int) -> Traced:
    """Trace ``fun`` for one example of ``args`` and find its tapped products."""
    args = list(args)
    if o.keep_batch_dim:
        for i in o.batch_argnums:
            args[i] = jax.tree.map(lambda x: jnp.expand_dims(x, 1), args[i])
    batched = list(o.batch_argnums)
    if o.prng_argnum is not None:
        args[o.prng_argnum] = jax.tree.map(
            lambda key: jax.random.split(key, batch_size), args[o.prng_argnum]
        )
        batched.append(o.prng_argnum)
    others = [i for i in range(len(args)) if i not in o.argnums and i not in batched]
    theta, theta_def = jax.tree.flatten(tuple(args[i] for i in o.argnums))
    theta = [jnp.asarray(t) for t in theta]
    xs, xs_def = jax.tree.flatten([args[i] for i in batched])
    consts, consts_def = jax.tree.flatten([args[i] for i in others])
    aux_def: list[Any] = []

    def loss(theta: Any, x: Any) -> tuple[jax.Array, list[Any]]:
        """One example's loss and aux leaves, of flat parameters and example leaves."""
        call = list(args)
        groups = (
            (o.argnums, jax.tree.unflatten(theta_def, theta)),
            (batched, jax.tree.unflatten(xs_def, x)),
            (others, jax.tree.unflatten(consts_def, consts)),
        )
        for indices, values in groups:
            for i, value in zip(indices, values):
                call[i] = value
        out = fun(*call, **kwargs)
        value, aux = out if o.has_aux else (out, ())
        aux_leaves, tree = jax.tree.flatten(aux)
        aux_def[:] = [tree]
        return value, aux_leaves

    example = [jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)) for x in xs]
    closed = inlined_jaxpr(lambda t, x: _flat(loss(t, x)), theta, example)
    value_type = closed.out_avals[0]
    if value_type.shape != () or not jnp.issubdtype(value_type.dtype, np.inexact):
        raise TypeError(
            "Gradient only defined for scalar-output functions of real or complex type. "
            f"Output had shape {value_type.shape} and dtype {value_type.dtype}."
        )
    taps, tapped = find_taps(closed.jaxpr, closed.jaxpr.invars[: len(theta)])
    return Traced(theta, theta_def, xs, loss, aux_def, closed, taps, tapped)


def clipped_sum(
    fun: Callable[..., Any], o: Any, args: tuple[Any, ...], kwargs: Any, padding: jax.Array
) -> tuple[Any, jax.Array, jax.Array, Any]:
    """``(Σ_b c_b g_b, values, norms, aux)`` for ``fun``'s call on ``args`` (``o``: the options of
    :func:`jaxmm.clipped_grad`)."""
    batch_size = padding.shape[0]
    traced = trace(fun, o, args, kwargs, batch_size)
    theta, xs, loss, closed, taps = (
        traced.theta,
        traced.xs,
        traced.loss,
        traced.closed,
        traced.taps,
    )
    num_theta = len(theta)
    tapped = traced.tapped
    # Norms are real: float32 at least, float64 for float64 / complex128 parameters.
    norm_dtype = jnp.finfo(jnp.result_type(jnp.float32, *theta)).dtype
    fallback = [k for k in range(num_theta) if k not in tapped]

    def vmap(f: Callable[..., Any], axes: Any) -> Callable[..., Any]:
        return jax.vmap(f, in_axes=axes, spmd_axis_name=o.spmd_axis_name)

    def tapped_loss(fallback_theta: Any, probe: jax.Array, x: Any) -> Any:
        values = list(theta)
        for k, value in zip(fallback, fallback_theta):
            values[k] = value
        rules = _rules(closed.jaxpr, taps, probe, {})
        out = evaluate(closed.jaxpr, closed.consts, [*values, *x], rules)
        return out[0], out[1:]

    def total(probes: jax.Array, fallback_theta: Any) -> Any:
        values, aux = vmap(tapped_loss, (0, 0, 0))(fallback_theta, probes, xs)
        return jnp.sum(values), (values, aux)

    copies = [jnp.broadcast_to(theta[k], (batch_size, *np.shape(theta[k]))) for k in fallback]
    probes = jnp.zeros(batch_size, norm_dtype)
    (norms_sq, fallback_grads), (values, aux) = jax.grad(total, (0, 1), has_aux=True)(
        probes, copies
    )
    for grad in fallback_grads:
        norms_sq = norms_sq + jnp.sum(jnp.abs(grad.reshape(batch_size, -1)) ** 2, axis=1)
    grad_dtype = jnp.finfo(jnp.result_type(*theta)).dtype  # of the norms, as jax-privacy's
    norms = jnp.sqrt(norms_sq)

    def weighted(_: Any) -> tuple[Any, jax.Array]:
        factors = lax.stop_gradient(clip_factors(norms, o.clip, o.rescale, padding))

        def weighted_loss(theta: Any) -> jax.Array:
            values = vmap(lambda t, x: loss(t, x)[0], (None, 0))(theta, xs)
            return jnp.sum(factors.astype(values.dtype) * values)

        grads = jax.grad(weighted_loss)(theta)
        return [g.astype(o.dtype or g.dtype) for g in grads], norms.astype(grad_dtype)

    def one_by_one(_: Any) -> tuple[Any, jax.Array]:
        # jax-privacy's own arithmetic, one example at a time: nan_to_num, norm, scale.
        def step(total: Any, example: Any) -> tuple[Any, jax.Array]:
            x, is_padding = example
            grad = jax.grad(lambda t: loss(t, x)[0])(theta)
            raw_norm = _global_norm(grad)
            if o.dtype is not None:
                grad = [g.astype(o.dtype) for g in grad]
            if o.nan_safe:
                grad = [jnp.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grad]
            factor = clip_factors(_global_norm(grad), o.clip, o.rescale, is_padding)
            total = [
                t + jnp.where(is_padding, jnp.zeros_like(g), factor.astype(g.dtype) * g)
                for t, g in zip(total, grad)
            ]
            return total, raw_norm.astype(grad_dtype)

        zeros = [jnp.zeros_like(t, dtype=o.dtype or t.dtype) for t in theta]
        return lax.scan(step, zeros, (xs, padding))

    # The weighted pass in a branch (taken whenever every norm is finite) also keeps the compiler
    # from running it beside the norm pass: measured, the step's temporaries are 1.2x a
    # non-private step's this way, 1.9x without the branch (docs/clipping.md).
    grads, norms_out = lax.cond(jnp.all(jnp.isfinite(norms_sq)), weighted, one_by_one, None)
    grads_tree = jax.tree.unflatten(traced.theta_def, grads)
    if o.single:
        grads_tree = grads_tree[0]
    return grads_tree, values, norms_out, jax.tree.unflatten(traced.aux_def[0], aux)


def _rules(jaxpr: Any, plan: dict[int, Any], probe: jax.Array, links: dict[int, Any]) -> Any:
    """``{equation index: what computes it}`` for :func:`evaluate`, of the tapped equations in
    ``plan`` (:func:`jaxmm._clipping_norms.find_taps`), all reporting to ``probe``; ``links``
    holds a tied gather's (channel, indices) for its product."""
    rules: dict[int, Any] = {}
    for index, role in plan.items():
        eqn = jaxpr.eqns[index]
        params = dict(eqn.params)
        if role[0] == "scan":
            body_rules = _rules(params["jaxpr"].jaxpr, role[1], probe, links)
            rules[index] = partial(_scan, eqn, body_rules)
        elif role[0] in ("gather", "tied gather"):
            gather = GatherTap(eqn.primitive, params, role[0] == "tied gather")
            rules[index] = partial(_gather, gather, probe, links, index)
        else:
            tied = None
            if role[0] == "tied product":
                tied_eqn = jaxpr.eqns[role[2]]
                tied = GatherTap(tied_eqn.primitive, dict(tied_eqn.params), True)
            tap = Tap(eqn.primitive, params, role[1], tied)
            link = role[2] if tied is not None else None
            rules[index] = partial(_product, tap, probe, links, link)
    return rules


def _scan(eqn: Any, rules: Any, *invals: Any) -> list[Any]:
    return evaluate_scan(eqn, invals, rules)


def _gather(
    tap: GatherTap, probe: jax.Array, links: dict[int, Any], index: int, table: Any, indices: Any
) -> jax.Array:
    rows, channel = tapped_gather(table, indices, probe, tap)
    links[index] = (channel, indices)
    return rows


def _product(
    tap: Tap, probe: jax.Array, links: dict[int, Any], link: int | None, lhs: Any, rhs: Any
) -> jax.Array:
    out: jax.Array = tap(lhs, rhs, probe, None if link is None else links[link])
    return out


def _flat(out: tuple[jax.Array, list[Any]]) -> list[Any]:
    return [out[0], *out[1]]
