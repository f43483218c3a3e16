"""The nested-vmap block's training step with each mechanism's products, and with ``jnp``'s
(part of ``python -m jaxmm``; the table in docs/mechanisms.md): under ``vmap`` a ``jax.custom_vjp``
runs its backward rule per mapped example before JAX sums, the primitives fold the mapped axes
into the product."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from . import _models_benchmark
from ._models_benchmark import _interleaved_ms, _temp_bytes, per_token_block


@dataclasses.dataclass
class MechanismRow:
    mechanism: str
    ms: float
    ratio: float  # to jnp's
    temp_bytes: int
    dots: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mechanisms(quick: bool = False) -> list[MechanismRow]:
    """Time (median of interleaved repeats), compiled temporaries and dots of ``jit(grad)`` of the
    nested-vmap block, for ``jnp``, ``jaxmm``, ``jaxmm.custom_vjp`` and ``jaxmm.experimental``."""
    import jaxmm

    modules: dict[str, Any] = {"jnp": jnp, "jaxmm": jaxmm, "jaxmm.custom_vjp": jaxmm.custom_vjp}
    try:
        from jaxmm import experimental
    except ImportError:  # the installed JAX has no hijax primitives
        pass
    else:
        modules["jaxmm.experimental"] = experimental
    batch, sequence, width = _models_benchmark.PER_TOKEN_SIZES[quick]
    keys = jax.random.split(jax.random.key(1), 5)
    shapes = [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)]
    weights = tuple(jax.random.normal(k, s) / s[0] ** 0.5 for k, s in zip(keys, shapes))
    tokens = jax.random.normal(keys[4], (batch, sequence, width))
    steps = {
        name: jax.jit(jax.grad(per_token_block(module.matmul, module.einsum)))
        for name, module in modules.items()
    }
    compiled = {name: step.lower(weights, tokens).compile() for name, step in steps.items()}
    times = _interleaved_ms(
        [partial(step, weights, tokens) for step in steps.values()], 5 if quick else 7
    )
    return [
        MechanismRow(
            name,
            ms,
            ms / times[0],
            _temp_bytes(compiled[name]),
            str(compiled[name].as_text()).count(" dot("),
        )
        for name, ms in zip(steps, times)
    ]


def report(quick: bool = False) -> tuple[list[MechanismRow], str]:
    rows = mechanisms(quick)
    batch, sequence, width = _models_benchmark.PER_TOKEN_SIZES[quick]
    lines = [
        f"mechanisms: nested-vmap block ({batch} x {sequence} tokens, width {width}), training "
        "step (jit of grad), median of interleaved repeats",
        f"{'products':<20} {'ms':>9} {'/ jnp':>7} {'temp MiB':>9} {'dots':>5}",
    ]
    for r in rows:
        lines.append(
            f"{r.mechanism:<20} {r.ms:9.2f} {r.ratio:7.2f} {r.temp_bytes / 2**20:9.2f} {r.dots:5d}"
        )
    return rows, "\n".join(lines)
