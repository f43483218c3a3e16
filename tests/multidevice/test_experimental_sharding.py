"""jaxmm.experimental on 8 CPU devices: gradients and JVPs of sharded products (Explicit and Auto
mesh axes) and inside shard_map, against jnp.matmul's, values and shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

try:
    from jaxmm import experimental
except ImportError as error:  # JAX without hijax primitives: tests/test_experimental_import.py
    pytest.skip(str(error), allow_module_level=True)

# name: (mesh shape, mesh axes, x spec, w spec, output spec) for Y = X W, X (16, 32), W (32, 24).
LAYOUTS = {
    "data-parallel": ((8,), ("data",), P("data", None), P(None, None), P("data", None)),
    "column-parallel": ((8,), ("model",), P(None, None), P(None, "model"), P(None, "model")),
    "row-parallel": ((8,), ("model",), P(None, "model"), P("model", None), P(None, None)),
    "2-D": ((2, 4), ("data", "model"), P("data", "model"), P("model", None), P("data", None)),
}


def _assert_same(actual, expected, what):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5, err_msg=what)
    assert actual.sharding.is_equivalent_to(expected.sharding, actual.ndim), (
        what,
        actual.sharding,
        expected.sharding,
    )


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_gradient_and_jvp(layout, axis_type):
    mesh_shape, axes, x_spec, w_spec, out_spec = LAYOUTS[layout]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(axis_type,) * len(axes))
    rng = np.random.default_rng(0)
    x_host, x_dot_host = (rng.standard_normal((16, 32), dtype=np.float32) for _ in range(2))
    w_host, w_dot_host = (rng.standard_normal((32, 24), dtype=np.float32) for _ in range(2))
    kwargs = {"out_sharding": out_spec} if axis_type == AxisType.Explicit else {}

    def step(mm):
        def f(x, w):
            return jnp.sin(mm(x, w, **kwargs))

        def run(x, w, x_dot, w_dot):
            value, grads = jax.value_and_grad(lambda x, w: jnp.sum(f(x, w)), argnums=(0, 1))(x, w)
            return value, grads, jax.jvp(f, (x, w), (x_dot, w_dot))

        return jax.jit(run)

    with jax.set_mesh(mesh):
        put = lambda value, spec: jax.device_put(value, NamedSharding(mesh, spec))  # noqa: E731
        args = (put(x_host, x_spec), put(w_host, w_spec))
        args += (put(x_dot_host, x_spec), put(w_dot_host, w_spec))
        ours, theirs = step(experimental.matmul)(*args), step(jnp.matmul)(*args)
        names = ["loss", "dx", "dw", "y", "jvp tangent"]
        for name, actual, expected in zip(names, jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            _assert_same(actual, expected, name)
        if axis_type == AxisType.Explicit:  # sharding in types: each cotangent like its primal
            for grad, primal in zip(ours[1], args):
                assert jax.typeof(grad).sharding.spec == jax.typeof(primal).sharding.spec


def test_vmap_over_an_explicit_mesh_axis():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(1)
    x_host = rng.standard_normal((8, 4, 6), dtype=np.float32)
    w_host = rng.standard_normal((6, 5), dtype=np.float32)

    def per_example(mm):
        f = jax.vmap(lambda x, w: jnp.sum(jnp.sin(mm(x, w))), in_axes=(0, None))
        return jax.jit(lambda x, w: (f(x, w), jax.jvp(f, (x, w), (x, w))[1]))

    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, NamedSharding(mesh, P("data")))
        w = jax.device_put(w_host, NamedSharding(mesh, P()))
        ours, theirs = per_example(experimental.matmul)(x, w), per_example(jnp.matmul)(x, w)
        for actual, expected in zip(ours, theirs):
            _assert_same(actual, expected, "vmap")


def test_shard_map_with_a_replicated_weight():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    rng = np.random.default_rng(2)
    x = jax.device_put(
        rng.standard_normal((32, 16), dtype=np.float32), NamedSharding(mesh, P("data"))
    )
    w = jax.device_put(rng.standard_normal((16, 8), dtype=np.float32), NamedSharding(mesh, P()))
    w_dot = jax.device_put(rng.standard_normal((16, 8), dtype=np.float32), NamedSharding(mesh, P()))

    def step(mm):
        @jax.shard_map(mesh=mesh, in_specs=(P("data"), P(), P()), out_specs=(P(), P(), P()))
        def per_device(x, w, w_dot):
            def loss(w):
                return jnp.mean(jnp.tanh(mm(x, w)) ** 2)

            value, grad = jax.value_and_grad(loss)(w)
            _, tangent = jax.jvp(loss, (w,), (w_dot,))
            return jax.lax.pmean(value, "data"), grad / 8, jax.lax.pmean(tangent, "data")

        return jax.jit(per_device)

    ours, theirs = step(experimental.matmul)(x, w, w_dot), step(jnp.matmul)(x, w, w_dot)
    for actual, expected in zip(ours, theirs):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # And the gradient equals that of the global loss computed on one device.
    x_host, w_host = np.asarray(x), np.asarray(w)
    full = jax.grad(lambda w: jnp.mean(jnp.tanh(x_host @ w) ** 2))(w_host)
    np.testing.assert_allclose(ours[1], full, rtol=1e-4, atol=1e-6)
