"""Checks of a compiled forward+backward program against the reference's: how many products, how
many XLA FLOPs, which collectives (part of :mod:`jaxmm.testing`)."""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.ad_checkpoint import print_saved_residuals

from ._testing import checks_rng, cotangent_like, outputs_and_cotangents

_COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)


def structure(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """What the compiled program of ``fn``'s VJP (forward and backward, one random cotangent) is
    made of: its number of dot instructions, its XLA FLOPs, and its number of each collective."""
    out = jax.eval_shape(fn, *args)
    rng = checks_rng(0)
    cotangent = jax.tree.map(lambda x: cotangent_like(rng, x), out)
    compiled = (
        jax.jit(outputs_and_cotangents, static_argnums=0).lower(fn, args, cotangent).compile()
    )
    text = compiled.as_text() or ""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    figures: dict[str, Any] = {
        "dots": len(re.findall(r"\bdot\(", text)),
        "flops": (cost or {}).get("flops"),
    }
    for name in _COLLECTIVES:
        figures[name] = len(re.findall(rf"\b{name}(?:-start)?\(", text))
    return figures


def check_structure(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    *args: Any,
    compare: Sequence[str] = ("dots", "flops", "collectives"),
) -> dict[str, Any]:
    """Assert that the compiled VJP program of ``fn`` has the reference's dot count, XLA FLOPs
    and collectives, and return ``fn``'s figures (see :func:`structure`).

    A custom rule that computes a product it need not (or one twice), that materialises a
    broadcast, or that gathers a sharded operand shows up here even when its values are right.
    ``compare`` picks the figures compared: XLA's FLOPs count elementwise work too, so a function
    that does more than its reference by design (quantizing, say) compares ``("dots",
    "collectives")`` only.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> from jaxmm.testing import check_structure
      >>> check_structure(jaxmm.matmul, jnp.matmul, jnp.ones((8, 4)), jnp.ones((4, 2)))["dots"]
      3
    """
    unknown = set(compare) - {"dots", "flops", "collectives"}
    if unknown:
        raise ValueError(f"check_structure compares dots, flops and collectives, got {unknown}.")
    ours, theirs = structure(fn, *args), structure(reference, *args)
    keys = [k for k in theirs if (k if k in ("dots", "flops") else "collectives") in compare]
    differences = [
        f"{key}: {ours[key]} (expected {theirs[key]})" for key in keys if ours[key] != theirs[key]
    ]
    if differences:
        raise AssertionError(
            "compiled VJP program differs from the reference's: " + "; ".join(differences)
        )
    return ours


def saved_residuals(fn: Callable[..., Any], *args: Any) -> list[tuple[str, str]]:
    """What ``fn``'s backward pass keeps, as JAX's public
    ``jax.ad_checkpoint.print_saved_residuals`` reports it: one ``(type, origin)`` per saved
    array, e.g. ``("f32[4,8,8]", "from the argument ws")``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(fn, *args)
    rows = []
    for line in out.getvalue().splitlines():
        if line.strip():
            kind, _, origin = line.strip().partition(" ")
            rows.append((kind, origin))
    return rows


def type_bytes(kind: str) -> int:
    """The bytes of an array of a short type such as ``"f32[4,8]"`` or ``"f8_e4m3fn[3]"``."""
    match = re.fullmatch(r"([a-z]+)(\d*)\w*\[([\d,]*)\]", kind)
    if match is None:
        raise ValueError(f"not an array type: {kind!r}")
    name, bits, dims = match.groups()
    itemsize = 1 if name == "bool" else int(bits) // 8
    return itemsize * math.prod(int(d) for d in dims.split(",") if d)
