"""Checks for any hand-written derivative: VJPs against a reference's, compiled structure, and
finite differences in float64.

A test that differentiates ``loss = f(x).sum()`` feeds the backward pass a cotangent of all ones,
under which a rule that is off by a transpose of a square operand, or by a constant factor close
to 1, can still pass a loose tolerance. These checks use random cotangents, compare every output
and every cotangent (value, dtype and shape) at a tolerance set by the dtype, and name the worst
element when they fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# (rtol, atol) by the dtype of the compared arrays. A custom rule and its reference usually run
# the same XLA products in another order, so these bound reassociation, not approximation.
TOLERANCE: dict[np.dtype, tuple[float, float]] = {
    np.dtype(jnp.float16): (1e-2, 1e-2),
    np.dtype(jnp.bfloat16): (2e-2, 2e-2),
    np.dtype(jnp.float32): (1e-5, 1e-5),
    np.dtype(jnp.float64): (1e-12, 1e-12),
    np.dtype(jnp.complex64): (1e-5, 1e-5),
    np.dtype(jnp.complex128): (1e-12, 1e-12),
}


def tolerance(dtype: Any) -> tuple[float, float]:
    """The default ``(rtol, atol)`` for arrays of ``dtype``: exact (0, 0) for integer and boolean
    types and for types not in :data:`TOLERANCE`."""
    return TOLERANCE.get(np.dtype(dtype), (0.0, 0.0))


def random_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> jax.Array:
    """Standard normal values (real and imaginary parts for complex types), small integers, or
    random booleans, of ``shape`` and ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return jnp.asarray(rng.random(shape) < 0.5)
    if jnp.issubdtype(dtype, np.integer):
        return jnp.asarray(rng.integers(-3, 4, size=shape), dtype)
    values = rng.standard_normal(shape)
    if jnp.issubdtype(dtype, np.complexfloating):
        values = values + 1j * rng.standard_normal(shape)
    return jnp.asarray(values, dtype)


def checks_rng(seed: int) -> np.random.Generator:
    """The checks' own random stream for ``seed``: not ``np.random.default_rng(seed)``, whose
    values a test's arguments are often drawn from (a cotangent equal to an argument can make a
    wrong rule's answer coincide with the right one, e.g. ``xᵀx`` is symmetric)."""
    return np.random.default_rng((seed, 0x6A61786D6D))


def cotangent_like(rng: np.random.Generator, x: Any) -> Any:
    """A random cotangent for an array (or ``ShapeDtypeStruct``) ``x``: never all ones, so that a
    transposed axis or a wrong scale cannot hide; float0 zeros for integer and boolean outputs,
    as JAX requires."""
    if not jnp.issubdtype(x.dtype, np.inexact):
        return np.zeros(x.shape, dtype=jax.dtypes.float0)
    return random_array(rng, x.shape, x.dtype)


def assert_allclose(
    actual: Any, expected: Any, what: str = "", rtol: float | None = None, atol: float | None = None
) -> None:
    """Shapes and dtypes equal and values within ``rtol``/``atol`` (the dtype's defaults when
    ``None``); the AssertionError names ``what`` and the worst element."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{what}: dtype {actual.dtype} != expected {expected.dtype}")
    if expected.dtype == jax.dtypes.float0 or expected.size == 0:
        return
    default_rtol, default_atol = tolerance(expected.dtype)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    wide = np.complex128 if jnp.issubdtype(expected.dtype, np.complexfloating) else np.float64
    a, e = actual.astype(wide), expected.astype(wide)
    excess = np.abs(a - e) - (atol + rtol * np.abs(e))
    # NaN where the other is not is a mismatch; NaN against NaN (and equal infinities) are not.
    same_special = (np.isnan(a) & np.isnan(e)) | (a == e)
    bad = ~same_special & ~(excess <= 0)
    if not bad.any():
        return
    scores = np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf)
    worst = np.unravel_index(int(np.argmax(scores)), scores.shape)
    raise AssertionError(
        f"{what}: {int(bad.sum())} of {bad.size} elements differ beyond rtol={rtol:g}, "
        f"atol={atol:g} ({expected.dtype}, shape {expected.shape}); worst at index "
        f"{tuple(int(i) for i in worst)}: actual {actual[worst].item()!r}, expected "
        f"{expected[worst].item()!r}"
    )


def outputs_and_cotangents(
    fn: Callable[..., Any], args: tuple[Any, ...], cotangent: Any
) -> tuple[Any, Any]:
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cotangent)


def check_vjp(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    *args: Any,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    modes: Sequence[str] = ("jit", "eager"),
) -> None:
    """Assert that ``jax.vjp`` of ``fn`` equals ``jax.vjp`` of ``reference`` at ``args``.

    One random cotangent (drawn with ``seed``, of the reference output's shape and dtype) is
    pulled back through both functions. The outputs and every argument's cotangent must agree in
    tree structure, shape, dtype and value, to ``rtol``/``atol`` (by default the tolerance of
    each array's dtype, :data:`TOLERANCE`), both under ``jax.jit`` (one program for both sides)
    and eagerly (``modes`` picks either).

    Args:
      fn: the function under test, e.g. one with a ``jax.custom_vjp`` rule.
      reference: a function computing the same values whose VJP is trusted (JAX's autodiff of
        ``jnp``/``lax`` code).
      *args: the primal arguments (arrays or pytrees of arrays).
      rtol, atol: tolerances for every compared array, instead of the per-dtype defaults.
      seed: seed of the random cotangent.
      modes: ``"jit"`` and/or ``"eager"``.

    Raises:
      AssertionError: naming the output or argument that differs, with the worst element (its
        index, the actual and the expected value) and the mode.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> from jaxmm.testing import check_vjp
      >>> check_vjp(jaxmm.matmul, jnp.matmul, jnp.ones((3, 4)), jnp.ones((4, 2)))
    """
    rng = checks_rng(seed)
    expected_out = jax.eval_shape(reference, *args)
    actual_out = jax.eval_shape(fn, *args)
    for path, a, e in _paired_leaves("output", actual_out, expected_out):
        if (a.shape, a.dtype) != (e.shape, e.dtype):
            raise AssertionError(
                f"{_name('output', path)}: {a.dtype}{list(a.shape)} != expected "
                f"{e.dtype}{list(e.shape)}"
            )
    cotangent = jax.tree.map(lambda x: cotangent_like(rng, x), expected_out)

    def both(args: tuple[Any, ...], cotangent: Any) -> tuple[Any, Any]:
        return (
            outputs_and_cotangents(fn, args, cotangent),
            outputs_and_cotangents(reference, args, cotangent),
        )

    for mode in modes:
        if mode not in ("jit", "eager"):
            raise ValueError(f"check_vjp modes are 'jit' and 'eager', got {mode!r}.")
        # Under jit both sides are one program: one compilation per check.
        actual, expected = (jax.jit(both) if mode == "jit" else both)(args, cotangent)
        _compare(("output", "cotangent"), actual, expected, f" ({mode})", rtol, atol)


def check_jvp(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    *args: Any,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> None:
    """Assert that ``jax.jvp`` of ``fn`` equals ``jax.jvp`` of ``reference`` at ``args``: forward
    mode, as :func:`check_vjp` checks reverse mode.

    One random tangent per argument (drawn with ``seed``; float0 zeros for integer and boolean
    arguments) is pushed forward through both functions, in one jitted program; the outputs and
    the output tangents must agree in tree structure, shape, dtype and value, to ``rtol``/``atol``
    (by default the tolerance of each array's dtype, :data:`TOLERANCE`).

    Raises:
      AssertionError: naming the output (or its tangent) that differs, with its worst element.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> from jaxmm.testing import check_jvp
      >>> check_jvp(jaxmm.matmul, jnp.matmul, jnp.ones((3, 4)), jnp.ones((4, 2)))
    """
    rng = checks_rng(seed)
    tangents = jax.tree.map(lambda x: cotangent_like(rng, jnp.asarray(x)), args)

    def both(args: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
        return jax.jvp(fn, args, tangents), jax.jvp(reference, args, tangents)

    actual, expected = jax.jit(both)(args, tangents)
    _compare(("output", "tangent of output"), actual, expected, "", rtol, atol)


def _compare(
    names: tuple[str, str],
    actual: tuple[Any, Any],
    expected: tuple[Any, Any],
    mode: str,
    rtol: float | None,
    atol: float | None,
) -> None:
    """The two trees of ``actual`` (outputs, then cotangents or tangents) against ``expected``'s:
    the same structure, and every leaf ``assert_allclose``."""
    for what, a_tree, e_tree in zip(names, actual, expected):
        for path, a, e in _paired_leaves(f"{what}{mode}", a_tree, e_tree):
            assert_allclose(a, e, f"{_name(what, path)}{mode}", rtol, atol)


def _paired_leaves(what: str, actual: Any, expected: Any) -> list[tuple[Any, Any, Any]]:
    """``(path, actual leaf, expected leaf)`` of two trees of one structure; AssertionError
    naming ``what`` when the structures differ."""
    a_leaves, a_structure = jax.tree_util.tree_flatten_with_path(actual)
    e_leaves, e_structure = jax.tree_util.tree_flatten_with_path(expected)
    if not _same_tree(a_structure, e_structure):
        raise AssertionError(f"{what}: tree structure {a_structure} != expected {e_structure}")
    return [(path, a, e) for (path, a), (_, e) in zip(a_leaves, e_leaves)]


def _same_tree(a: Any, b: Any) -> bool:
    return bool(a == b)


def _name(what: str, path: tuple[Any, ...]) -> str:
    """``output``, ``output['key']``, ``cotangent of argument 1``, ``... argument 1[0]``."""
    if what != "cotangent":  # an output, or its tangent
        return what + jax.tree_util.keystr(path)
    argument, rest = path[0], path[1:]
    return f"cotangent of argument {argument.idx}" + jax.tree_util.keystr(rest)


def check_finite_differences(
    fn: Callable[..., Any],
    *args: Any,
    step: float = 1e-3,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    seed: int = 0,
) -> None:
    """Assert that ``jax.vjp`` of ``fn`` is the derivative of ``fn``, by central differences in
    float64.

    The arguments (real floating arrays) are cast to float64. With a random cotangent ``u`` of
    the output, the loss ``L(x) = Σ u · fn(x)`` has gradient ``vjp(u)``; each element of each
    cotangent is compared with ``(L(x + h e) - L(x - h e)) / 2h`` for the unit vector ``e`` of
    that element. The error is ``O(h²)`` for a smooth ``fn`` and zero (up to rounding) for one
    linear in each argument, such as any product. It costs two evaluations of ``fn`` per element,
    so use small arguments.

    Raises:
      TypeError: for arguments or outputs that are not real floating arrays (for complex ones
        use :func:`check_vjp` against a trusted reference).
      AssertionError: naming the argument and its worst element.

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> from jaxmm.testing import check_finite_differences
      >>> check_finite_differences(jaxmm.matmul, jnp.ones((3, 4)), jnp.ones((4, 2)))
    """
    with jax.enable_x64(True):
        wide = []
        for position, x in enumerate(args):
            x = jnp.asarray(x)
            if not jnp.issubdtype(x.dtype, np.floating):
                raise TypeError(
                    "check_finite_differences takes real floating arrays, got "
                    f"{x.dtype} at argument {position}."
                )
            wide.append(np.asarray(x, np.float64))
        out = jax.eval_shape(fn, *wide)
        if not all(jnp.issubdtype(leaf.dtype, np.floating) for leaf in jax.tree.leaves(out)):
            raise TypeError("check_finite_differences needs real floating outputs.")
        rng = checks_rng(seed)
        upstream = jax.tree.map(lambda x: rng.standard_normal(x.shape), out)

        def loss(*xs: Any) -> Any:
            ys = jax.tree.leaves(fn(*xs))
            return sum(jnp.sum(u * y) for u, y in zip(jax.tree.leaves(upstream), ys))

        _, vjp = jax.vjp(fn, *(jnp.asarray(x) for x in wide))
        cotangents = vjp(upstream)
        for position, (x, cotangent) in enumerate(zip(wide, cotangents)):
            # Every element moved at once, one per row of a batch: x ± h·e for each unit e.
            units = np.eye(x.size).reshape((x.size, *x.shape)) * step

            def moved_loss(shift: Any, position: int = position, x: Any = x) -> Any:
                xs = list(wide)
                xs[position] = x + shift
                return loss(*xs)

            moved = jax.jit(jax.vmap(moved_loss))
            expected = (np.asarray(moved(units)) - np.asarray(moved(-units))) / (2 * step)
            assert_allclose(
                np.asarray(cotangent),
                expected.reshape(x.shape),
                f"cotangent of argument {position}",
                rtol,
                atol,
            )
