"""linear_cross_entropy on 8 devices: tokens sharded (data parallel), the vocabulary sharded
(vocab parallel: neither w nor any logits gathered), both; values and gradients against the naive
loss on one device, gradients sharded like their primals, and the compiled collectives."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jaxmm

BATCH, SEQUENCE, D, V = 8, 4, 16, 1024
COLLECTIVE = re.compile(
    r"= \(?([^=]*?)\)? (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(?:-start)?\("
)

# name: (mesh shape, mesh axes, x spec (batch, sequence, d), w spec (d, V)).
LAYOUTS = {
    "data-parallel": ((8,), ("data",), P("data", None, None), P(None, None)),
    "vocab-parallel": ((8,), ("model",), P(None, None, None), P(None, "model")),
    "2-D": ((2, 4), ("data", "model"), P("data", None, None), P(None, "model")),
    "sequence and vocab": ((2, 4), ("data", "model"), P(None, "data", None), P(None, "model")),
}


def naive(x, w, labels, **options):
    z = jnp.matmul(x, w, preferred_element_type=jnp.float32)
    cap = options.get("logit_soft_cap")
    z = z if cap is None else cap * jnp.tanh(z / cap)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, V), options.get("label_smoothing", 0.0))
    losses = optax.softmax_cross_entropy(z, targets)
    return jnp.mean(losses + options.get("z_loss", 0.0) * jax.nn.logsumexp(z, axis=-1) ** 2)


def _collectives(compiled):
    """(kind, result shapes) of every collective of a compiled program."""
    found = []
    for shapes, kind in COLLECTIVE.findall(compiled.as_text()):
        dims = re.findall(r"\[([\d,]*)\]", shapes)
        found.append((kind, [tuple(int(n) for n in s.split(",") if n) for s in dims]))
    return found


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_loss_and_gradients_without_gathers(layout):
    mesh_shape, axes, x_spec, w_spec = LAYOUTS[layout]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AxisType.Explicit,) * len(axes))
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((BATCH, SEQUENCE, D), dtype=np.float32)
    w_host = rng.standard_normal((D, V), dtype=np.float32) / 2
    labels_host = rng.integers(0, V, (BATCH, SEQUENCE)).astype(np.int32)
    options = dict(label_smoothing=0.1, z_loss=1e-3, logit_soft_cap=5.0)
    # The reference, on one device.
    ref_loss, ref_grads = jax.value_and_grad(naive, argnums=(0, 1))(
        x_host, w_host, labels_host, **options
    )

    def loss(x, w, labels):
        return jaxmm.linear_cross_entropy(x, w, labels, chunk_size=48, **options)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, x_spec)
        w = jax.device_put(w_host, w_spec)
        labels = jax.device_put(labels_host, P(*x_spec[:2]))
        value, grads = step(x, w, labels)
        compiled = step.lower(x, w, labels).compile()
    np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
    for grad, ref_grad, primal in zip(grads, ref_grads, (x, w)):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)
        assert jax.typeof(grad).sharding.spec == jax.typeof(primal).sharding.spec

    # What crosses devices: per-token vectors and scalars, dX summed over the vocabulary's
    # devices, dW summed over the tokens' devices. Never w, never logits, never a gather.
    vocab_shards = mesh.shape["model"] if "model" in axes else 1
    token_shards = 8 // vocab_shards if x_spec != P(None, None, None) else 1
    tokens = BATCH * SEQUENCE // token_shards
    allowed = {(), (tokens,), (tokens, D), (D, V // vocab_shards)}
    collectives = _collectives(compiled)
    assert collectives, "a sharded loss needs some all-reduce"
    for kind, shapes in collectives:
        assert kind == "all-reduce", (kind, shapes)
        assert set(shapes) <= allowed, (kind, shapes, allowed)
    if vocab_shards > 1:
        assert all(V not in shape for _, shapes in collectives for shape in shapes)


def test_per_token_losses_keep_the_tokens_order_when_the_sequence_is_sharded():
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(2)
    x_host = rng.standard_normal((BATCH, SEQUENCE, D), dtype=np.float32)
    w_host = rng.standard_normal((D, V), dtype=np.float32)
    labels_host = rng.integers(0, V, (BATCH, SEQUENCE)).astype(np.int32)
    where_host = rng.random((BATCH, SEQUENCE)) < 0.7
    expected = optax.softmax_cross_entropy_with_integer_labels(x_host @ w_host, labels_host)
    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, P(None, "data", None))
        w = jax.device_put(w_host, P(None, "model"))
        losses = jax.jit(jaxmm.linear_cross_entropy, static_argnames="reduction")(
            x, w, labels_host, where=where_host, reduction="none"
        )
    assert jax.typeof(losses).sharding.spec == P(None, "data")
    np.testing.assert_allclose(losses, np.where(where_host, expected, 0), rtol=1e-5, atol=1e-6)


def test_auto_sharding_gives_the_same_values():
    # Without explicit sharding the arrays are used whole (XLA partitions as it sees fit).
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    rng = np.random.default_rng(1)
    x_host = rng.standard_normal((BATCH * SEQUENCE, D), dtype=np.float32)
    w_host = rng.standard_normal((D, V), dtype=np.float32)
    labels_host = rng.integers(0, V, BATCH * SEQUENCE).astype(np.int32)
    ref = jax.value_and_grad(naive, argnums=(0, 1))(x_host, w_host, labels_host)
    with jax.set_mesh(mesh):
        x = jax.device_put(x_host, jax.NamedSharding(mesh, P("data")))
        ours = jax.jit(jax.value_and_grad(jaxmm.linear_cross_entropy, argnums=(0, 1)))(
            x, w_host, labels_host
        )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ours, ref)


def test_explicitly_sharded_arguments_need_no_mesh_context():
    # The arrays carry their mesh: no jax.set_mesh around the call.
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(3)
    x_host = rng.standard_normal((BATCH, SEQUENCE, D), dtype=np.float32)
    w_host = rng.standard_normal((D, V), dtype=np.float32) / 2
    labels_host = rng.integers(0, V, (BATCH, SEQUENCE)).astype(np.int32)
    x = jax.device_put(x_host, jax.NamedSharding(mesh, P("data", None, None)))
    w = jax.device_put(w_host, jax.NamedSharding(mesh, P(None, "model")))
    step = jax.jit(jax.value_and_grad(jaxmm.linear_cross_entropy, argnums=(0, 1)))
    value, grads = step(x, w, labels_host)
    ref_value, ref_grads = jax.value_and_grad(naive, argnums=(0, 1))(x_host, w_host, labels_host)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_axis_name_inside_a_callers_shard_map(reduction):
    # The caller's shard_map: tokens over "data" (2 devices), w's columns over "model" (4).
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    rng = np.random.default_rng(4)
    tokens = BATCH * SEQUENCE
    x = rng.standard_normal((tokens, D), dtype=np.float32)
    w = rng.standard_normal((D, V), dtype=np.float32) / 2
    labels = rng.integers(0, V, tokens).astype(np.int32)
    where = rng.random(tokens) < 0.8
    where[:: tokens // 2] = True  # every "data" device keeps some token
    weights = rng.uniform(0.5, 2.0, tokens).astype(np.float32)  # per-token cotangents
    options = dict(label_smoothing=0.1, z_loss=1e-3, logit_soft_cap=5.0, reduction=reduction)

    def per_device(x, w, labels, where):
        loss = jaxmm.linear_cross_entropy(
            x, w, labels, where=where, axis_name="model", chunk_size=(3, 48), **options
        )
        return loss if reduction == "none" else lax.psum(loss, "data")

    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P("data", None), P(None, "model"), P("data"), P("data")),
        out_specs=P("data") if reduction == "none" else P(),
    )

    def scalar(loss):
        def total(x, w, *vectors):
            value = loss(x, w, *vectors)
            return jnp.sum(value * weights) if reduction == "none" else 1.7 * value

        return total

    def reference(x, w):
        if reduction == "mean":  # the mean of each "data" device's own mean, summed
            halves = [slice(0, tokens // 2), slice(tokens // 2, tokens)]
            return sum(naive_with_where(x[h], w, labels[h], where[h], options) for h in halves)
        return naive_with_where(x, w, labels, where, options)

    step = jax.jit(jax.value_and_grad(scalar(sharded), (0, 1)))
    with jax.set_mesh(mesh):
        arguments = [
            jax.device_put(x, P("data", None)),
            jax.device_put(w, P(None, "model")),
            jax.device_put(labels, P("data")),
            jax.device_put(where, P("data")),
        ]
        value, grads = step(*arguments)
        compiled = step.lower(*arguments).compile()
    ref_value, ref_grads = jax.value_and_grad(scalar(reference), (0, 1))(x, w)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)

    # Per-token numbers (of a tile or of all local tokens), dX and dW: never w or logits.
    local = tokens // 2
    allowed = {(), (3,), (local,), (local, D), (D, V // 4)}
    collectives = _collectives(compiled)
    assert any(kind == "all-reduce" for kind, _ in collectives)
    for kind, shapes in collectives:
        assert kind == "all-reduce", (kind, shapes)
        assert set(shapes) <= allowed, (kind, shapes, allowed)


def naive_with_where(x, w, labels, where, options):
    z = jnp.matmul(x, w, preferred_element_type=jnp.float32)
    cap = options["logit_soft_cap"]
    z = cap * jnp.tanh(z / cap)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, V), options["label_smoothing"])
    losses = optax.softmax_cross_entropy(z, targets)
    losses = losses + options["z_loss"] * jax.nn.logsumexp(z, axis=-1) ** 2
    losses = jnp.where(where, losses, 0.0)
    if options["reduction"] == "none":
        return losses
    total = jnp.sum(losses)
    return total / jnp.sum(where) if options["reduction"] == "mean" else total
