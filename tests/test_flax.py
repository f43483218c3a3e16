"""jaxmm as the dot_general / einsum_op of Flax layers: same outputs, same gradients for every
parameter as the default layers, from the same initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx
from reference import assert_close, custom_vjp_calls

import jaxmm

X = np.random.default_rng(0).standard_normal((4, 3, 6), dtype=np.float32)


def _loss_and_grads_nnx(model):
    def loss(model):
        return jnp.sum(jnp.sin(model(jnp.asarray(X))))

    return nnx.value_and_grad(loss)(model)


NNX_LAYERS = {
    "Linear": lambda **kw: nnx.Linear(6, 5, rngs=nnx.Rngs(0), **kw),
    "LinearGeneral": lambda **kw: nnx.LinearGeneral(
        (3, 6), (2, 5), axis=(-2, -1), rngs=nnx.Rngs(0), **kw
    ),
    "Linear bf16 params, f32 accumulation": lambda **kw: nnx.Linear(
        6,
        5,
        param_dtype=jnp.bfloat16,
        dtype=jnp.bfloat16,
        preferred_element_type=jnp.float32,
        rngs=nnx.Rngs(0),
        **kw,
    ),
}


@pytest.mark.parametrize("layer", NNX_LAYERS)
def test_nnx_layers(layer):
    ours_model = NNX_LAYERS[layer](dot_general=jaxmm.dot_general)
    assert custom_vjp_calls(jax.make_jaxpr(lambda x: ours_model(x))(X).jaxpr) >= 1
    ours = _loss_and_grads_nnx(ours_model)
    theirs = _loss_and_grads_nnx(NNX_LAYERS[layer]())
    assert_close(ours[0], theirs[0], "loss")
    ours_grads, theirs_grads = nnx.state(ours[1]), nnx.state(theirs[1])
    assert jax.tree.structure(ours_grads) == jax.tree.structure(theirs_grads)
    jax.tree.map(assert_close, ours_grads, theirs_grads)


def test_nnx_einsum():
    def make(**kw):
        return nnx.Einsum("bij,jk->bik", (6, 5), (5,), rngs=nnx.Rngs(0), **kw)

    ours = _loss_and_grads_nnx(make(einsum_op=jaxmm.einsum))
    theirs = _loss_and_grads_nnx(make())
    assert_close(ours[0], theirs[0], "loss")
    jax.tree.map(assert_close, nnx.state(ours[1]), nnx.state(theirs[1]))


LINEN_LAYERS = {
    "Dense": lambda **kw: linen.Dense(5, **kw),
    "DenseGeneral": lambda **kw: linen.DenseGeneral((2, 5), axis=(-2, -1), **kw),
}


@pytest.mark.parametrize("layer", LINEN_LAYERS)
def test_linen_layers(layer):
    ours_module = LINEN_LAYERS[layer](dot_general=jaxmm.dot_general)
    theirs_module = LINEN_LAYERS[layer]()
    params = theirs_module.init(jax.random.key(0), X)

    def loss(module):
        return lambda params: jnp.sum(jnp.sin(module.apply(params, X)))

    ours = jax.value_and_grad(loss(ours_module))(params)
    theirs = jax.value_and_grad(loss(theirs_module))(params)
    assert_close(ours[0], theirs[0], "loss")
    jax.tree.map(assert_close, ours[1], theirs[1])
    # The custom rule is really on the path.
    assert custom_vjp_calls(jax.make_jaxpr(loss(ours_module))(params).jaxpr) >= 1
