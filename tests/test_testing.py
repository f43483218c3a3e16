"""jaxmm.testing catches what it must (a wrong scale, a transpose, a dtype, an extra product), names
the worst element, and passes what is right; docs/testing.md runs as written."""

import contextlib
import io
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from reference import random_array

import jaxmm
from jaxmm.testing import (
    TOLERANCE,
    assert_allclose,
    check_finite_differences,
    check_jvp,
    check_structure,
    check_vjp,
)

DOC = Path(__file__).parents[1] / "docs" / "testing.md"


def test_docs_testing_md_runs_and_prints_what_it_says():
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for number, block in enumerate(blocks):
            exec(compile(block, f"docs/testing.md (block {number})", "exec"), namespace)
    (shown,) = re.findall(r"which prints\n\n```\n(.*?)```", text, re.S)
    for line in shown.splitlines():
        # Everything up to the worst element's values, which are the platform's rounding.
        assert line.split(": actual")[0] in printed.getvalue()
    assert "cotangent of argument 0: 128 of 128 elements differ" in printed.getvalue()


def _matmul_with_backward(backward):
    @jax.custom_vjp
    def matmul(x, w):
        return x @ w

    matmul.defvjp(lambda x, w: (x @ w, (x, w)), backward)
    return matmul


RIGHT = lambda saved, dy: (dy @ saved[1].T, saved[0].T @ dy)


def _operands(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return random_array(rng, (4, 6), dtype), random_array(rng, (6, 6), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.complex64], ids=str)
def test_check_vjp_passes_a_right_rule(dtype):
    check_vjp(_matmul_with_backward(RIGHT), jnp.matmul, *_operands(dtype))


@pytest.mark.parametrize(
    "backward, fragment",
    [
        (lambda s, dy: (1.001 * (dy @ s[1].T), s[0].T @ dy), "cotangent of argument 0"),
        (lambda s, dy: (dy @ s[1].T, (s[0].T @ dy).T), "cotangent of argument 1"),
        (lambda s, dy: (dy @ s[1], s[0].T @ dy), "cotangent of argument 0"),  # W not transposed
        (lambda s, dy: (dy @ s[1].T, (s[0].T @ dy).astype(jnp.bfloat16)), "dtype bfloat16"),
    ],
    ids=["scale 1.001", "dW transposed", "W not transposed", "wrong dtype"],
)
def test_check_vjp_catches_a_wrong_rule(backward, fragment):
    with pytest.raises(AssertionError, match=fragment):
        check_vjp(_matmul_with_backward(backward), jnp.matmul, *_operands())


def test_check_vjp_names_the_worst_element():
    def bump(saved, dy):
        dx, dw = RIGHT(saved, dy)
        return dx.at[2, 3].add(0.5).at[1, 1].add(0.01), dw

    x, w = _operands()
    with pytest.raises(AssertionError) as error:
        check_vjp(_matmul_with_backward(bump), jnp.matmul, x, w, modes=("eager",))
    message = str(error.value)
    assert "cotangent of argument 0 (eager)" in message
    assert "2 of 24 elements" in message
    assert "worst at index (2, 3)" in message


def test_check_vjp_compares_outputs_and_trees():
    x, w = _operands()
    with pytest.raises(AssertionError, match="output"):
        check_vjp(lambda x, w: 1.001 * (x @ w), jnp.matmul, x, w)
    with pytest.raises(AssertionError, match=r"output: float16\[4, 6\] != expected float32"):
        check_vjp(lambda x, w: (x @ w).astype(jnp.float16), jnp.matmul, x, w)
    with pytest.raises(AssertionError, match="tree structure"):
        check_vjp(lambda x, w: [x @ w], lambda x, w: (x @ w,), x, w)
    # Pytrees of arguments and outputs, named by their paths.
    fn = lambda p: {"y": jaxmm.matmul(p["x"], p["w"])}
    ref = lambda p: {"y": jnp.matmul(p["x"], p["w"])}
    check_vjp(fn, ref, {"x": x, "w": w})
    with pytest.raises(AssertionError, match=r"cotangent of argument 0\['x'\]"):
        wrong = _matmul_with_backward(lambda s, dy: (1.001 * (dy @ s[1].T), s[0].T @ dy))
        check_vjp(lambda p: {"y": wrong(p["x"], p["w"])}, ref, {"x": x, "w": w})


def test_check_vjp_tolerances_can_be_set():
    x, w = _operands()
    slightly_off = _matmul_with_backward(lambda s, dy: (1.001 * (dy @ s[1].T), s[0].T @ dy))
    check_vjp(slightly_off, jnp.matmul, x, w, rtol=1e-2, atol=1e-2)
    with pytest.raises(AssertionError, match="rtol=0.0001, atol=0"):
        check_vjp(slightly_off, jnp.matmul, x, w, rtol=1e-4, atol=0)


def test_check_vjp_random_cotangent_catches_what_ones_miss():
    """dW summed over the wrong axis looks right under an all-ones cotangent."""

    def wrong(saved, dy):
        x, w = saved
        return dy @ w.T, x.T @ jnp.broadcast_to(dy.sum(0, keepdims=True) / dy.shape[0], dy.shape)

    fn = _matmul_with_backward(wrong)
    x, w = _operands()
    ones = jax.grad(lambda w: fn(x, w).sum())(w)
    assert_allclose(ones, jax.grad(lambda w: (x @ w).sum())(w), "all-ones cotangent")
    with pytest.raises(AssertionError, match="cotangent of argument 1"):
        check_vjp(fn, jnp.matmul, x, w)


def _matmul_with_tangent(scale):
    """A matmul whose forward rule scales dA·B by ``scale`` (1: right)."""

    @jax.custom_jvp
    def mm(a, b):
        return a @ b

    @mm.defjvp
    def _(primals, tangents):
        (a, b), (da, db) = primals, tangents
        return a @ b, scale * (da @ b) + a @ db

    return mm


def test_check_jvp_passes_a_right_rule_and_catches_a_wrong_one():
    a, b = _operands()
    check_jvp(_matmul_with_tangent(1.0), jnp.matmul, a, b)
    check_jvp(jaxmm.matmul, jnp.matmul, a, b)
    with pytest.raises(AssertionError, match="tangent of output"):
        check_jvp(_matmul_with_tangent(1.001), jnp.matmul, a, b)
    with pytest.raises(AssertionError, match="output: shape"):
        check_jvp(lambda a, b: (a @ b)[0], jnp.matmul, a, b)


def test_check_structure_counts_products():
    x, w = _operands()
    figures = check_structure(jaxmm.matmul, jnp.matmul, x, w)
    assert figures["dots"] == 3 and figures["all-reduce"] == 0

    def twice(saved, dy):  # the right values, one product too many
        dx, dw = RIGHT(saved, dy)
        return dx @ jnp.eye(dx.shape[1], dtype=dx.dtype), dw

    x, w = _operands()
    check_vjp(_matmul_with_backward(twice), jnp.matmul, x, w)
    with pytest.raises(AssertionError, match="dots: 4 \\(expected 3\\)"):
        check_structure(_matmul_with_backward(twice), jnp.matmul, x, w)
    with pytest.raises(ValueError, match="compares"):
        check_structure(jaxmm.matmul, jnp.matmul, x, w, compare=("time",))


@pytest.mark.parametrize(
    "fn, shapes",
    [
        (jaxmm.matmul, [(2, 3, 4), (4, 2)]),
        (lambda a, b: jaxmm.tensordot(a, b, ((1, 2), (1, 0))), [(2, 3, 4), (4, 3, 2)]),
        (jaxmm.vecdot, [(3, 4), (1, 4)]),
        (lambda a, b, c: jaxmm.einsum("ij,jk,kl->il", a, b, c), [(2, 3), (3, 2), (2, 3)]),
        (lambda a, b: jnp.sin(jaxmm.dot(a, b)), [(2, 3), (3, 2)]),  # smooth, not linear
    ],
    ids=["matmul", "tensordot", "vecdot", "einsum", "sin of dot"],
)
def test_check_finite_differences_passes_jaxmm(fn, shapes):
    rng = np.random.default_rng(6)
    check_finite_differences(fn, *[rng.standard_normal(s) for s in shapes])


def test_check_finite_differences_catches_a_wrong_rule_and_refuses_integers():
    x, w = (np.asarray(a) for a in _operands())
    with pytest.raises(AssertionError, match="cotangent of argument 1"):
        check_finite_differences(
            _matmul_with_backward(lambda s, dy: (dy @ s[1].T, (s[0].T @ dy).T)), x, w
        )
    with pytest.raises(TypeError, match="int32"):
        check_finite_differences(jaxmm.matmul, np.ones((2, 2), np.int32), w)


def test_the_test_suite_uses_the_public_tolerance_table():
    assert reference.TOLERANCE is TOLERANCE
    assert TOLERANCE[np.dtype(jnp.float32)] == (1e-5, 1e-5)
