"""What the backward pass is made of: residuals, products, their parameters and compiled cost."""

import re
from collections import Counter

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from reference import random_array, saved_arrays, sub_jaxprs

import jaxmm
from jaxmm import _benchmark

DN = (((2,), (1,)), ((0,), (0,)))


def _dot_generals(jaxpr):
    """Every dot_general equation in a jaxpr, nested jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for sub in sub_jaxprs(eqn.params):
            found.extend(_dot_generals(sub))
    return found


def test_residuals_are_the_two_operands():
    lhs, rhs = jnp.arange(24.0).reshape(2, 3, 4), jnp.arange(40.0).reshape(2, 4, 5)
    _, vjp = jax.vjp(lambda l, r: jaxmm.dot_general(l, r, DN), lhs, rhs)
    saved = sorted(saved_arrays(vjp), key=lambda x: x.shape)  # (in whichever order JAX keeps)
    assert len(saved) == 2
    np.testing.assert_array_equal(saved[0], lhs)
    np.testing.assert_array_equal(saved[1], rhs)


@pytest.mark.parametrize("wrt", [0, 1])
def test_one_operand_saves_and_computes_only_what_it_needs(wrt):
    lhs, rhs = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
    operands = [lhs, rhs]

    def f(x):
        args = list(operands)
        args[wrt] = x
        return jaxmm.dot_general(*args, DN)

    _, vjp = jax.vjp(f, operands[wrt])
    # dL needs R and dR needs L: only the *other* operand is saved.
    (saved,) = saved_arrays(vjp)
    assert saved.shape == operands[1 - wrt].shape
    assert sum(x.nbytes for x in jax.tree.leaves(vjp)) == operands[1 - wrt].nbytes
    # Without jit, too: one forward product and one backward product, not two.
    grad_jaxpr = jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(operands[wrt]).jaxpr
    assert len(_dot_generals(grad_jaxpr)) == 2
    both = jax.make_jaxpr(jax.grad(lambda l, r: jaxmm.dot_general(l, r, DN).sum(), argnums=(0, 1)))(
        lhs, rhs
    ).jaxpr
    assert len(_dot_generals(both)) == 3


def test_precision_and_preferred_type_reach_the_backward_products():
    lhs = jnp.ones((2, 3, 4), jnp.bfloat16)
    rhs = jnp.ones((2, 4, 5), jnp.bfloat16)

    def loss(l, r):
        out = jaxmm.dot_general(l, r, DN, precision="highest", preferred_element_type=jnp.float32)
        return out.sum()

    grads = jax.grad(loss, argnums=(0, 1))(lhs, rhs)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    dots = _dot_generals(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(lhs, rhs).jaxpr)
    assert len(dots) == 3
    for eqn in dots:
        assert eqn.params["precision"] == (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
        assert eqn.params["preferred_element_type"] == jnp.float32


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def _count_dots(compiled):
    return len(re.findall(r"\bdot\(", compiled.as_text()))


STRUCTURE_CASES = [
    ((256, 256), (256, 256)),
    ((128, 64), (64, 256)),
    ((4, 32, 64), (64, 16)),
    ((4, 32, 64), (4, 64, 16)),
    ((64,), (64, 32)),
    ((1, 3, 8, 16), (2, 1, 16, 4)),
]


@pytest.mark.parametrize("a_shape, b_shape", STRUCTURE_CASES, ids=str)
def test_compiled_gradient_has_the_references_dots_and_flops(a_shape, b_shape):
    a, b = jnp.ones(a_shape), jnp.ones(b_shape)
    step = lambda mm: jax.grad(lambda a, b: jnp.sum(jnp.sin(mm(a, b))), argnums=(0, 1))
    ours, theirs = _compiled(step(jaxmm.matmul), a, b), _compiled(step(jnp.matmul), a, b)
    assert _count_dots(ours) == _count_dots(theirs) >= 2
    assert ours.cost_analysis()["flops"] == theirs.cost_analysis()["flops"]


def _entry_ops(compiled) -> Counter:
    """(kind, result type) of each top-level instruction of the compiled program; a dot is a
    "dot" whether XLA runs it itself or hands it to a library kernel as a custom fusion."""
    entry = compiled.as_text().split("\nENTRY ", 1)[1].split("\n}", 1)[0]
    ops = Counter()
    for line in entry.splitlines()[1:]:
        found = re.match(r"\s*(?:ROOT )?%\S+ = (\S+) ([\w-]+)\(", line)
        if not found or found[2] == "parameter":
            continue
        shape, opcode = found[1].split("{")[0], found[2]
        if opcode == "dot" or re.search(r'"kind":"__\w+_fusion"', line):
            ops["dot", shape] += 1
        else:
            kind = re.search(r"kind=(\w+)", line)
            ops[opcode + (f"({kind[1]})" if kind else ""), shape] += 1
    return ops


def _transposes_and_copies(compiled) -> int:
    """Transpose and copy instructions anywhere in the program, fused ones included."""
    return len(re.findall(r"= \S+ (?:transpose|copy)\(", compiled.as_text()))


BENCHMARK_CASES = _benchmark.shapes(_benchmark.SQUARE_SIZES)


@pytest.mark.parametrize("case", BENCHMARK_CASES, ids=lambda c: c[0])
def test_benchmark_step_compiles_to_the_references_program(case):
    """Every case of ``python -m jaxmm``'s benchmark: the jitted forward+backward step has the
    reference's dots, FLOPs and ops, and no other (no transpose or copy of its own)."""
    _, m, k, n = case
    a, b, cotangent = jnp.ones((m, k)), jnp.ones((k, n)), jnp.ones((m, n))
    ours = _benchmark._step(jaxmm.matmul).lower(a, b, cotangent).compile()
    theirs = _benchmark._step(jnp.matmul).lower(a, b, cotangent).compile()
    assert _count_dots(ours) == _count_dots(theirs) == 3
    assert ours.cost_analysis()["flops"] == theirs.cost_analysis()["flops"]
    assert _entry_ops(ours) == _entry_ops(theirs)
    assert _transposes_and_copies(ours) == _transposes_and_copies(theirs)


# name: the product written with module m (jaxmm or jaxmm.experimental).
NAMED = [
    ("matmul", lambda m, a, b: m.matmul(a, b)),
    ("dot_general", lambda m, a, b: m.dot_general(a, b, (((1,), (0,)), ((), ())))),
    ("einsum", lambda m, a, b: m.einsum("ij,jk->ik", a, b)),
    ("dot", lambda m, a, b: m.dot(a, b)),
    ("tensordot", lambda m, a, b: m.tensordot(a, b, axes=1)),
    ("inner", lambda m, a, b: m.inner(a, b.T)),
    ("outer", lambda m, a, b: m.outer(a, b)),
    ("vdot", lambda m, a, b: m.vdot(a, b.T)),
    ("vecdot", lambda m, a, b: m.vecdot(a, b.T)),
    ("matvec", lambda m, a, b: m.matvec(a, b[:, 0])),
    ("vecmat", lambda m, a, b: m.vecmat(a[0], b)),
]


@pytest.mark.parametrize("name, fn", NAMED, ids=[n for n, _ in NAMED])
def test_every_product_is_named_in_the_lowered_program(mechanism, name, fn):
    """As jnp.einsum names its own: the forward and backward ops carry ``jaxmm.<name>`` (or
    ``jaxmm.experimental.<name>``)."""
    a, b = jnp.ones((3, 3)), jnp.ones((3, 3))
    loss = lambda a, b: jnp.sum(fn(mechanism, a, b))  # noqa: E731
    text = jax.jit(jax.grad(loss, (0, 1))).lower(a, b).as_text(debug_info=True)
    scope = f"{mechanism.__name__}.{name}"
    assert f"jvp({scope})" in text and f"transpose(jvp({scope}))" in text


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((16, 32), (32, 8)),
        ((100, 100), (100, 100)),
        ((1347, 128), (128, 10)),
        ((4, 64, 32), (32, 16)),
    ],
    ids=str,
)
def test_gradients_are_jaxs_bit_for_bit(a_shape, b_shape):
    """jaxmm's backward products are the ones JAX's autodiff emits: the gradients are JAX's bit
    for bit, at every size."""
    rng = np.random.default_rng(2)
    a, b = random_array(rng, a_shape, jnp.float32), random_array(rng, b_shape, jnp.float32)
    cotangent = random_array(rng, jnp.matmul(a, b).shape, jnp.float32)
    step = lambda mm: jax.jit(lambda a, b, g: jax.vjp(mm, a, b)[1](g))  # noqa: E731
    for ours, theirs in zip(step(jaxmm.matmul)(a, b, cotangent), step(jnp.matmul)(a, b, cotangent)):
        np.testing.assert_array_equal(ours, theirs)
