"""jaxmm.experimental compiles to jnp.matmul's program: the same products and FLOPs for the
gradient, the JVP and gradients under jax.checkpoint policies, on the benchmark's cases."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import EXPERIMENTAL_MISSING, experimental
from reference import assert_close

from jaxmm import _benchmark

if experimental is None:  # JAX without hijax primitives: tests/test_experimental_import.py
    pytest.skip(EXPERIMENTAL_MISSING, allow_module_level=True)

BENCHMARK_CASES = _benchmark.shapes(_benchmark.SQUARE_SIZES)


def _compiled_dots(compiled) -> int:
    return len(re.findall(r"\bdot\(", compiled.as_text()))


def _lowered_dots(lowered) -> int:
    """Products in the program JAX hands to XLA, before XLA merges equal ones: a recomputed
    product counts here even where XLA later finds it equal to the forward one."""
    return len(re.findall(r"stablehlo\.dot_general", lowered.as_text()))


def _assert_same_program(ours, theirs, *args, dots: int | None = None, flops: bool = True):
    lowered = [jax.jit(fn).lower(*args) for fn in (ours, theirs)]
    assert _lowered_dots(lowered[0]) == _lowered_dots(lowered[1])
    compiled = [low.compile() for low in lowered]
    assert _compiled_dots(compiled[0]) == _compiled_dots(compiled[1])
    if dots is not None:
        assert _compiled_dots(compiled[0]) == dots
    if flops:
        assert compiled[0].cost_analysis()["flops"] == compiled[1].cost_analysis()["flops"]


def _jvp_step(mm):
    return lambda a, b, a_dot, b_dot: jax.jvp(mm, (a, b), (a_dot, b_dot))


@pytest.mark.parametrize("case", BENCHMARK_CASES, ids=lambda c: c[0])
def test_gradient_and_jvp_compile_to_the_references_program(case):
    """The benchmark's vjp step (forward, both cotangents) and a jvp step (forward, both tangent
    products): three dots each, with jnp's FLOPs. (On CPU the rhs cotangent may read a
    transposed copy of the saved operand, see jaxmm._dot_general; that is a transpose, not a
    product, so dots and FLOPs are compared, not every op.)"""
    _, m, k, n = case
    a, b, cotangent = jnp.ones((m, k)), jnp.ones((k, n)), jnp.ones((m, n))
    _assert_same_program(
        _benchmark._vjp_step(experimental.matmul),
        _benchmark._vjp_step(jnp.matmul),
        a,
        b,
        cotangent,
        dots=3,
    )
    a_dot, b_dot = 2 * a, 3 * b  # different from the primals, or XLA merges equal products
    _assert_same_program(
        _jvp_step(experimental.matmul), _jvp_step(jnp.matmul), a, b, a_dot, b_dot, dots=3
    )


def _checkpointed_step(mm, policy):
    """Value and gradient of two products under one jax.checkpoint."""

    def loss(a, b):
        body = lambda a, b: jnp.sin(mm(jnp.tanh(mm(a, b)), b.T))  # noqa: E731
        return jnp.sum(jax.checkpoint(body, policy=policy)(a, b))

    return jax.value_and_grad(loss, argnums=(0, 1))


POLICIES = {
    "dots_saveable": (jax.checkpoint_policies.dots_saveable, jnp.matmul),
    "nothing_saveable": (jax.checkpoint_policies.nothing_saveable, jnp.matmul),
    # Operands saved exactly carry no name (a name would make a copy; jaxmm._residuals), so
    # the policy keeps for jaxmm what it keeps for jnp.matmul.
    "operands by name": (
        jax.checkpoint_policies.save_only_these_names("jaxmm_lhs", "jaxmm_rhs"),
        jnp.matmul,
    ),
}


# dots_saveable and nothing_saveable on every benchmark case; the names (which the default
# functions share, tests/test_residual_names.py) on a few.
CHECKPOINT_CASES = [
    (case, policy)
    for policy in POLICIES
    for case in (
        BENCHMARK_CASES
        if policy != "operands by name"
        else BENCHMARK_CASES[:2] + BENCHMARK_CASES[-1:]
    )
]


@pytest.mark.parametrize(
    "case, policy", CHECKPOINT_CASES, ids=lambda x: x if isinstance(x, str) else x[0]
)
def test_checkpoint_policies_save_what_they_save_for_jnp(case, policy):
    """A policy that ignored jaxmm's product would recompute it (two more products than jnp
    under dots_saveable)."""
    _, m, k, n = case
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    name = policy
    policy, reference = POLICIES[name]
    ours, theirs = (_checkpointed_step(mm, policy) for mm in (experimental.matmul, reference))
    _assert_same_program(ours, theirs, a, b)


@pytest.fixture
def remat3():
    """JAX's newer jax.checkpoint implementation, which asks each primitive's own remat rule."""
    previous = jax.config.jax_remat3
    jax.config.update("jax_remat3", True)
    yield
    jax.config.update("jax_remat3", previous)


@pytest.mark.parametrize("policy", ["dots_saveable", "nothing_saveable"])
def test_checkpoint_policies_under_remat3(remat3, policy):
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((32, 48)), jnp.float32)
    policy, reference = POLICIES[policy]
    ours, theirs = (_checkpointed_step(mm, policy) for mm in (experimental.matmul, reference))
    _assert_same_program(ours, theirs, a, b)
    jax.tree.map(assert_close, jax.jit(ours)(a, b), jax.jit(theirs)(a, b))
