"""What JAX's hijax machinery does not do for a primitive, shown with a primitive that is not
jaxmm's, and how jaxmm.experimental still gets the result. If JAX changes, these tests say so."""

import jax
import jax.numpy as jnp
import pytest
from cases import EXPERIMENTAL_MISSING, experimental

if experimental is None:  # JAX without hijax primitives: tests/test_experimental_import.py
    pytest.skip(EXPERIMENTAL_MISSING, allow_module_level=True)

from jaxmm._compat import HiPrimitiveBase  # noqa: E402  (JAX's class, one remat signature)


class _Double(HiPrimitiveBase):
    """y = 2x, recording the checkpoint rule's calls."""

    remat_calls: list = []

    def __init__(self, aval):
        self.in_avals, self.out_aval, self.params = (aval,), aval, {}
        super().__init__()

    def expand(self, x):
        return 2 * x

    def vjp_fwd(self, nzs_in, x):
        return self(x), None

    def vjp_bwd_retval(self, residuals, cotangent):
        return (2 * cotangent,)

    def jvp(self, primals, tangents):
        return self(*primals), 2 * tangents[0]

    def remat_rule(self, policy, x):
        _Double.remat_calls.append(policy)
        return self(x), (), lambda _, x: self(x)


def _with_remat3(enabled):
    previous = jax.config.jax_remat3
    jax.config.update("jax_remat3", enabled)
    yield
    jax.config.update("jax_remat3", previous)


@pytest.fixture
def remat3():
    """JAX's newer jax.checkpoint implementation (``jax_remat3``, off by default up to 0.12)."""
    yield from _with_remat3(True)


@pytest.fixture
def default_remat():
    """JAX's default jax.checkpoint implementation, whatever the environment asks for."""
    yield from _with_remat3(False)


def _checkpointed_gradient_asks():
    """The primitives a checkpoint policy is asked about, and the primitive's remat calls."""
    asked = []

    def policy(prim, *avals, **params):
        asked.append(prim.name)
        return False

    _Double.remat_calls.clear()
    f = lambda x: jnp.sum(jnp.sin(_Double(jax.typeof(x))(jnp.sin(x))))  # noqa: E731
    jax.grad(jax.checkpoint(f, policy=policy))(jnp.ones(3))
    return asked, list(_Double.remat_calls)


def test_default_checkpoint_never_calls_a_primitives_remat_rule(default_remat):
    """JAX's default jax.checkpoint asks its policy about each equation of the JVP of the
    function, and sees a hijax primitive only as ``call_hi_primitive``: dots_saveable cannot
    recognise a product there, and the primitive's ``remat`` rule is not called. jaxmm's JVP
    rule therefore computes the primal as the plain ``dot_general`` it expands to (see
    ``DotGeneral.jvp``); tests/test_experimental_structure.py shows the policies then save what
    they save for jnp."""
    asked, remat_calls = _checkpointed_gradient_asks()
    assert "call_hi_primitive" in asked
    assert remat_calls == []


def test_remat3_checkpoint_calls_the_remat_rule(remat3):
    asked, remat_calls = _checkpointed_gradient_asks()
    assert len(remat_calls) == 1 and "call_hi_primitive" not in asked


# JAX 0.12 lowers a jitted program whose hijax primitives are all intermediates to ordinary
# primitives before it is dispatched; earlier releases dispatch it through Python on every call.
LOWERED_BEFORE_DISPATCH = jax.__version_info__ >= (0, 12)


def test_how_a_jitted_function_with_a_hijax_primitive_is_dispatched():
    """JAX before 0.12 runs a jitted function whose program holds a hijax primitive through its
    Python dispatch path on every call (it lowers the primitive and looks the executable up
    again), never the C++ fast path: JAX's own ``no_tracing`` check shows the re-entry. It costs
    host time per call of the outermost jitted function (about 1 ms on the project's CPU
    machine with JAX 0.10.2; docs/forward_mode.md), not device time. JAX 0.12 lowers the
    primitive when it first compiles the function, and later calls take the fast path."""
    x = jnp.ones(3)
    plain = jax.jit(lambda x: 2 * x)
    hijax = jax.jit(lambda x: _Double(jax.typeof(x))(x))
    plain(x), hijax(x)  # compiled
    jax.config.update("jax_no_tracing", True)
    try:
        plain(x)  # the fast path: no Python
        if LOWERED_BEFORE_DISPATCH:
            hijax(x)  # the fast path too
        else:
            retraced = "re-tracing function .* but 'no_tracing' is set"
            with pytest.raises(RuntimeError, match=retraced):
                hijax(x)
    finally:
        jax.config.update("jax_no_tracing", False)
