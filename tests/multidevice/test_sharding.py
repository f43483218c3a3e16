"""Sharded programs: gradients, their shardings and the collectives XLA compiles, against
jnp.matmul's, on 8 CPU devices."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxmm

COLLECTIVES = r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\("

# name: (mesh shape, mesh axes, x spec, w spec, output spec) for Y = X W, X (16, 32), W (32, 24).
LAYOUTS = {
    "data-parallel": ((8,), ("data",), P("data", None), P(None, None), P("data", None)),
    "column-parallel": ((8,), ("model",), P(None, None), P(None, "model"), P(None, "model")),
    "row-parallel": ((8,), ("model",), P(None, "model"), P("model", None), P(None, None)),
    "2-D": ((2, 4), ("data", "model"), P("data", "model"), P("model", None), P("data", None)),
}


def _count_collectives(compiled) -> int:
    return len(re.findall(COLLECTIVES, compiled.as_text()))


# The default primitive and the custom_vjp mechanism (jaxmm.experimental: its own test file).
MATMULS = {"jaxmm": jaxmm.matmul, "jaxmm.custom_vjp": jaxmm.custom_vjp.matmul}


@pytest.mark.parametrize("mechanism", MATMULS)
@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_gradients_match_the_reference(layout, axis_type, mechanism):
    mesh_shape, axes, x_spec, w_spec, out_spec = LAYOUTS[layout]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(axis_type,) * len(axes))
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((16, 32), dtype=np.float32)
    w_host = rng.standard_normal((32, 24), dtype=np.float32)
    # Explicit sharding needs the output's sharding when the contracting axis is sharded.
    kwargs = {"out_sharding": out_spec} if axis_type == AxisType.Explicit else {}

    def step(mm):
        def loss(x, w):
            return jnp.sum(jnp.sin(mm(x, w, **kwargs)))

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, NamedSharding(mesh, x_spec))
        w = jax.device_put(w_host, NamedSharding(mesh, w_spec))
        ours, theirs = step(MATMULS[mechanism]), step(jnp.matmul)
        (loss, grads), (ref_loss, ref_grads) = ours(x, w), theirs(x, w)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for grad, ref_grad, primal in zip(grads, ref_grads, (x, w)):
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)
            assert grad.sharding.is_equivalent_to(ref_grad.sharding, grad.ndim), (
                grad.sharding,
                ref_grad.sharding,
            )
            if axis_type == AxisType.Explicit:  # sharding in types: each cotangent like its primal
                assert jax.typeof(grad).sharding.spec == jax.typeof(primal).sharding.spec
        compiled = ours.lower(x, w).compile(), theirs.lower(x, w).compile()
        assert _count_collectives(compiled[0]) <= _count_collectives(compiled[1])


@pytest.mark.parametrize("mechanism", MATMULS)
def test_shard_map_data_parallel_step(mechanism):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(1)
    x = jax.device_put(
        rng.standard_normal((32, 16), dtype=np.float32), NamedSharding(mesh, P("data"))
    )
    w = jax.device_put(rng.standard_normal((16, 8), dtype=np.float32), NamedSharding(mesh, P()))

    def step(mm):
        @jax.shard_map(mesh=mesh, in_specs=(P("data"), P()), out_specs=(P(), P()))
        def per_device(x, w):
            def loss(w):
                return jnp.mean(jnp.tanh(mm(x, w)) ** 2)

            value, grad = jax.value_and_grad(loss)(w)
            # The gradient of a replicated weight is already summed over devices (the transpose
            # of its implicit broadcast); average the per-device losses to match.
            return jax.lax.pmean(value, "data"), grad / 8

        return jax.jit(per_device)

    (loss, grad), (ref_loss, ref_grad) = step(MATMULS[mechanism])(x, w), step(jnp.matmul)(x, w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
    # And both equal the gradient of the global loss computed on one device.
    x_host, w_host = np.asarray(x), np.asarray(w)
    full = jax.grad(lambda w: jnp.mean(jnp.tanh(x_host @ w) ** 2))(w_host)
    np.testing.assert_allclose(grad, full, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "axis_type, spmd_axis_name", [(AxisType.Explicit, None), (AxisType.Auto, "data")]
)
def test_nested_vmap_over_a_sharded_batch(axis_type, spmd_axis_name):
    """Per-token products mapped over a sharded batch (an Explicit mesh axis, or an Auto one named
    by spmd_axis_name): the values, gradients and their shardings are jnp's."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    rng = np.random.default_rng(5)
    x_host = rng.standard_normal((8, 3, 6), dtype=np.float32)
    w_host = rng.standard_normal((6, 5), dtype=np.float32)

    def loss(mm):
        per_token = jax.vmap(lambda v, w: mm(v, w), (0, None))
        mapped = jax.vmap(per_token, (0, None), spmd_axis_name=spmd_axis_name)
        return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(mapped(x, w))), (0, 1)))

    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, jax.sharding.NamedSharding(mesh, P("data")))
        w = jax.device_put(w_host, jax.sharding.NamedSharding(mesh, P()))
        ours, theirs = loss(jaxmm.matmul)(x, w), loss(jnp.matmul)(x, w)
        for actual, expected in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
            assert actual.sharding.is_equivalent_to(expected.sharding, actual.ndim)


@pytest.mark.parametrize("as_spec", [False, True], ids=["NamedSharding", "PartitionSpec"])
def test_einsum_out_sharding_in_any_axis_order_like_jnp(as_spec):
    # 'bij,bjk->ikb': the product emits (b, i, k), so the sharding asked for (i, k, b) is laid
    # out in the product's order, given as a NamedSharding or as a spec of the mesh in context.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((4, 16, 8), dtype=np.float32)
    w_host = rng.standard_normal((4, 8, 6), dtype=np.float32)
    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, NamedSharding(mesh, P(None, "data", None)))
        w = jax.device_put(w_host, NamedSharding(mesh, P()))
        spec = P("data", None, None)
        out_sharding = spec if as_spec else NamedSharding(mesh, spec)
        for einsum in (jaxmm.einsum, jnp.einsum):
            y = jax.jit(lambda x, w: einsum("bij,bjk->ikb", x, w, out_sharding=out_sharding))(x, w)
            np.testing.assert_allclose(y, np.einsum("bij,bjk->ikb", x_host, w_host), atol=1e-5)
            assert jax.typeof(y).sharding.spec == spec
