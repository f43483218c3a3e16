"""jaxmm.clipped_grad against jax_privacy.clipping.clipped_grad (vmap of grad), option by option
and model by model, and the structure of what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import DOT_GENERAL_CASES
from jax import lax

import jaxmm
from jaxmm._clipping import _Options
from jaxmm._clipping_models import transformer_loss, transformer_params
from jaxmm._clipping_passes import trace

nnx = pytest.importorskip("flax.nnx")


def _peer():
    """jax-privacy's clipping module (the extra ``jaxmm[privacy]``); the tests that compare with
    it are skipped without it, those against vmap of grad are not."""
    return pytest.importorskip("jax_privacy.clipping")


# jax-privacy 2.0 calls optax.global_norm, which optax >= 0.2.6 deprecates (their warning).
pytestmark = pytest.mark.filterwarnings("ignore:optax.global_norm is deprecated:DeprecationWarning")

FULL = pytest.mark.full
TOLERANCE = {jnp.float32: 1e-4, jnp.float64: 1e-10}


def _relative_error(got, want):
    errors = jax.tree.map(
        lambda g, w: float(jnp.max(jnp.abs(g - w)) / (jnp.max(jnp.abs(w)) + 1e-30)), got, want
    )
    return max(jax.tree.leaves(errors), default=0.0)


def _compare(fun, args, tolerance=1e-4, **options):
    got = jax.jit(jaxmm.clipped_grad(fun, **options))(*args)
    want = jax.jit(_peer().clipped_grad(fun, **options))(*args)
    if isinstance(want, tuple) and type(want[1]).__name__ == "Aux":  # compare them as tuples
        assert type(got[1]).__name__ == "Aux"
        assert got[1]._fields == want[1]._fields
        got, want = (got[0], tuple(got[1])), (want[0], tuple(want[1]))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
    assert _relative_error(got, want) <= tolerance, _relative_error(got, want)
    return got


class MLP(nnx.Module):
    """Linear, LayerNorm, GELU, Linear; jaxmm's products, or Flax's own (lax) ones."""

    def __init__(self, rngs, dtype=jnp.float32, dot_general=jaxmm.dot_general):
        kw = dict(dot_general=dot_general, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.first = nnx.Linear(8, 32, **kw)
        self.norm = nnx.LayerNorm(32, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.second = nnx.Linear(32, 3, **kw)

    def __call__(self, x):
        return self.second(jax.nn.gelu(self.norm(self.first(x))))


def mlp_case(dtype=jnp.float32, batch=6, dot_general=jaxmm.dot_general):
    graphdef, params = nnx.split(MLP(nnx.Rngs(0), dtype, dot_general))
    keys = jax.random.split(jax.random.key(1), 2)
    x = jax.random.normal(keys[0], (batch, 4, 8), dtype)
    y = jax.random.normal(keys[1], (batch, 4, 3), dtype)

    def loss(params, x, y):
        return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

    return loss, (params, x, y)


def transformer_case(dtype=jnp.float32, scan=False, head=False, layers=2, stacked=False):
    params = transformer_params(
        jax.random.key(0), 13, 16, 32, layers, 2, head=head, stacked=stacked, dtype=dtype
    )
    tokens = jax.random.randint(jax.random.key(1), (5, 9), 0, 13)
    return (lambda p, t: transformer_loss(p, t, scan)), (params, tokens)


def jnp_case(dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(2), 5)
    params = {
        "w1": jax.random.normal(keys[0], (8, 16), dtype),
        "b1": jnp.zeros(16, dtype),
        "w2": jax.random.normal(keys[1], (16, 4, 2), dtype) / 4,
    }
    x = jax.random.normal(keys[2], (7, 3, 8), dtype)

    def loss(p, x):
        h = jnp.tanh(x @ p["w1"] + p["b1"][None, None])
        return jnp.sum(jnp.einsum("btd,dhk->bthk", h, p["w2"]) ** 2)

    return loss, (params, x)


MODELS = {
    "mlp_nnx": mlp_case,
    "mlp_nnx_lax": lambda dtype: mlp_case(dtype, dot_general=jax.lax.dot_general),
    "transformer": lambda dtype: transformer_case(dtype, layers=1),
    "transformer_scan": lambda dtype: transformer_case(dtype, scan=True),
    "transformer_stacked": lambda dtype: transformer_case(dtype, stacked=True),
    "linear_cross_entropy": lambda dtype: transformer_case(dtype, head=True),
    "jnp": jnp_case,
}


MODEL_CASES = [
    ("mlp_nnx", jnp.float32),
    ("mlp_nnx_lax", jnp.float32),
    ("transformer", jnp.float32),
    ("jnp", jnp.float64),
    pytest.param("mlp_nnx", jnp.float64, marks=FULL),
    pytest.param("mlp_nnx_lax", jnp.float64, marks=FULL),
    pytest.param("transformer", jnp.float64, marks=FULL),
    pytest.param("transformer_scan", jnp.float32, marks=FULL),
    pytest.param("transformer_stacked", jnp.float32, marks=FULL),
    pytest.param("transformer_stacked", jnp.float64, marks=FULL),
    pytest.param("transformer_scan", jnp.float64, marks=FULL),
    pytest.param("linear_cross_entropy", jnp.float32, marks=FULL),
    pytest.param("linear_cross_entropy", jnp.float64, marks=FULL),
    pytest.param("jnp", jnp.float32, marks=FULL),
]


@pytest.mark.parametrize("model, dtype", MODEL_CASES)
def test_models_match_jax_privacy(model, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        fun, args = MODELS[model](dtype)
        options = dict(l2_clip_norm=0.5, return_grad_norms=True, return_values=True)
        if model.startswith("mlp_nnx"):
            options["batch_argnums"] = (1, 2)
        _compare(fun, args, TOLERANCE[dtype], **options)


OPTIONS = {
    "plain": dict(l2_clip_norm=1.0),
    "norms_values": dict(l2_clip_norm=1.0, return_values=True, return_grad_norms=True),
    "has_aux": dict(l2_clip_norm=1.0, has_aux=True, return_grad_norms=True),
    "group": dict(l2_clip_norm=1.0, keep_batch_dim=False),
    "rescale": dict(l2_clip_norm=0.3, rescale_to_unit_norm=True),
    "normalize_by": dict(l2_clip_norm=1.0, normalize_by=6.0),
    "clip_zero": dict(l2_clip_norm=0.0),
    "clip_zero_rescale": dict(l2_clip_norm=0.0, rescale_to_unit_norm=True),
    "clip_inf": dict(l2_clip_norm=jnp.inf),
    "clip_inf_rescale": dict(l2_clip_norm=jnp.inf, rescale_to_unit_norm=True),
    "dtype": dict(l2_clip_norm=1.0, dtype=jnp.float16),
}


OPTIONS_FULL = ("normalize_by", "clip_zero", "clip_inf_rescale", "clip_inf", "dtype")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=FULL) if n in OPTIONS_FULL else n for n in OPTIONS]
)
def test_every_option_matches_jax_privacy(name):
    fun, args = mlp_case()
    options = dict(OPTIONS[name], batch_argnums=(1, 2))
    if options.get("has_aux"):
        plain = fun
        fun = lambda p, x, y: (plain(p, x, y), {"x": x[:, :1] * 2, "norm": jnp.sum(x)})
    tolerance = 1e-3 if "dtype" in options else 1e-4
    _compare(fun, args, tolerance, **options)


def test_several_argnums_and_complex_parameters_match_jax_privacy():
    keys = jax.random.split(jax.random.key(4), 4)
    w = jax.random.normal(keys[0], (8, 5))
    z = jax.random.normal(keys[1], (5, 2)) + 1j * jax.random.normal(keys[2], (5, 2))
    x = jax.random.normal(keys[3], (6, 3, 8))

    def loss(w, z, x):
        return jnp.sum(jnp.abs(jnp.tanh(x @ w) @ z) ** 2)

    _compare(loss, (w, z, x), argnums=(0, 1), batch_argnums=2, l2_clip_norm=2.0)


@pytest.mark.parametrize("nan_safe", [True, pytest.param(False, marks=FULL)])
def test_non_finite_examples_as_jax_privacy(nan_safe):
    fun, (params, x, y) = mlp_case()
    x = x.at[2, 1, 3].set(jnp.nan).at[4, 0, 0].set(jnp.inf)
    options = dict(l2_clip_norm=1.0, batch_argnums=(1, 2), nan_safe=nan_safe)
    got = jaxmm.clipped_grad(fun, return_grad_norms=True, **options)(params, x, y)
    want = _peer().clipped_grad(fun, return_grad_norms=True, **options)(params, x, y)
    np.testing.assert_array_equal(np.isnan(got[1].grad_norms), np.isnan(want[1].grad_norms))
    for g, w in zip(jax.tree.leaves(got[0]), jax.tree.leaves(want[0])):
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(w))
        np.testing.assert_allclose(np.nan_to_num(g), np.nan_to_num(w), rtol=1e-4, atol=1e-6)


def test_padding_jit_and_prng_match_jax_privacy():
    fun, (params, x, y) = mlp_case()

    def noisy(p, x, y, key):
        return fun(p, x + 0.1 * jax.random.normal(key, x.shape), y)

    padding = jnp.array([False, True, False, False, True, False])
    options = dict(l2_clip_norm=0.5, batch_argnums=(1, 2), prng_argnum=3)
    key = jax.random.key(3)
    got = jax.jit(jaxmm.clipped_grad(noisy, **options))(
        params, x, y, key, is_padding_example=padding
    )
    want = _peer().clipped_grad(noisy, **options)(params, x, y, key, is_padding_example=padding)
    assert _relative_error(got, want) <= 1e-4


def test_sensitivity_as_jax_privacy():
    dp_accounting = pytest.importorskip("dp_accounting")
    f = lambda p, x: jnp.sum(p * x)
    for kw in (
        dict(l2_clip_norm=2.0, normalize_by=4.0),
        dict(l2_clip_norm=2.0, rescale_to_unit_norm=True),
    ):
        got, want = jaxmm.clipped_grad(f, **kw), _peer().clipped_grad(f, **kw)
        assert got.l2_norm_bound == want.l2_norm_bound
        for relation in dp_accounting.NeighboringRelation:
            assert got.sensitivity(relation) == want.sensitivity(relation)


BAD = {
    "normalize_by": (dict(l2_clip_norm=1.0, normalize_by=0.0), ()),
    "negative_clip": (dict(l2_clip_norm=-1.0), (jnp.ones(3), jnp.ones((2, 3)))),
    "overlap": (dict(l2_clip_norm=1.0, argnums=(0, 1)), ()),
    "empty_batch": (dict(l2_clip_norm=1.0, batch_argnums=()), ()),
    "negative_argnum": (dict(l2_clip_norm=1.0, argnums=-1), ()),
    "batch_sizes": (
        dict(l2_clip_norm=1.0, batch_argnums=(1, 2)),
        (jnp.ones(3), jnp.ones((3, 2)), jnp.ones((4, 2))),
    ),
    "missing_arg": (dict(l2_clip_norm=1.0, batch_argnums=2), (jnp.ones(3), jnp.ones((3, 2)))),
}


def _never_called(*args):
    raise AssertionError("fun ran before the arguments were checked")


@pytest.mark.parametrize("name", list(BAD))
def test_bad_arguments_raise_as_jax_privacy(name):
    options, args = BAD[name]
    with pytest.raises(ValueError) as ours:
        jaxmm.clipped_grad(_never_called, **options)(*args)
    # jax-privacy runs fun before it checks the clip norm, and adds the group axis (IndexError)
    # before it counts the arguments: the same type (MissingArgumentError is both), the same text.
    fun = (lambda p, x: jnp.sum(p[None] * x)) if name == "negative_clip" else _never_called
    with pytest.raises((ValueError, IndexError)) as theirs:
        _peer().clipped_grad(fun, **options)(*args)
    assert isinstance(ours.value, type(theirs.value))
    if isinstance(theirs.value, ValueError):
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(TypeError, match="int32"):
        jaxmm.clipped_grad(_never_called, l2_clip_norm=1.0)(
            jnp.ones(3, jnp.int32), jnp.ones((2, 3))
        )


def _tapped_names(fun, args, batch_argnums=1):
    options = _Options(
        (0,),
        True,
        (batch_argnums,) if isinstance(batch_argnums, int) else batch_argnums,
        False,
        True,
        1.0,
        False,
        True,
        None,
        None,
        None,
    )
    batch = jax.tree.leaves(args[1])[0].shape[0]
    traced = trace(fun, options, args, {}, batch)
    paths = [
        jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(args[0])[0]
    ]
    return {paths[k] for k in traced.tapped}


def test_which_parameters_are_read_off_products():
    fun, args = transformer_case()
    layers = {f"['layers'][{i}]['{n}']" for i in range(2) for n in ("wq", "wk", "wv", "wo")}
    layers |= {f"['layers'][{i}]['{n}']" for i in range(2) for n in ("up", "down")}
    # the tied embedding (a gather and the output layer's product) is read off both, with the
    # cross term; LayerNorm scales and biases get per-example gradients.
    assert _tapped_names(fun, args) == layers | {"['embed']"}
    # weights stacked for lax.scan: each step reads its own slice, read off the body's products;
    # stacked inside the loss (jnp.stack of the layers): per-example gradients; so does the
    # output layer inside linear_cross_entropy's own custom_vjp.
    stacked = {f"['layers']['{n}']" for n in ("wq", "wk", "wv", "wo", "up", "down")}
    assert _tapped_names(*transformer_case(stacked=True)) == stacked | {"['embed']"}
    assert _tapped_names(*transformer_case(scan=True)) == {"['embed']"}
    assert _tapped_names(*transformer_case(head=True)) == layers | {"['embed']"}
    kernels = {"['first']['kernel'].value", "['second']['kernel'].value"}
    for dot_general in (jaxmm.dot_general, jax.lax.dot_general):  # Flax's own products too
        fun, args = mlp_case(dot_general=dot_general)
        assert _tapped_names(fun, args, (1, 2)) == kernels


EMBEDDINGS = {
    "gather": lambda p, t: jnp.sum(jnp.sin(p["e"][t])),
    "untied": lambda p, t: jnp.sum(jnp.sin(jnp.einsum("btd,dv->btv", jnp.sin(p["e"][t]), p["h"]))),
    "tied": lambda p, t: jnp.sum(jnp.sin(jnp.einsum("btd,vd->btv", jnp.sin(p["e"][t]), p["e"]))),
    "tied_transposed": lambda p, t: jnp.sum(
        jnp.sin(jaxmm.einsum("btd,dv->btv", jnp.sin(p["e"][t]), p["e"].T))
    ),
    "tied_lhs": lambda p, t: jnp.sum(
        jnp.sin(jaxmm.einsum("vd,btd->btv", p["e"], jnp.sin(jnp.take(p["e"], t, axis=0))))
    ),
}


@pytest.mark.parametrize(
    "name", [n if n == "tied" else pytest.param(n, marks=FULL) for n in EMBEDDINGS]
)
def test_embedding_norms_equal_vmap_of_grad(name):
    keys = jax.random.split(jax.random.key(0), 2)
    params = {"e": jax.random.normal(keys[0], (7, 3)), "h": jax.random.normal(keys[1], (3, 7))}
    tokens = jnp.array([[1, 2, 1, 5], [0, 0, 0, 6], [3, 4, 5, 6]])
    fun = EMBEDDINGS[name]
    got = jax.jit(jaxmm.clipped_grad(fun, l2_clip_norm=1.0, return_grad_norms=True))(params, tokens)
    grads = jax.vmap(jax.grad(fun), (None, 0))(params, tokens[:, None])
    leaves = [g.reshape(3, -1) for g in jax.tree.leaves(grads)]
    norms = jnp.sqrt(sum(jnp.sum(g**2, 1) for g in leaves))
    np.testing.assert_allclose(got[1].grad_norms, norms, rtol=1e-5)
    assert "['e']" in _tapped_names(fun, (params, tokens))


def _per_example_arrays(width, hidden, sequence, batch=8):
    """Shapes of the compiled clipped step's arrays that hold a [batch, width, hidden] gradient."""
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w": jax.random.normal(keys[0], (width, hidden)),
        "v": jax.random.normal(keys[1], (hidden, width)),
    }
    x = jax.random.normal(keys[2], (batch, sequence, width))
    loss = lambda p, x: jnp.sum(jaxmm.matmul(jnp.tanh(jaxmm.matmul(x, p["w"])), p["v"]) ** 2)
    step = jax.jit(jaxmm.clipped_grad(loss, l2_clip_norm=1.0))
    text = step.lower(params, x).compile().as_text()
    shapes = (
        f"[{batch},{width},{hidden}]",
        f"[{batch},{hidden},{width}]",
        f"[{batch},1,{width},{hidden}]",
    )
    return sum(text.count(s) for s in shapes)


def test_no_per_example_gradient_where_the_gram_form_is_cheaper():
    # T = 4 tokens, 64 x 256 weights: the Gram form ([B, 4, 4]) is taken, no [B, 64, 256] array.
    assert _per_example_arrays(64, 256, 4) == 0
    # T = 512 tokens, 16 x 16 weights: forming the [B, 16, 16] gradients is cheaper, and taken.
    assert _per_example_arrays(16, 16, 512) > 0


@pytest.mark.full
def test_dp_sgd_example_trains_and_accounts():
    pytest.importorskip("dp_accounting")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "dp_sgd.py"
    spec = importlib.util.spec_from_file_location("dp_sgd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    epsilon = module.main()
    assert 0 < epsilon < 20


@pytest.mark.full
def test_compiled_temporaries_near_a_non_private_step():
    from jaxmm import _clipping_benchmark

    (row,) = _clipping_benchmark.memory(quick=True)
    # measured 1.22x (and 1.25x at width 1024, docs/clipping.md); vmap of grad 5x here
    assert row["jaxmm.clipped_grad"] <= 1.3 * row["non-private"]
    vmapped = row.get("jax-privacy", row.get("vmap of grad"))
    assert row["jaxmm.clipped_grad"] <= vmapped / 3


def test_scanned_stacked_layers_equal_vmap_of_grad():
    keys = jax.random.split(jax.random.key(6), 3)
    params = {
        "w": jax.random.normal(keys[0], (3, 8, 8)) / 3,
        "b": jnp.zeros((3, 8)),
        "v": jax.random.normal(keys[1], (3, 8, 8)) / 3,
    }
    x = jax.random.normal(keys[2], (5, 4, 8))

    def loss(p, x):
        def layer(h, weights):
            w, b, v = weights
            return h + jaxmm.matmul(jnp.tanh(h @ w + b[None, None]), v), None

        return jnp.sum(lax.scan(layer, x, (p["w"], p["b"], p["v"]))[0] ** 2)

    assert _tapped_names(loss, (params, x)) == {"['v']", "['w']"}  # b: per-example gradients
    got = jax.jit(jaxmm.clipped_grad(loss, l2_clip_norm=50.0, return_grad_norms=True))(params, x)
    grads = jax.vmap(jax.grad(loss), (None, 0))(params, x[:, None])
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(5, -1) ** 2, 1) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(got[1].grad_norms, norms, rtol=1e-5)
    factors = jnp.minimum(1.0, 50.0 / norms)
    want = jax.tree.map(lambda g: jnp.tensordot(factors, g, 1), grads)
    assert _relative_error(got[0], want) <= 1e-5


@pytest.mark.parametrize("side", ["rhs", "lhs"])
@pytest.mark.parametrize("lhs_shape, rhs_shape, dims", DOT_GENERAL_CASES)
def test_norms_of_any_dot_general_equal_vmap_of_grad(lhs_shape, rhs_shape, dims, side):
    """The parameter as either operand of every case of the dot_general table; the example's
    operand gets the batch axis (keep_batch_dim=False: each example has the table's shape)."""
    keys = jax.random.split(jax.random.key(5), 2)
    if side == "lhs":
        param_shape, example_shape = lhs_shape, rhs_shape
        product = lambda w, x: jax.lax.dot_general(w, x, dims)
    else:
        param_shape, example_shape = rhs_shape, lhs_shape
        product = lambda w, x: jax.lax.dot_general(x, w, dims)
    w = jax.random.normal(keys[0], param_shape)
    xs = jax.random.normal(keys[1], (3, *example_shape))
    loss = lambda w, x: jnp.sum(jnp.sin(product(w, x)))
    clipped = jaxmm.clipped_grad(
        loss, l2_clip_norm=1.0, keep_batch_dim=False, return_grad_norms=True
    )
    got = jax.jit(clipped)(w, xs)
    grads = jax.vmap(jax.grad(loss), (None, 0))(w, xs)
    norms = jnp.sqrt(jnp.sum(grads.reshape(3, -1) ** 2, axis=1))
    np.testing.assert_allclose(got[1].grad_norms, norms, rtol=1e-5, atol=1e-6)
    want = jnp.tensordot(jnp.minimum(1.0, 1.0 / jnp.where(norms > 0, norms, 1.0)), grads, 1)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
