"""What a gradient costs in the structures models are built from, against the same program with
``jnp`` / ``lax`` products: per-token code under nested ``jax.vmap`` (the mapped axes must be
folded into the products, never a per-token weight gradient summed afterwards) and layers stacked
under ``lax.scan`` and ``jax.checkpoint`` policies (the backward pass keeps no more than jnp's;
scanned weights stay "from the argument")."""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import experimental
from jax import lax
from jax.ad_checkpoint import print_saved_residuals
from reference import assert_close

import jaxmm
from jaxmm import _models_benchmark

D, N = 16, 24  # the per-token input width and the weight's other axis
BATCH, SEQUENCE = 3, 5


def _per_token(lib):
    """(name, per-token product f(v, w), weight shape): v is one token's vector of shape (D,)."""
    dg = lambda v, w: lib.dot_general(v, w, (((0,), (0,)), ((), ())))
    cases = [
        ("matmul", lambda v, w: lib.matmul(v, w), (D, N)),
        ("dot_general", dg, (D, N)),
        ("einsum", lambda v, w: lib.einsum("d,dn->n", v, w), (D, N)),
        ("einsum sublist", lambda v, w: lib.einsum(v, [0], w, [0, 1], [1]), (D, N)),
    ]
    if lib is jaxmm:
        cases += [
            ("dot", lambda v, w: jaxmm.dot(v, w), (D, N)),
            ("tensordot", lambda v, w: jaxmm.tensordot(v, w, axes=1), (D, N)),
            ("vecmat", lambda v, w: jaxmm.vecmat(v, w), (D, N)),
            ("matvec", lambda v, w: jaxmm.matvec(w, v), (N, D)),
            ("inner", lambda v, w: jaxmm.inner(v, w), (N, D)),
            ("outer", lambda v, w: jaxmm.outer(v, w), (N,)),
            ("vdot", lambda v, w: jaxmm.vdot(v, w), (D,)),
            ("vecdot", lambda v, w: jaxmm.vecdot(v, w), (D,)),
        ]
    return cases


REFERENCE = {
    "matmul": lambda v, w: jnp.matmul(v, w),
    "dot_general": lambda v, w: lax.dot_general(v, w, (((0,), (0,)), ((), ()))),
    "einsum": lambda v, w: jnp.einsum("d,dn->n", v, w),
    "einsum sublist": lambda v, w: jnp.einsum(v, [0], w, [0, 1], [1]),
    "dot": lambda v, w: jnp.dot(v, w),
    "tensordot": lambda v, w: jnp.tensordot(v, w, axes=1),
    "vecmat": lambda v, w: jnp.vecmat(v, w),
    "matvec": lambda v, w: jnp.matvec(w, v),
    "inner": lambda v, w: jnp.inner(v, w),
    # jnp.outer multiplies elementwise; its product form is einsum's (jaxmm keeps less: a test
    # in test_products.py compares jaxmm.outer with jnp.outer itself).
    "outer": lambda v, w: jnp.einsum("d,n->dn", v, w),
    "vdot": lambda v, w: jnp.vdot(v, w),
    "vecdot": lambda v, w: jnp.vecdot(v, w),
}

MECHANISMS = [("jaxmm", jaxmm)] + ([("experimental", experimental)] if experimental else [])
PER_TOKEN_CASES = [
    pytest.param(name, fn, shape, id=f"{mechanism}-{name}")
    for mechanism, lib in MECHANISMS
    for name, fn, shape in _per_token(lib)
]


def _tokens_and_weight(shape):
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (BATCH, SEQUENCE, D))
    return x, jax.random.normal(keys[1], shape)


def _nested_vmap_gradient(per_token):
    """d/dw of a loss over every token of every sequence, the product written per token."""

    def loss(w, x):
        y = jax.vmap(jax.vmap(per_token, (0, None)), (0, None))(x, w)
        return jnp.sum(jnp.sin(y))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _compiled(fn, *args):
    return fn.lower(*args).compile()


def _dots(compiled) -> int:
    return compiled.as_text().count(" dot(")


def _shapes(compiled) -> set[tuple[int, ...]]:
    """Every array shape the compiled program names."""
    return {
        tuple(int(d) for d in dims.split(",") if d)
        for dims in re.findall(r"\b(?:f32|f16|bf16|f64)\[([\d,]*)\]", compiled.as_text())
    }


@pytest.mark.parametrize("name, per_token, weight_shape", PER_TOKEN_CASES)
def test_nested_vmap_gradient_compiles_to_jnps_products(name, per_token, weight_shape):
    x, w = _tokens_and_weight(weight_shape)
    ours, theirs = _nested_vmap_gradient(per_token), _nested_vmap_gradient(REFERENCE[name])
    jax.tree.map(assert_close, ours(w, x), theirs(w, x))
    ours_c, theirs_c = _compiled(ours, w, x), _compiled(theirs, w, x)
    assert _dots(ours_c) == _dots(theirs_c)
    assert ours_c.cost_analysis()["flops"] <= theirs_c.cost_analysis()["flops"]
    assert (
        ours_c.memory_analysis().temp_size_in_bytes <= theirs_c.memory_analysis().temp_size_in_bytes
    )
    # No per-token weight gradient: no array with the mapped axes and all of the weight's axes.
    if len(weight_shape) == 2:  # (a vector weight's per-token shape is the tokens' own)
        per_token_gradients = {(BATCH, SEQUENCE, *weight_shape), (BATCH * SEQUENCE, *weight_shape)}
        assert not per_token_gradients & _shapes(ours_c)


# (a's shape, b's shape, in_axes, out_axes): a (3, 5) @ b (5, 6) per example, 4 examples.
VMAP_AXES = [
    ((3, 4, 5), (5, 6), (1, None), 0),
    ((4, 3, 5), (5, 4, 6), (0, 1), 1),
    ((3, 5), (4, 5, 6), (None, 0), 0),
    ((3, 5, 4), (4, 5, 6), (2, 0), 2),
    ((4, 3, 5), (5, 6, 4), (0, 2), -1),
]


@pytest.mark.parametrize("lib", [lib for _, lib in MECHANISMS], ids=[m for m, _ in MECHANISMS])
@pytest.mark.parametrize("a_shape, b_shape, in_axes, out_axes", VMAP_AXES)
def test_vmap_axes_and_mapped_weights(lib, a_shape, b_shape, in_axes, out_axes):
    """Any in_axes/out_axes, a mapped or unmapped weight: values and gradients are jnp's."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=a_shape), jnp.float32)
    b = jnp.asarray(rng.normal(size=b_shape), jnp.float32)
    loss = lambda mm: lambda a, b: jnp.sum(jnp.cos(jax.vmap(mm, in_axes, out_axes)(a, b)))
    grad = lambda mm: jax.jit(jax.value_and_grad(loss(mm), argnums=(0, 1)))
    jax.tree.map(assert_close, grad(lib.matmul)(a, b), grad(jnp.matmul)(a, b))


@pytest.mark.parametrize("lib", [lib for _, lib in MECHANISMS], ids=[m for m, _ in MECHANISMS])
def test_per_example_gradients_stay_per_example(lib):
    """vmap of grad: the per-example weight gradients are the point, and are jnp's."""
    x, w = _tokens_and_weight((D, N))
    tokens = x.reshape(-1, D)
    per_example = lambda mm: jax.jit(
        jax.vmap(jax.grad(lambda w, v: jnp.sum(jnp.tanh(mm(v, w)))), in_axes=(None, 0))
    )
    ours = per_example(lib.matmul)(w, tokens)
    assert ours.shape == (BATCH * SEQUENCE, D, N)
    assert_close(ours, per_example(jnp.matmul)(w, tokens))


@pytest.mark.parametrize("lib", [lib for _, lib in MECHANISMS], ids=[m for m, _ in MECHANISMS])
def test_nested_vmap_forward_mode(lib):
    x, w = _tokens_and_weight((D, N))
    mapped = lambda mm: jax.vmap(jax.vmap(mm, (0, None)), (0, None))
    tangent = jnp.ones_like(w)
    ours = jax.jvp(lambda w: mapped(lib.matmul)(x, w), (w,), (tangent,))
    theirs = jax.jvp(lambda w: mapped(jnp.matmul)(x, w), (w,), (tangent,))
    jax.tree.map(assert_close, ours, theirs)


# Layers stacked under lax.scan ----------------------------------------------------------------

SCAN_CASES = [
    pytest.param(name, fn, id=f"{mechanism}-{name}")
    for mechanism, lib in MECHANISMS
    for name, fn, shape in _per_token(lib)
    if shape == (D, N)
]
POLICIES = {
    "no checkpoint": None,
    "checkpoint": "default",
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
    "save_only_these_names": jax.checkpoint_policies.save_only_these_names(
        "jaxmm_lhs", "jaxmm_rhs", "hidden"
    ),
}


def _scanned_loss(per_token, policy):
    """A stack of square layers run by lax.scan, each layer's product per row of the batch."""

    def layer(h, w):
        y = jax.vmap(per_token, (0, None))(h, w)
        return jax.ad_checkpoint.checkpoint_name(jnp.tanh(y), "hidden"), None

    if policy == "default":
        layer = jax.checkpoint(layer)
    elif policy is not None:
        layer = jax.checkpoint(layer, policy=policy)
    return lambda ws, x: jnp.sum(lax.scan(layer, x, ws)[0] ** 2)


def _saved(loss, *args) -> list[str]:
    """What a loss's backward pass keeps: type (size-1 axes dropped: ``vecmat`` keeps its vector
    as a ``(1, n)`` row, the same bytes as ``jnp``'s ``(n,)``) and source."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(loss, *args)
    return sorted(
        re.sub(r",1(?=[,\]])|(?<=\[)1,", "", line.split(" from ")[0])
        + (" from the argument" if "from the argument" in line else "")
        for line in out.getvalue().splitlines()
        if line.strip()
    )


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name, per_token", SCAN_CASES)
def test_scanned_layers_keep_what_jnp_keeps(name, per_token, policy):
    if ("vec" in name or name in ("dot", "tensordot")) and policy not in (
        "no checkpoint",
        "dots_saveable",
    ):
        pytest.skip("one case per policy for the products that share matmul's layout")
    keys = jax.random.split(jax.random.key(2), 2)
    ws = jax.random.normal(keys[0], (4, D, D)) / 4
    x = jax.random.normal(keys[1], (6, D))
    square = lambda v, w: per_token(v, w)
    ours = _scanned_loss(square, POLICIES[policy])
    theirs = _scanned_loss(lambda v, w: jnp.matmul(v, w), POLICIES[policy])
    saved = _saved(ours, ws, x)
    assert saved == _saved(theirs, ws, x)
    assert any(f"[4,{D},{D}] from the argument" in line for line in saved) or not any(
        f"[4,{D},{D}]" in line for line in saved
    )
    grad = lambda loss: jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.tree.map(assert_close, grad(ours)(ws, x), grad(theirs)(ws, x))
    ours_c, theirs_c = _compiled(grad(ours), ws, x), _compiled(grad(theirs), ws, x)
    # Known: vecmat's layout (its vector as a (1, n) row of matmul) costs the scanned gradient
    # one batch-by-width temporary more than jnp.vecmat's (384 bytes here); nothing else may.
    slack = x.nbytes if name == "vecmat" else 0
    assert (
        ours_c.memory_analysis().temp_size_in_bytes
        <= theirs_c.memory_analysis().temp_size_in_bytes + slack
    )
    assert _dots(ours_c) == _dots(theirs_c)


@pytest.mark.parametrize("lib", [lib for _, lib in MECHANISMS], ids=[m for m, _ in MECHANISMS])
def test_flat_layer_vjp_keeps_what_jnp_keeps(lib):
    x, w = jnp.ones((8, D)), jnp.ones((D, N))
    loss = lambda mm: lambda x, w: jnp.sum(jnp.tanh(mm(x, w)))
    assert _saved(loss(lib.matmul), x, w) == _saved(loss(jnp.matmul), x, w)


def _ops(compiled) -> Counter:
    """The compiled program's operations, each as (result type, opcode)."""
    return Counter(re.findall(r" = (\S+) ([a-z][a-z-]*)\(", compiled.as_text()))


@pytest.mark.parametrize("kind", ["MLP", "transformer"])
def test_scanned_model_compiles_to_jnps_program(kind, monkeypatch):
    """The training step of a scanned model (python -m jaxmm's) is jnp's program: op for op for
    the MLP; for the transformer block (whose einsums jaxmm lays out as its own products) the
    same products, FLOPs and no more temporaries."""
    monkeypatch.setattr(_models_benchmark, "MLP_SIZES", {True: (3, 16, 32, 64)})
    monkeypatch.setattr(_models_benchmark, "TRANSFORMER_SIZES", {True: (2, 2, 8, 64)})
    make_layer, weights, data = _models_benchmark.model(kind, True)
    compiled = [
        _compiled(
            jax.jit(jax.grad(_models_benchmark.scanned_loss(make_layer(*products), False))),
            weights,
            *data,
        )
        for products in (
            _models_benchmark.products("jaxmm exact", None),
            _models_benchmark.products("jnp", None),
        )
    ]
    ours, theirs = compiled
    if kind == "MLP":
        assert _ops(ours) == _ops(theirs)
    assert _dots(ours) == _dots(theirs)
    assert ours.cost_analysis()["flops"] <= theirs.cost_analysis()["flops"]
    assert ours.memory_analysis().temp_size_in_bytes <= theirs.memory_analysis().temp_size_in_bytes


# Flax: linen nn.scan, and nnx layers stacked with nnx.vmap and run by lax.scan ----------------


def _linen_scanned(dot_general):
    from flax import linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h, _):
            dense = nn.Dense(D, dot_general=dot_general) if dot_general else nn.Dense(D)
            return jnp.tanh(dense(h)), None

    return nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=4)()


@pytest.mark.parametrize("lib", [lib for _, lib in MECHANISMS], ids=[m for m, _ in MECHANISMS])
def test_linen_scan_keeps_what_jnp_keeps(lib):
    x = jax.random.normal(jax.random.key(3), (6, D))
    ours, theirs = _linen_scanned(lib.dot_general), _linen_scanned(None)
    params = theirs.init(jax.random.key(0), x, None)
    loss = lambda model: lambda params, x: jnp.sum(model.apply(params, x, None)[0] ** 2)
    assert _saved(loss(ours), params, x) == _saved(loss(theirs), params, x)
    grad = lambda model: jax.jit(jax.grad(loss(model)))
    jax.tree.map(assert_close, grad(ours)(params, x), grad(theirs)(params, x))


@pytest.mark.parametrize("lib", [lib for _, lib in MECHANISMS], ids=[m for m, _ in MECHANISMS])
def test_nnx_vmapped_layers_under_scan_keep_what_jnp_keeps(lib):
    from flax import nnx

    def stack(dot_general):
        @nnx.vmap(in_axes=0, out_axes=0)
        def create(key):
            extra = {"dot_general": dot_general} if dot_general else {}
            return nnx.Linear(D, D, rngs=nnx.Rngs(key), **extra)

        return create(jax.random.split(jax.random.key(0), 4))

    def loss(layers):
        graphdef, state = nnx.split(layers)

        def run(state, x):
            def body(h, layer_state):
                return jnp.tanh(nnx.merge(graphdef, layer_state)(h)), None

            return jnp.sum(lax.scan(body, x, state)[0] ** 2)

        return run, state

    x = jax.random.normal(jax.random.key(3), (6, D))
    (ours, state), (theirs, _) = loss(stack(lib.dot_general)), loss(stack(None))
    assert _saved(ours, state, x) == _saved(theirs, state, x)
    assert any(
        "from the argument" in line and f"[4,{D},{D}]" in line for line in _saved(ours, state, x)
    )
    jax.tree.map(
        assert_close, jax.jit(jax.grad(ours))(state, x), jax.jit(jax.grad(theirs))(state, x)
    )
