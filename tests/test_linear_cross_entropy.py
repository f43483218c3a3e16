"""linear_cross_entropy against the naive formulation (the logits ``x @ w`` materialised, optax's
loss, JAX's autodiff): values and VJPs for every option, errors, transformations, memory."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from reference import assert_close, saved_arrays, x64_context

import jaxmm
from jaxmm._cross_entropy_blocks import BLOCK_ELEMENTS
from jaxmm.testing import check_vjp

D, V = 16, 300  # V is not a multiple of the chunk (128): the last chunk overlaps the one before


def naive(
    x,
    w,
    labels,
    *,
    where=None,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    logit_soft_cap=None,
    precision=None,
    chunk_size=None,
):
    """The loss written the obvious way, with the whole ``[..., V]`` logits."""
    del chunk_size
    accumulation = jnp.promote_types(x.dtype, jnp.float32)
    z = jnp.matmul(x, w, precision=precision, preferred_element_type=accumulation)
    if logit_soft_cap is not None:
        z = logit_soft_cap * jnp.tanh(z / logit_soft_cap)
    vocab = w.shape[1]
    mask = jnp.ones(labels.shape, bool) if where is None else where
    valid = (labels >= 0) & (labels < vocab)
    targets = jax.nn.one_hot(jnp.where(valid, labels, 0), vocab, dtype=z.dtype)
    losses = optax.softmax_cross_entropy(z, optax.smooth_labels(targets, label_smoothing))
    losses = losses + z_loss * jax.nn.logsumexp(z, axis=-1) ** 2
    # A kept token with an out-of-range label: NaN, and NaN through its logits' gradient.
    losses = losses + jnp.where(valid | ~mask, 0.0, jnp.nan) * jnp.sum(z, axis=-1)
    losses = jnp.where(mask, losses, 0.0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return jnp.sum(losses)
    return jnp.mean(losses, where=mask)


def _data(rng, tokens=(3, 5), dtype=jnp.float32, vocab=V, masked=False):
    x = jnp.asarray(rng.standard_normal((*tokens, D)), dtype)
    w = jnp.asarray(rng.standard_normal((D, vocab)) / 2, dtype)  # logits of std 2: caps matter
    labels = jnp.asarray(rng.integers(0, vocab, tokens), jnp.int32)
    where = jnp.asarray(rng.random(tokens) < 0.6) if masked else None
    return x, w, labels, where


def _check(rng, options, dtype=jnp.float32, tokens=(3, 5), vocab=V, masked=False, **tolerance):
    """check_vjp (random cotangent, jitted) of jaxmm against the naive loss, x and w
    differentiated, labels and mask fixed."""
    x, w, labels, where = _data(rng, tokens, dtype, vocab, masked)

    def ours(x, w):
        return jaxmm.linear_cross_entropy(x, w, labels, where=where, **options)

    def theirs(x, w):
        return naive(x, w, labels, where=where, **options)

    check_vjp(ours, theirs, x, w, modes=("jit",), **tolerance)


OPTIONS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 0.01},
    "soft_cap": {"logit_soft_cap": 2.0},
    "all": {"label_smoothing": 0.2, "z_loss": 0.05, "logit_soft_cap": 3.0},
    "highest": {"precision": jax.lax.Precision.HIGHEST, "label_smoothing": 1.0},
}
REDUCTIONS = ["mean", "sum", "none"]

# The options change each token's loss and its dU; the reduction and the mask change only each
# token's cotangent g[n]. So every option is checked per token ("none", a random cotangent per
# token, some tokens dropped), and every reduction with and without a mask for all options at once.


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_matches_the_naive_loss(option, rng):
    _check(rng, dict(OPTIONS[option], reduction="none", chunk_size=64), masked=True)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_of_a_scalar_loss_matches_the_naive_loss(option, reduction, rng):
    # The gradients formed in the forward pass, scaled by a random cotangent in the backward
    # pass; tiles of 4 of the 15 tokens (the last one moved back over rows already counted).
    options = dict(OPTIONS[option], reduction=reduction, chunk_size=(4, 64))
    _check(rng, options, masked=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_every_reduction_with_and_without_where(reduction, rng):
    x, w, labels, where = _data(rng, masked=True)
    options = dict(OPTIONS["all"], reduction=reduction)
    check_vjp(
        lambda x, w: [
            jaxmm.linear_cross_entropy(x, w, labels, where=m, chunk_size=64, **options)
            for m in (None, where)
        ],
        lambda x, w: [naive(x, w, labels, where=m, **options) for m in (None, where)],
        x,
        w,
        modes=("jit",),
    )


def test_any_chunk_size_gives_the_same_loss(rng):
    x, w, labels, where = _data(rng, masked=True)
    options = dict(OPTIONS["all"], reduction="none", where=where)
    chunk_sizes = [1, 7, 64, 299, 1000, None]  # 1000 and None: one chunk of 300
    check_vjp(
        lambda x, w: [
            jaxmm.linear_cross_entropy(x, w, labels, chunk_size=c, **options) for c in chunk_sizes
        ],
        lambda x, w: [naive(x, w, labels, **options)] * len(chunk_sizes),
        x,
        w,
        modes=("jit",),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs(dtype, reduction, rng):
    # The loss is float32, the gradients come in the inputs' dtype, within its rounding.
    options = dict(OPTIONS["all"], reduction=reduction, chunk_size=(4, 64))
    _check(rng, options, dtype=dtype, masked=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float64_inputs_accumulate_in_float64(reduction, rng):
    with x64_context(jnp.float64):
        options = dict(OPTIONS["all"], reduction=reduction, chunk_size=(4, 64))
        _check(rng, options, dtype=jnp.float64, masked=True)


def test_mixed_dtypes_promote_and_cast_back(rng):
    x, w, labels, _ = _data(rng)
    x = x.astype(jnp.bfloat16)
    check_vjp(
        lambda x, w: jaxmm.linear_cross_entropy(x, w, labels, reduction="none"),
        lambda x, w: naive(x.astype(w.dtype), w, labels, reduction="none"),
        x,
        w,
        modes=("jit",),
    )


def test_every_token_masked(rng):
    x, w, labels, _ = _data(rng)
    nothing = jnp.zeros(labels.shape, bool)
    step = jax.jit(
        jax.value_and_grad(jaxmm.linear_cross_entropy, argnums=(0, 1)), static_argnames="reduction"
    )
    for reduction, expected in (("mean", np.nan), ("sum", 0.0)):
        loss, grads = step(x, w, labels, where=nothing, reduction=reduction)
        np.testing.assert_equal(np.asarray(loss), expected)  # 0/0 for the mean, as jnp.mean's
        for grad in grads:  # nothing reaches the loss: zero, never NaN
            np.testing.assert_array_equal(grad, jnp.zeros_like(grad))


def test_a_single_token_and_small_vocabularies(rng):
    # One token (x of shape (d,) and (1, 1, d)); V = 1; V = 50, fewer than a chunk.
    cases = [(_data(rng, ())[:3], "mean"), (_data(rng, (1, 1))[:3], "none")]
    cases += [(_data(rng, (6,), vocab=1)[:3], "none"), (_data(rng, (6,), vocab=50)[:3], "sum")]
    arrays = [(x, w) for (x, w, _), _ in cases]

    def losses(loss):
        def all_cases(arrays):
            return [
                loss(x, w, labels, reduction=reduction, chunk_size=64)
                for (x, w), ((_, _, labels), reduction) in zip(arrays, cases)
            ]

        return all_cases

    check_vjp(losses(jaxmm.linear_cross_entropy), losses(naive), arrays, modes=("jit",))


def test_out_of_range_labels_give_nan_never_a_number(rng):
    x, w, _, _ = _data(rng, tokens=(5,))
    labels = jnp.array([3, -1, V, -100, 7])
    where = jnp.array([True, True, True, False, True])  # -100 is padding, dropped

    def ours(x, w):
        return [
            jaxmm.linear_cross_entropy(x, w, labels, where=where, reduction=r) for r in REDUCTIONS
        ]

    mean, total, losses = jax.jit(ours)(x, w)
    losses = np.asarray(losses)
    assert np.isfinite(losses[[0, 4]]).all() and np.isnan(losses[[1, 2]]).all()
    assert losses[3] == 0
    assert np.isnan(mean) and np.isnan(total)
    # NaN gradients too, for the rows of x of those tokens (and so all of w's gradient).
    check_vjp(
        ours,
        lambda x, w: [naive(x, w, labels, where=where, reduction=r) for r in REDUCTIONS],
        x,
        w,
        modes=("jit",),
    )
    dx = np.asarray(jax.jit(jax.grad(lambda x: ours(x, w)[0]))(x))
    assert np.isnan(dx[[1, 2]]).all() and np.isfinite(dx[[0, 3, 4]]).all()


ERRORS = [
    (dict(x=np.ones((4, 3), np.int32)), TypeError, "floating dtype for x, got x of dtype int32"),
    (dict(w=np.ones((3, 5), bool)), TypeError, "floating dtype for w"),
    (dict(labels=np.zeros(4, np.float32)), TypeError, "integer dtype for labels"),
    (dict(where=np.ones(4, np.int32)), TypeError, "boolean dtype for where"),
    (dict(x=[[1.0, 2.0, 3.0]]), TypeError, "requires array or scalar arguments, got list"),
    (
        dict(w=np.ones((4, 5), np.float32)),
        ValueError,
        "got x of shape (4, 3) and w of shape (4, 5)",
    ),
    (dict(w=np.ones((3, 5, 1), np.float32)), ValueError, "w of shape (d, V)"),
    (dict(w=np.ones((3, 0), np.float32)), ValueError, "at least one entry"),
    (dict(labels=np.zeros((4, 1), np.int32)), ValueError, "labels of shape (4, 1)"),
    (dict(where=np.ones(3, bool)), ValueError, "where of shape (3,)"),
    (dict(reduction="max"), ValueError, "reduction must be 'mean', 'sum' or 'none', got 'max'"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing must be in [0, 1], got 1.5"),
    (dict(z_loss=-1.0), ValueError, "z_loss must be >= 0"),
    (dict(logit_soft_cap=0.0), ValueError, "logit_soft_cap must be None or > 0"),
    (dict(chunk_size=0), ValueError, "chunk_size must be positive"),
    (dict(chunk_size=2.5), TypeError, "chunk_size must be None or an int"),
    (dict(chunk_size=(4, 0)), ValueError, "chunk_size must be positive"),
    (dict(axis_name=3), TypeError, "axis_name must be None, a mesh axis name or a tuple"),
]


@pytest.mark.parametrize("arguments, error, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_offending_argument(arguments, error, message):
    arguments = dict(
        dict(x=np.ones((4, 3), np.float32), w=np.ones((3, 5), np.float32), labels=np.zeros(4, int)),
        **arguments,
    )
    x, w, labels = (arguments.pop(k) for k in ("x", "w", "labels"))
    with pytest.raises(error, match=None) as raised:
        jaxmm.linear_cross_entropy(x, w, labels, **arguments)
    assert message in str(raised.value)


def test_checks_run_before_any_work():
    # Under jit the errors come at trace time, from shapes alone.
    def bad(x, w, labels):
        return jaxmm.linear_cross_entropy(x, w, labels)

    with pytest.raises(ValueError, match="labels and where of shape"):
        jax.eval_shape(bad, jnp.ones((4, 3)), jnp.ones((3, 5)), jnp.zeros(5, int))


def test_forward_mode_is_refused_clearly(rng):
    x, w, labels, _ = _data(rng)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(lambda x: jaxmm.linear_cross_entropy(x, w, labels), (x,), (x,))


@pytest.mark.parametrize("chunk_size", [(2, 64), pytest.param(64, marks=pytest.mark.full)])
@pytest.mark.parametrize("reduction", ["mean", pytest.param("sum", marks=pytest.mark.full)])
def test_transformations(reduction, chunk_size, rng):
    x, w, labels, where = _data(rng, masked=True)
    options = dict(OPTIONS["all"], reduction=reduction)

    def ours(x, w, labels):  # 1.7: a cotangent other than one reaches the loss
        return 1.7 * jaxmm.linear_cross_entropy(x, w, labels, chunk_size=chunk_size, **options)

    def theirs(x, w, labels):
        return 1.7 * naive(x, w, labels, **options)

    for transform in (
        lambda f: jax.jit(jax.value_and_grad(jax.checkpoint(f), argnums=(0, 1))),
        # Per-sequence losses of a batch: vmap over x's and labels' leading axis.
        lambda f: jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1)), (0, None, 0))),
    ):
        jax.tree.map(assert_close, transform(ours)(x, w, labels), transform(theirs)(x, w, labels))

    # lax.scan over microbatches, accumulating the loss: one chunked loop per step.
    def scanned(loss):
        def total(w):
            def step(carry, batch):
                return carry + loss(batch[0], w, batch[1]), None

            return jax.lax.scan(step, jnp.zeros((), jnp.float32), (x, labels))[0]

        return jax.jit(jax.value_and_grad(total))(w)

    jax.tree.map(assert_close, scanned(ours), scanned(theirs))


def test_the_backward_pass_keeps_no_logits(rng):
    x, w, labels, where = _data(rng, tokens=(64,), vocab=1000)

    def saved(reduction):
        def loss(x, w):
            return jaxmm.linear_cross_entropy(x, w, labels, where=where, reduction=reduction)

        return sorted(a.shape for a in saved_arrays(jax.vjp(loss, x, w)[1]))

    # A scalar loss: dX and dW for a unit cotangent, the size of x and w; nothing of [tokens, V].
    assert saved("mean") == saved("sum") == sorted([(64, D), (D, 1000)])
    # Per-token losses: x, w, labels, mask and one log-sum-exp per token.
    assert saved("none") == sorted([(64, D), (D, 1000), (64,), (64,), (64,)])


def _temp_bytes(loss, tokens, d, vocab, **options):
    args = (
        jax.ShapeDtypeStruct((tokens, d), jnp.float32),
        jax.ShapeDtypeStruct((d, vocab), jnp.float32),
        jax.ShapeDtypeStruct((tokens,), jnp.int32),
    )
    step = jax.jit(jax.value_and_grad(lambda x, w, l: loss(x, w, l, **options), argnums=(0, 1)))
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes


def _summed(reduction):
    """The loss as a scalar to differentiate: per-token losses summed with random weights."""

    def loss(x, w, labels, **options):
        losses = jaxmm.linear_cross_entropy(x, w, labels, reduction=reduction, **options)
        if reduction != "none":
            return 1.7 * losses  # a non-unit cotangent reaches the loss
        return jnp.sum(losses * jnp.linspace(0.5, 2.0, losses.shape[0]))

    return loss


@pytest.mark.parametrize("reduction", ["mean", pytest.param("sum", marks=pytest.mark.full), "none"])
def test_compiled_temporaries_are_a_fixed_block_whatever_the_vocabulary(reduction):
    # Compiled only (nothing runs): the jitted loss and both gradients. By default a tile holds
    # its whole row of logits, BLOCK_ELEMENTS of them: 2^22 / V tokens.
    tokens, d, block = 8192, 256, 4 * BLOCK_ELEMENTS
    loss = _summed(reduction)
    ours = {v: _temp_bytes(loss, tokens, d, v) for v in (8192, 32768, 131072)}
    # A tile's row and chunk-sized blocks; the recomputing backward's blocks and dX's rows. (The
    # XLA of JAX 0.8.0 keeps a little more: 2.1 blocks for "mean" at V = 8192.)
    for v, temp in ours.items():
        assert temp <= (2.25 if reduction != "none" else 6) * block, (v, temp)
    if reduction != "none":  # 0.025 of the logits at 32768, whatever V (0.032 with JAX 0.8.0)
        share = 0.03 if jax.__version_info__ >= (0, 10) else 0.035
        assert ours[32768] <= share * 4 * tokens * 32768
        assert ours[131072] <= ours[32768]
    assert _temp_bytes(naive, tokens, d, 8192) >= 4 * tokens * 8192  # autodiff keeps the logits
    # Smaller blocks, smaller temporaries (the differentiated scalar loss's rows stay whole).
    smaller = _temp_bytes(loss, tokens, d, 32768, chunk_size=(16, 512))
    assert smaller < ours[32768]


def _products(function, *args):
    """The number of dot_general ops in the lowered program (each loop body once)."""
    return jax.jit(function).lower(*args).as_text().count("dot_general")


@pytest.mark.parametrize("chunk_size", [None, (8, 64)])
def test_products_per_block(chunk_size, rng):
    # One product per block undifferentiated; a scalar loss differentiated: the logits, dU Wᵀ and
    # Xᵀ dU, all in its forward pass (nothing is recomputed); per-token losses: the forward's
    # product and three in the backward pass, which recomputes the logits.
    x, w, labels, _ = _data(rng, tokens=(40,))
    options = dict(chunk_size=chunk_size)
    for reduction, undifferentiated, differentiated, backward in (
        ("mean", 1, 3, 0),
        ("sum", 1, 3, 0),
        ("none", 1, 4, 3),
    ):
        loss = _summed(reduction)
        assert _products(partial(loss, **options), x, w, labels) == undifferentiated
        step = jax.value_and_grad(partial(loss, **options), argnums=(0, 1))
        assert _products(step, x, w, labels) == differentiated, reduction
        # The backward pass alone: a scalar's scales the kept dX and dW, no product.
        _, pullback = jax.vjp(lambda x, w: loss(x, w, labels, **options), x, w)
        jaxpr = str(jax.make_jaxpr(pullback)(jnp.float32(0.3)))
        assert jaxpr.count("dot_general") == backward, reduction


def test_a_gradient_not_asked_for_is_not_computed(rng):
    # The forward pass forms dX and dW; under jit XLA drops the product of the one not returned
    # (counted in the compiled program: the logits, and dU Wᵀ or Xᵀ dU).
    x, w, labels, _ = _data(rng, tokens=(40,))
    for argnums, products in ((0, 2), (1, 2), ((0, 1), 3)):
        step = jax.jit(jax.grad(jaxmm.linear_cross_entropy, argnums=argnums))
        assert step.lower(x, w, labels).compile().as_text().count(" dot(") == products, argnums


class _LanguageModel(nnx.Module):
    def __init__(self, vocab, width, rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.mix = nnx.Linear(width, width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, use_bias=False, rngs=rngs)

    def hidden(self, tokens):
        return jnp.tanh(self.mix(self.embed(tokens)))


def test_flax_nnx_language_model_head_and_tied_embeddings(rng):
    model = _LanguageModel(V, D, nnx.Rngs(0))
    tokens = jnp.asarray(rng.integers(0, V, (2, 9)))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def loss_and_grads(loss):
        @nnx.jit
        @nnx.value_and_grad
        def both(model):
            hidden = model.hidden(inputs)
            head = loss(hidden, model.head.kernel[...], targets)
            # Tied embeddings: the output weight is the embedding table, transposed.
            tied = loss(hidden, model.embed.embedding[...].T, targets, reduction="sum")
            return head + tied

        return both(model)

    (loss, grads), (ref_loss, ref_grads) = (
        loss_and_grads(jaxmm.linear_cross_entropy),
        (loss_and_grads(naive)),
    )
    assert_close(loss, ref_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        assert_close(a, b)
