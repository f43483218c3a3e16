"""The self-check of ``python -m jaxmm``: every public function against JAX's autodiff of the
``jnp`` / ``lax`` code it replaces, through :mod:`jaxmm.testing` (one comparison, one tolerance
table).

Each function is checked in reverse mode (``check_vjp``, jitted and eagerly) in several dtypes,
under ``vmap`` and to second order (the VJP of its gradient), in forward mode (``check_jvp``: the
default function and, where JAX has it, its :mod:`jaxmm.experimental` namesake), its
:mod:`jaxmm.custom_vjp` namesake in reverse mode, and with its operands saved narrowed
(``residual_dtype``), where the tolerance is the residual dtype's rounding instead of the
result's. :func:`table` lays the results out as one row per function, one column per check.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxmm

from ._testing import check_jvp, check_vjp, random_array

DN = (((2, 3), (1, 0)), ((1,), (2,)))  # dot_general: a batch axis mid-array, two contracting
LABELS = np.array([3, 0, 5, 1])  # linear_cross_entropy: one label per token
GROUP_SIZES = np.array([3, 0, 2])  # ragged_dot: an empty group, and rows 5 and 6 in none
RAGGED_DN = lax.RaggedDotDimensionNumbers((([1], [1]), ([], [])), [0], [0])


def _grouped_reference(x: jax.Array, w: jax.Array) -> jax.Array:
    """``ragged_dot`` as one dense product per group, each masked to its group's rows (lax's
    own ``ragged_dot`` batches only with its group sizes mapped too)."""
    ends = np.cumsum(GROUP_SIZES)
    rows = np.arange(x.shape[0])
    mask = (ends[:, None] - GROUP_SIZES[:, None] <= rows) & (rows < ends[:, None])
    return jnp.einsum("mk,gkn,gm->mn", x, w, jnp.asarray(mask, x.dtype))


def _naive_cross_entropy(x: jax.Array, w: jax.Array) -> jax.Array:
    logits = x @ w
    label_logits = jnp.take_along_axis(logits, jnp.asarray(LABELS)[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - label_logits)


# name: (jaxmm's call given the module and options, the reference, operand shapes). The module
# is jaxmm or jaxmm.experimental, which offer the same functions.
FUNCTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any], tuple[tuple[int, ...], ...]]] = {
    "matmul": (lambda m, a, b, **o: m.matmul(a, b, **o), jnp.matmul, ((2, 3, 4), (4, 5))),
    "dot_general": (
        lambda m, a, b, **o: m.dot_general(a, b, DN, **o),
        lambda a, b: lax.dot_general(a, b, DN),
        ((3, 2, 4, 5), (5, 4, 2, 6)),
    ),
    "einsum": (
        lambda m, a, b, c, **o: m.einsum("bij,jk,kl->bil", a, b, c, **o),
        lambda a, b, c: jnp.einsum("bij,jk,kl->bil", a, b, c),
        ((2, 3, 4), (4, 5), (5, 2)),
    ),
    "dot": (lambda m, a, b, **o: m.dot(a, b, **o), jnp.dot, ((2, 3, 4), (5, 4, 6))),
    "tensordot": (
        lambda m, a, b, **o: m.tensordot(a, b, axes=((1, 2), (1, 0)), **o),
        lambda a, b: jnp.tensordot(a, b, axes=((1, 2), (1, 0))),
        ((2, 3, 4), (4, 3, 5)),
    ),
    "vdot": (lambda m, a, b, **o: m.vdot(a, b, **o), jnp.vdot, ((3, 4), (3, 4))),
    "inner": (lambda m, a, b, **o: m.inner(a, b, **o), jnp.inner, ((2, 4), (3, 4))),
    "outer": (lambda m, a, b, **o: m.outer(a, b, **o), jnp.outer, ((3,), (4,))),
    "matvec": (lambda m, a, b, **o: m.matvec(a, b, **o), jnp.matvec, ((2, 3, 4), (4,))),
    "vecmat": (lambda m, a, b, **o: m.vecmat(a, b, **o), jnp.vecmat, ((4,), (2, 4, 3))),
    "vecdot": (lambda m, a, b, **o: m.vecdot(a, b, **o), jnp.vecdot, ((2, 4), (3, 1, 4))),
    "linear_cross_entropy": (
        lambda m, x, w, **o: m.linear_cross_entropy(x, w, jnp.asarray(LABELS), **o),
        _naive_cross_entropy,
        ((4, 3), (3, 6)),
    ),
    "ragged_dot": (
        lambda m, x, w, **o: m.ragged_dot(x, w, jnp.asarray(GROUP_SIZES), **o),
        _grouped_reference,
        ((7, 3), (3, 3, 4)),
    ),
    "ragged_dot_general": (
        lambda m, x, w, **o: m.ragged_dot_general(x, w, jnp.asarray(GROUP_SIZES), RAGGED_DN, **o),
        _grouped_reference,
        ((7, 3), (3, 3, 4)),
    ),
}
# More of matmul's layouts: vectors, a batch on both sides, broadcasting.
MATMUL_SHAPES = (((4,), (4, 5)), ((3, 4), (4,)), ((2, 3, 4), (2, 4, 5)), ((1, 3, 4), (2, 1, 4, 5)))
RAGGED = ("ragged_dot", "ragged_dot_general")  # products without residual_dtype or experimental
PRODUCTS = tuple(name for name in FUNCTIONS if name not in ("linear_cross_entropy", *RAGGED))


@dataclass(frozen=True)
class Case:
    """One check: ``ours`` against ``reference`` (each taking the operands), in ``dtype``, under
    ``transform``: ``"vjp"``, ``"vmap"``, ``"grad"`` (the VJP of the gradient), ``"jvp"``, or
    ``"residual <dtype>"`` (the VJP, operands saved in that dtype)."""

    name: str
    ours: Callable[..., Any]
    reference: Callable[..., Any]
    shapes: tuple[tuple[int, ...], ...]
    dtype: str
    transform: str

    @property
    def label(self) -> str:
        shapes = " ".join(str(s).replace(" ", "") for s in self.shapes)
        return f"{self.name} {shapes} {self.dtype} {self.transform}"

    @property
    def function(self) -> str:
        """The row of :func:`table`: the jaxmm function checked."""
        return self.name.rpartition(".")[2]

    @property
    def column(self) -> str:
        """The column of :func:`table`: what the case checks of its function."""
        if self.name.startswith(("experimental.", "custom_vjp.")):
            return self.name.partition(".")[0]
        if self.transform.startswith("residual"):
            return "residual"
        if self.transform == "vjp":
            return {"float32": "vjp", "float64": "f64", "bfloat16": "bf16"}.get(
                self.dtype, "complex"
            )
        return {"grad": "grad²"}.get(self.transform, self.transform)


COLUMNS: tuple[str, ...] = ("vjp", "f64", "bf16", "complex", "vmap", "grad²", "jvp", "residual")
COLUMNS += ("custom_vjp", "experimental")


def table(results: list[tuple[Case, str | None]]) -> str:
    """One row per function, one column per check: ``PASS`` when every case of the cell passed,
    ``FAIL`` when one did not, blank where the function has no such check (``complex``: vdot
    and dot_general; ``experimental``: forward mode of :mod:`jaxmm.experimental`, where the
    installed JAX has it)."""
    cells: dict[tuple[str, str], bool] = {}
    for case, problem in results:
        key = (case.function, case.column)
        cells[key] = cells.get(key, True) and problem is None
    functions = list(dict.fromkeys(case.function for case, _ in results))
    width = max(len(name) for name in functions)
    lines = [f"{'':<{width}}  " + " ".join(f"{c:>{max(len(c), 4)}}" for c in COLUMNS)]
    for name in functions:
        marks = []
        for column in COLUMNS:
            passed = cells.get((name, column))
            mark = "" if passed is None else "PASS" if passed else "FAIL"
            marks.append(f"{mark:>{max(len(column), 4)}}")
        lines.append((f"{name:<{width}}  " + " ".join(marks)).rstrip())
    return "\n".join(lines)


def _experimental() -> Any:
    try:
        from jaxmm import experimental
    except ImportError:  # the installed JAX has no hijax primitives
        return None
    return experimental


def cases() -> Iterator[Case]:
    experimental = _experimental()
    for name, (call, reference, shapes) in FUNCTIONS.items():
        ours = functools.partial(call, jaxmm)
        dtypes = ("float32", "float64") + (("bfloat16",) if name in PRODUCTS + RAGGED else ())
        for dtype in dtypes:
            yield Case(name, ours, reference, shapes, dtype, "vjp")
        if name in ("vdot", "dot_general"):
            yield Case(name, ours, reference, shapes, "complex64", "vjp")
        yield Case(name, ours, reference, shapes, "float32", "vmap")
        yield Case(name, ours, reference, shapes, "float32", "grad")
        if name in RAGGED:
            yield Case(name, ours, reference, shapes, "float32", "jvp")
        if name not in PRODUCTS:
            continue
        yield Case(name, ours, reference, shapes, "float32", "jvp")
        if experimental is not None:
            ours_exp = functools.partial(call, experimental)
            yield Case(f"experimental.{name}", ours_exp, reference, shapes, "float32", "jvp")
        ours_custom = functools.partial(call, jaxmm.custom_vjp)
        yield Case(f"custom_vjp.{name}", ours_custom, reference, shapes, "float32", "vjp")
        residual_dtypes = ("bfloat16", "float16", "float8_e4m3fn", "float8_e5m2")
        for narrow in residual_dtypes if name == "matmul" else ("bfloat16",):
            narrowed = functools.partial(call, jaxmm, residual_dtype=jnp.dtype(narrow))
            yield Case(name, narrowed, reference, shapes, "float32", f"residual {narrow}")
    for shapes in MATMUL_SHAPES:
        yield Case("matmul", jaxmm.matmul, jnp.matmul, shapes, "float32", "vjp")


def _transformed(fn: Callable[..., Any], transform: str) -> Callable[..., Any]:
    """``fn`` under the case's transformation (the same for ours and the reference)."""
    if transform == "vmap":  # mapped over a new leading axis of the first operand
        return lambda first, *rest: jax.vmap(fn, in_axes=(0, *(None for _ in rest)))(first, *rest)
    if transform == "grad":

        def loss(*operands: jax.Array) -> jax.Array:
            return jnp.sum(jnp.sin(fn(*operands)))

        return lambda *operands: jax.grad(loss, argnums=tuple(range(len(operands))))(*operands)
    return fn


def run_case(case: Case, seed: int = 0) -> str | None:
    """Run one check: ``None`` when it passes, else what differs (the AssertionError's text)."""
    context = jax.enable_x64(True) if case.dtype == "float64" else contextlib.nullcontext()
    with context:
        rng = np.random.default_rng(seed)
        shapes = list(case.shapes)
        if case.transform == "vmap":
            shapes[0] = (2, *shapes[0])
        operands = [random_array(rng, shape, case.dtype) for shape in shapes]
        ours, reference = (_transformed(f, case.transform) for f in (case.ours, case.reference))
        rtol = atol = None  # the result dtype's (jaxmm.testing.TOLERANCE)
        if case.transform.startswith("residual"):
            # The gradient reads operands rounded to the residual dtype: a few of its units
            # of roundoff per entry (docs/residuals.md), far below what a wrong rule gives.
            unit = float(jnp.finfo(case.transform.split()[1]).eps) / 2
            rtol = atol = 8 * unit
        try:
            check = check_jvp if case.transform == "jvp" else check_vjp
            check(ours, reference, *operands, rtol=rtol, atol=atol, seed=seed)
        except AssertionError as error:
            return str(error)
    return None
