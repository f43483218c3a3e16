"""Per-example squared gradient norms read off the backward pass of a traced program.

This module finds, in the traced per-example program (a jaxpr), the matrix products one of whose
operands is a parameter, and evaluates the program again with each such product replaced by a
``jax.custom_vjp`` product whose backward rule returns, besides the ordinary cotangent of the
other operand, the example's squared norm of the parameter's gradient (the derivation is in
:func:`parameter_norm_sq`). Every other parameter is fed in once per example, so that its
per-example gradient comes out of the same backward pass. Nothing here forms the gradient of a
product's parameter for all examples at once.

Which parameters are read off the backward pass
-----------------------------------------------
A parameter leaf is *tapped* when the traced program, with every ``jit`` inlined, uses it only
in one of these ways, possibly after relabelling its entries (reshape, transpose, a same-dtype
cast, a size-preserving broadcast):

- once, as an operand of a ``dot_general`` (``lax``'s or jaxmm's) whose other operand is not
  itself a parameter: its gradient is that operand's cotangent, relabelled, of the same norm;
- once, as the table of a row gather (``table[tokens]``, an embedding), rule in
  :mod:`jaxmm._clipping_gather`;
- once each, as such a gather and then as a 2-D product operand (an embedding tied to the output
  layer), the cross term between the two included (:mod:`jaxmm._clipping_gather`);
- once, scanned over by ``lax.scan`` (an ``xs`` input: weights stacked along a leading axis),
  each step's slice used in the body in one of these ways: the steps read disjoint slices, so
  the squared norm is the sum of the steps' (the body is evaluated by :func:`evaluate_scan`).

Any other leaf (a bias, a norm scale, a weight used twice by products, a scan constant read at
every step, a weight read inside ``jax.checkpoint``, ``cond``, ``custom_vjp`` or ``custom_jvp``
bodies) is a *fallback* leaf: its exact per-example gradient is formed (``B`` copies of that
leaf), so cross terms between its uses are right by construction. The choice only changes
cost, never the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax import lax

from ._clipping_gather import is_row_gather
from ._clipping_rules import product_dimensions
from ._compat import scan_counts

_PRODUCTS = ("dot_general", "jaxmm_dot_general")
_CALLS = ("pjit", "jit", "closed_call", "core_call")


def _is_var(atom: Any) -> bool:
    return not hasattr(atom, "val")  # a Literal carries its value; a Var does not


def _read(env: dict[Any, Any], atom: Any) -> Any:
    return atom.val if not _is_var(atom) else env[atom]


def evaluate(jaxpr: Any, consts: Sequence[Any], args: Sequence[Any], taps: Any = None) -> Any:
    """Evaluate ``jaxpr`` as ``jax.core.eval_jaxpr`` does, inlining ``jit`` calls, and computing
    the equation at index ``k`` as ``taps[k](lhs, rhs)`` where ``taps`` has it."""
    env: dict[Any, Any] = {}
    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for index, eqn in enumerate(jaxpr.eqns):
        invals = [_read(env, atom) for atom in eqn.invars]
        if taps is not None and index in taps:
            out = taps[index](*invals)
            outvals = out if eqn.primitive.multiple_results else [out]
        elif eqn.primitive.name == "scan":
            outvals = evaluate_scan(eqn, invals, None)
        elif eqn.primitive.name in _CALLS and "jaxpr" in eqn.params:
            inner = eqn.params["jaxpr"]
            inner_jaxpr = getattr(inner, "jaxpr", inner)
            outvals = evaluate(inner_jaxpr, getattr(inner, "consts", ()), invals)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            # JAX < 0.9 returns (subfuns, params), later JAX the params with the subfuns in them.
            subfuns, params = params if isinstance(params, tuple) else ((), params)
            with eqn.ctx.manager:
                out = eqn.primitive.bind(*subfuns, *invals, **params)
            outvals = out if eqn.primitive.multiple_results else [out]
        for var, value in zip(eqn.outvars, outvals):
            env[var] = value
    return [_read(env, atom) for atom in jaxpr.outvars]


def evaluate_scan(eqn: Any, invals: Sequence[Any], taps: Any) -> list[Any]:
    """A ``scan`` equation as ``lax.scan`` of its body, evaluated by :func:`evaluate` (so that
    ``jit`` calls in the body are inlined and its tapped products, ``taps``, replaced)."""
    params, body = eqn.params, eqn.params["jaxpr"]
    num_consts, num_carry = scan_counts(params, len(invals))
    consts = list(invals[:num_consts])
    init, xs = (
        list(invals[num_consts : num_consts + num_carry]),
        list(invals[num_consts + num_carry :]),
    )

    def step(carry: Any, x: Any) -> tuple[Any, Any]:
        outs = evaluate(body.jaxpr, body.consts, [*consts, *carry, *x], taps)
        return outs[:num_carry], outs[num_carry:]

    carry, ys = lax.scan(
        step, init, xs, length=params["length"], reverse=params["reverse"], unroll=params["unroll"]
    )
    return [*carry, *ys]


def inlined_jaxpr(fun: Any, *avals: Any) -> Any:
    """The closed jaxpr of ``fun`` at ``avals`` with every ``jit`` call inlined (flat)."""
    closed = jax.make_jaxpr(fun)(*avals)
    flat = jax.tree.leaves(avals)
    return jax.make_jaxpr(lambda *args: evaluate(closed.jaxpr, closed.consts, args))(*flat)


def _is_relabel(eqn: Any) -> bool:
    """Whether ``eqn`` moves its one operand's entries without combining or repeating them."""
    name = eqn.primitive.name
    if name in ("reshape", "transpose", "squeeze", "copy", "copy_p", "expand_dims"):
        return True
    source, target = eqn.invars[0].aval, eqn.outvars[0].aval
    if name == "convert_element_type":
        return bool(source.dtype == target.dtype)
    if name == "broadcast_in_dim":
        return bool(math.prod(source.shape) == math.prod(target.shape))
    return False


def find_taps(jaxpr: Any, params: Sequence[Any]) -> tuple[dict[int, Any], dict[int, list[int]]]:
    """The tapped equations, ``{index: ("product", operand) | ("gather",) | ("tied gather",) |
    ("tied product", operand, gather index) | ("scan", {body index: role})}`` (module
    docstring), and ``{parameter: its tapped equations}`` for the tapped parameters (indices into
    ``params``, the jaxpr's parameter input variables)."""
    uses: dict[Any, list[tuple[int, int]]] = {}
    for index, eqn in enumerate(jaxpr.eqns):
        for position, atom in enumerate(eqn.invars):
            if _is_var(atom):
                uses.setdefault(atom, []).append((index, position))
    returned = {atom for atom in jaxpr.outvars if _is_var(atom)}
    param_set = set(params)

    def ends(var: Any, relabelled: int) -> list[tuple[str, int, int, int]]:
        """Where ``var``'s entries end up: (kind, equation, operand, relabel count)."""
        found = [("other", -1, -1, relabelled)] if var in returned else []
        for index, position in uses.get(var, ()):
            eqn = jaxpr.eqns[index]
            if eqn.primitive.name in _PRODUCTS:
                other = eqn.invars[1 - position]
                param_pair = _is_var(other) and _traces_to(jaxpr, other, param_set)
                kind = "other" if param_pair or other is var else "product"
                found.append((kind, index, position, relabelled))
            elif eqn.primitive.name == "scan" and position >= _first_xs(eqn):
                found.append(("scan", index, position, relabelled))
            elif position == 0 and is_row_gather(eqn):
                found.append(("gather", index, position, relabelled))
            elif _is_relabel(eqn):
                found.extend(ends(eqn.outvars[0], relabelled + 1))
            else:
                found.append(("other", index, position, relabelled))
        return found

    plan: dict[int, Any] = {}
    tapped: dict[int, list[int]] = {}
    for number, param in enumerate(params):
        if not np.issubdtype(param.aval.dtype, np.floating):
            continue  # complex parameters: the rules here are written for real ones
        found = ends(param, 0)
        kinds = sorted(kind for kind, *_ in found)
        if kinds == ["product"]:
            plan[found[0][1]] = ("product", found[0][2])
        elif kinds == ["gather"]:
            plan[found[0][1]] = ("gather",)
        elif kinds == ["scan"]:
            _, index, position, _ = found[0]
            body_plan = _scan_taps(jaxpr, jaxpr.eqns[index], position, param_set)
            if body_plan is None:
                continue
            plan.setdefault(index, ("scan", {}))[1].update(body_plan)
        elif kinds == ["gather", "product"] and param.aval.ndim == 2:
            gather = next(end for end in found if end[0] == "gather")
            product = next(end for end in found if end[0] == "product")
            eqn = jaxpr.eqns[product[1]]
            operand = eqn.invars[product[2]].aval
            (contract, _), (batch, _) = product_dimensions(eqn.params)
            if gather[3] or gather[1] > product[1] or operand.ndim != 2 or batch:
                continue  # a relabelled table, the product first, or not a [V, d] operand
            plan[gather[1]] = ("tied gather",)
            plan[product[1]] = ("tied product", product[2], gather[1])
        else:
            continue
        tapped[number] = [end[1] for end in found]
    return plan, tapped


def _first_xs(eqn: Any) -> int:
    """The operand index of a ``scan``'s first scanned-over (``xs``) input."""
    return sum(scan_counts(eqn.params, len(eqn.invars)))


def _scan_taps(jaxpr: Any, eqn: Any, position: int, params: set[Any]) -> dict[int, Any] | None:
    """The tapped products of a ``scan`` body that read the slices of the parameter scanned over
    at operand ``position`` (each step a disjoint slice: the gradient's squared norm is the sum
    over steps), or ``None`` where that parameter is used otherwise in the body."""
    body = eqn.params["jaxpr"].jaxpr
    body_params = [
        body.invars[q]
        for q, atom in enumerate(eqn.invars)
        if _is_var(atom) and _traces_to(jaxpr, atom, params)
    ]
    body_plan, body_tapped = find_taps(body, body_params)
    number = body_params.index(body.invars[position])
    if number not in body_tapped:
        return None
    mine = body_tapped[number]
    if any(body_plan[index][0] not in ("product", "scan") for index in mine):
        return None
    return {index: body_plan[index] for index in mine}


def _traces_to(jaxpr: Any, var: Any, params: set[Any]) -> bool:
    """Whether ``var`` is a parameter, or computed by relabelling one."""
    producers = {out: eqn for eqn in jaxpr.eqns for out in eqn.outvars}
    while var not in params:
        eqn = producers.get(var)
        if eqn is None or not _is_relabel(eqn):
            return False
        var = eqn.invars[0]
    return True
