"""The self-check of ``python -m jaxmm``: jaxmm against ``jax.vjp`` of JAX's own functions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._dot_general import dot_general
from ._matmul import matmul
from ._typing import DotDimensionNumbers

# Per-dtype tolerance on the error relative to the reference's largest magnitude.
TOLERANCE = {
    "float16": 1e-2,
    "bfloat16": 2e-2,
    "float32": 1e-5,
    "float64": 1e-12,
    "complex64": 1e-5,
}


@dataclass(frozen=True)
class Case:
    name: str
    ours: Callable[..., Any]
    reference: Callable[..., Any]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str
    transform: str  # "vjp", "jit", "vmap", "grad" or "hessian"


def _dg(
    dimension_numbers: DotDimensionNumbers,
) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
    return (
        lambda lhs, rhs: dot_general(lhs, rhs, dimension_numbers),
        lambda lhs, rhs: lax.dot_general(lhs, rhs, dimension_numbers),
    )


def cases() -> Iterator[Case]:
    shapes = {
        "2-D  (3,4)@(4,5)": ((3, 4), (4, 5)),
        "1-D  (4,)@(4,5)": ((4,), (4, 5)),
        "1-D  (3,4)@(4,)": ((3, 4), (4,)),
        "batched  (2,3,4)@(2,4,5)": ((2, 3, 4), (2, 4, 5)),
        "broadcast  (1,3,4,5)@(2,1,5,6)": ((1, 3, 4, 5), (2, 1, 5, 6)),
    }
    for dtype in TOLERANCE:
        for name, shape in shapes.items():
            yield Case(f"matmul {name}", matmul, jnp.matmul, shape, dtype, "vjp")
    general = {
        "dot_general batch mid, 2 contracting": (
            (3, 2, 4, 5),
            (5, 4, 2, 6),
            (((2, 3), (1, 0)), ((1,), (2,))),
        ),
        "dot_general outer product": ((3,), (4,), (((), ()), ((), ()))),
        "dot_general full contraction": ((3, 4), (3, 4), (((0, 1), (0, 1)), ((), ()))),
    }
    for dtype in ("float32", "float64", "bfloat16"):
        for name, (lhs, rhs, dn) in general.items():
            yield Case(name, *_dg(dn), (lhs, rhs), dtype, "vjp")
    for transform in ("jit", "vmap", "grad", "hessian"):
        yield Case(
            f"matmul (2,3,4)@(4,5) under {transform}",
            matmul,
            jnp.matmul,
            ((2, 3, 4), (4, 5)),
            "float32",
            transform,
        )


def _transformed(fn: Callable[..., Any], transform: str) -> Callable[..., Any]:
    loss = lambda a, b: jnp.sum(jnp.sin(fn(a, b)))  # noqa: E731
    if transform in ("vjp", "jit"):
        return fn
    if transform == "vmap":
        return jax.vmap(fn, in_axes=(0, None))
    if transform == "grad":
        return jax.grad(loss, argnums=(0, 1))
    return jax.hessian(loss, argnums=(0, 1))


def run_case(case: Case, seed: int = 0) -> tuple[float, float]:
    """(error, tolerance): the largest difference to the reference, over the output and the
    cotangents, relative to the reference's largest magnitude."""
    context = jax.enable_x64(True) if case.dtype == "float64" else contextlib.nullcontext()
    with context:
        rng = np.random.default_rng(seed)
        dtype = jnp.dtype(case.dtype)

        def draw(shape: tuple[int, ...]) -> jax.Array:
            values = rng.standard_normal(shape)
            if jnp.issubdtype(dtype, np.complexfloating):
                values = values + 1j * rng.standard_normal(shape)
            return jnp.asarray(values, dtype)

        operands = [draw(shape) for shape in case.shapes]
        ours, reference = (_transformed(f, case.transform) for f in (case.ours, case.reference))
        if case.transform in ("vjp", "jit"):
            expected, expected_vjp = jax.vjp(reference, *operands)
            cotangent = draw(expected.shape)
            run = jax.jit(ours) if case.transform == "jit" else ours
            actual, actual_vjp = jax.vjp(run, *operands)
            pairs = [(actual, expected), *zip(actual_vjp(cotangent), expected_vjp(cotangent))]
        else:
            pairs = list(
                zip(jax.tree.leaves(ours(*operands)), jax.tree.leaves(reference(*operands)))
            )
        error = 0.0
        for actual, expected in pairs:
            assert actual.shape == expected.shape and actual.dtype == expected.dtype
            a, e = np.asarray(actual, np.complex128), np.asarray(expected, np.complex128)
            scale = max(float(np.max(np.abs(e), initial=0.0)), 1.0)
            error = max(error, float(np.max(np.abs(a - e), initial=0.0)) / scale)
    return error, TOLERANCE[case.dtype]
