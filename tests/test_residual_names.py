"""Narrowed saved operands are named ``"jaxmm_lhs"`` / ``"jaxmm_rhs"`` for ``jax.checkpoint``
policies; operands saved as they are carry no name (a name would make a copy of them)."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals
from reference import sub_jaxprs

import jaxmm
from jaxmm._structure import saved_residuals

NAMES = ("jaxmm_lhs", "jaxmm_rhs")
SAVE_NAMED = jax.checkpoint_policies.save_only_these_names(*NAMES)
# (residual_dtype, residual_scaling): plain cast, scaled per tensor, scaled per channel.
SETTINGS = [(jnp.bfloat16, "tensor"), (jnp.float16, "tensor"), (jnp.float8_e4m3fn, "channel")]
IDS = ["bfloat16", "float16", "e4m3-channel"]


def _params():
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (8, 16))
    w1, w2 = jax.random.normal(keys[1], (16, 32)), jax.random.normal(keys[2], (32, 4))
    target = jax.random.normal(keys[3], (8, 4))
    return (w1, w2), x, target


def _linear_net(mm):
    """Two products with only linear steps around them: the backward pass needs nothing but the
    matmul residuals, so a policy that saves those must recompute nothing."""

    def loss(params, x, target):
        w1, w2 = params
        return jnp.sum(mm(mm(x, w1) * 0.5, w2) * target)

    return loss


def _tanh_net(mm):
    def loss(params, x, target):
        w1, w2 = params
        return jnp.sum(jnp.tanh(mm(jnp.tanh(mm(x, w1)), w2)) * target)

    return loss


def _mm(residual_dtype, scaling):
    return functools.partial(jaxmm.matmul, residual_dtype=residual_dtype, residual_scaling=scaling)


def _dot_generals(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "dot_general"
        for sub in sub_jaxprs(eqn.params):
            count += _dot_generals(sub)
    return count


def _backward_dot_generals(loss, params, *args) -> int:
    """dot_generals in the backward pass of ``loss`` w.r.t. its first argument, as partial
    evaluation left it: cotangent products plus whatever the policy made it recompute."""
    _, vjp = jax.vjp(lambda params: loss(params, *args), params)
    return _dot_generals(jax.make_jaxpr(vjp)(1.0).jaxpr)


def _saved_under(policy, loss, params):
    """The types of what ``jax.checkpoint(loss, policy=policy)`` saves (constants and the
    arguments themselves left out): a name is what a policy selects by, whatever the JAX release
    prints for it."""
    saved = saved_residuals(jax.checkpoint(loss, policy=policy), params)
    return sorted(
        kind for kind, origin in saved if "constant" not in origin and "argument" not in origin
    )


@pytest.mark.parametrize("residual_dtype, scaling", SETTINGS, ids=IDS)
def test_saved_operands_and_their_scales_carry_the_names(residual_dtype, scaling):
    params, x, target = _params()
    loss = _linear_net(_mm(residual_dtype, scaling))
    short = {"bfloat16": "bf16", "float16": "f16", "float8_e4m3fn": "f8_e4m3fn"}
    narrow = short[np.dtype(residual_dtype).name]
    # x@w1 saves x (for dw1; x needs no cotangent) and w1 is not saved; h@w2 saves both.
    lhs, rhs = [f"{narrow}[8,16]", f"{narrow}[8,32]"], [f"{narrow}[32,4]"]
    if residual_dtype is jnp.float16:  # + a per-tensor scale under its operand's name
        lhs, rhs = lhs + ["f32[]"] * 2, rhs + ["f32[]"]
    if residual_dtype is jnp.float8_e4m3fn:  # per-channel scales: along the contracting axis
        lhs, rhs = lhs + ["f32[1,16]", "f32[1,32]"], rhs + ["f32[32,1]"]
    run = lambda params: loss(params, x, target)
    names = jax.checkpoint_policies.save_only_these_names
    assert _saved_under(names("jaxmm_lhs"), run, params) == sorted(lhs)
    assert _saved_under(names("jaxmm_rhs"), run, params) == sorted(rhs)
    assert _saved_under(SAVE_NAMED, run, params) == sorted(lhs + rhs)


@pytest.mark.parametrize("residual_dtype, scaling", SETTINGS, ids=IDS)
def test_policy_saving_the_names_recomputes_no_product(residual_dtype, scaling, capsys):
    args = _params()
    loss = _linear_net(_mm(residual_dtype, scaling))
    remat = jax.checkpoint(loss, policy=SAVE_NAMED)
    # Three cotangent products (dw1, dh, dw2) and no forward product again ...
    assert _backward_dot_generals(remat, *args) == _backward_dot_generals(loss, *args) == 3
    # ... whereas saving nothing recomputes x @ w1 (whose result the second product saves).
    nothing = jax.checkpoint(loss, policy=jax.checkpoint_policies.nothing_saveable)
    assert _backward_dot_generals(nothing, *args) == 4
    # Under the policy the saved residuals are exactly the named ones.
    # No full-width activation is kept: only the narrowed copies and their float32 scales.
    saved = _saved_under(SAVE_NAMED, lambda params: loss(params, *args[1:]), args[0])
    assert saved and not [s for s in saved if s.startswith(("f32[8,16]", "f32[8,32]"))]
    grads = jax.jit(jax.grad(remat))(*args)
    for g, e in zip(grads, jax.jit(jax.grad(loss))(*args)):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("residual_dtype, scaling", SETTINGS, ids=IDS)
def test_policy_gradient_equals_the_one_without_checkpoint(residual_dtype, scaling):
    """With activations between the products the policy recomputes what it was not told to
    save (the pre-activations), and the gradient is still the same, bit for bit."""
    args = _params()
    loss = _tanh_net(_mm(residual_dtype, scaling))
    expected = jax.jit(jax.grad(loss))(*args)
    policies = [SAVE_NAMED]
    if "pinned_host" in {m.kind for m in jax.devices()[0].addressable_memories()}:
        offload = jax.checkpoint_policies.save_and_offload_only_these_names(
            names_which_can_be_saved=[],
            names_which_can_be_offloaded=list(NAMES),
            offload_src="device",
            offload_dst="pinned_host",
        )
        policies.append(offload)
    for policy in policies:
        grads = jax.jit(jax.grad(jax.checkpoint(loss, policy=policy)))(*args)
        for g, e in zip(grads, expected):
            np.testing.assert_array_equal(g, e)


def test_exact_operands_carry_no_name_and_the_policy_keeps_what_it_keeps_for_jnp(capsys):
    args = _params()
    loss = _linear_net(jaxmm.matmul)
    print_saved_residuals(lambda params: loss(params, *args[1:]), args[0])
    assert "named" not in capsys.readouterr().out
    remat, reference = (
        jax.checkpoint(_linear_net(mm), policy=SAVE_NAMED) for mm in (jaxmm.matmul, jnp.matmul)
    )
    assert _backward_dot_generals(remat, *args) == _backward_dot_generals(reference, *args)


def test_one_side_narrowed_names_that_side_only(capsys):
    """residual_dtype=(jnp.bfloat16, None): the activations (lhs) are saved narrowed and named,
    the weights as they are, unnamed (read "from the argument")."""
    (w1, w2), x, target = _params()
    mm = functools.partial(jaxmm.matmul, residual_dtype=(jnp.bfloat16, None))
    loss = _linear_net(mm)
    run = lambda params: loss(params, x, target)
    assert _saved_under(SAVE_NAMED, run, (w1, w2)) == ["bf16[8,16]", "bf16[8,32]"]
    print_saved_residuals(run, (w1, w2))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("f32[32,4] from the argument") for line in lines)
