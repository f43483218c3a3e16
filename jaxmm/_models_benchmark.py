"""What jaxmm costs in the structures models are built from, against the same model with ``jnp``:
layers stacked under ``lax.scan`` (an MLP and a transformer block, with and without
``jax.checkpoint``; exact, and with the activations saved narrowed) and a transformer block
written per token under nested ``jax.vmap``. Part of ``python -m jaxmm``; the tables in
``docs/residuals.md`` and ``docs/performance.md`` come from it."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

ProductFunction = Callable[..., jax.Array]

# By quick (True) or not: (layers, batch, width, hidden), (layers, batch, sequence, width) and
# (batch, sequence, width) of the per-token block. Widths are multiples of the 64-wide heads.
MLP_SIZES = {True: (4, 256, 256, 1024), False: (8, 1024, 512, 2048)}
TRANSFORMER_SIZES = {True: (2, 2, 64, 128), False: (4, 4, 256, 256)}
PER_TOKEN_SIZES = {True: (2, 32, 128), False: (4, 128, 256)}

# (name, residual_dtype of jaxmm's products: activations (lhs) narrowed, weights as they are)
VARIANTS: tuple[tuple[str, Any], ...] = (
    ("jaxmm exact", None),  # first: the others' trained loss is relative to it
    ("jnp", None),
    ("jaxmm bf16 act.", (jnp.bfloat16, None)),
    ("jaxmm f16 act.", (jnp.float16, None)),
    ("jaxmm e4m3 act.", (jnp.float8_e4m3fn, None)),
    ("jaxmm e5m2 act.", (jnp.float8_e5m2, None)),
)


def products(variant: str, residual_dtype: Any) -> tuple[ProductFunction, ProductFunction]:
    """(matmul, einsum) of a variant."""
    if variant == "jnp":
        return jnp.matmul, jnp.einsum
    import jaxmm

    return (
        partial(jaxmm.matmul, residual_dtype=residual_dtype),
        partial(jaxmm.einsum, residual_dtype=residual_dtype),
    )


def mlp_layer(matmul: ProductFunction, h: jax.Array, w: tuple[jax.Array, jax.Array]) -> jax.Array:
    up, down = w
    return h + matmul(jax.nn.gelu(matmul(h, up)), down)


def transformer_layer(
    matmul: ProductFunction, einsum: ProductFunction, h: jax.Array, w: tuple[jax.Array, ...]
) -> jax.Array:
    """Pre-norm block on ``h`` of shape (batch, sequence, width): causal multi-head attention,
    then an MLP; every product through ``matmul`` / ``einsum``."""
    qkv, out, up, down = w
    heads = qkv.shape[-1] // 3 // 64
    x = _norm(h)
    q, k, v = jnp.split(matmul(x, qkv), 3, axis=-1)
    q, k, v = (t.reshape(*t.shape[:-1], heads, 64) for t in (q, k, v))
    scores = einsum("bqhd,bkhd->bhqk", q, k) / 8.0
    causal = jnp.tril(jnp.ones(scores.shape[-2:], bool))
    attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
    mixed = einsum("bhqk,bkhd->bqhd", attention, v).reshape(h.shape)
    h = h + matmul(mixed, out)
    return h + matmul(jax.nn.gelu(matmul(_norm(h), up)), down)


def _norm(x: jax.Array) -> jax.Array:
    return (x - x.mean(-1, keepdims=True)) * lax.rsqrt(x.var(-1, keepdims=True) + 1e-6)


def scanned_loss(layer: Callable[..., jax.Array], checkpoint: bool) -> Callable[..., jax.Array]:
    def step(h: jax.Array, w: Any) -> tuple[jax.Array, None]:
        return layer(h, w), None

    body = jax.checkpoint(step) if checkpoint else step

    def loss(weights: Any, x: jax.Array, target: jax.Array) -> jax.Array:
        return jnp.mean((lax.scan(body, x, weights)[0] - target) ** 2)

    return loss


def model(
    kind: str, quick: bool
) -> tuple[Callable[..., Callable[..., jax.Array]], Any, tuple[Any, ...]]:
    """(layer factory taking the variant's products, weights, (x, target)) of a model."""
    keys = jax.random.split(jax.random.key(0), 6)
    if kind == "MLP":
        layers, batch, width, hidden = MLP_SIZES[quick]
        weights = (
            jax.random.normal(keys[0], (layers, width, hidden)) / width**0.5,
            jax.random.normal(keys[1], (layers, hidden, width)) / hidden**0.5,
        )
        x = jax.random.normal(keys[2], (batch, width))
        return (lambda mm, es: partial(mlp_layer, mm)), weights, (x, jnp.tanh(x))
    layers, batch, sequence, width = TRANSFORMER_SIZES[quick]
    shapes = [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)]
    weights = tuple(
        jax.random.normal(key, (layers, *shape)) / shape[0] ** 0.5
        for key, shape in zip(keys, shapes)
    )
    x = jax.random.normal(keys[5], (batch, sequence, width))
    return (lambda mm, es: partial(transformer_layer, mm, es)), weights, (x, jnp.tanh(x))


@dataclasses.dataclass
class MemoryRow:
    model: str
    checkpoint: bool
    variant: str
    residual_bytes: int  # what the forward pass hands the backward pass, arguments excluded
    temp_bytes: int  # XLA's compiled temporaries of the jitted gradient
    loss_after_training: float  # relative to exact training's (on the quick model's sizes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def residual_bytes(loss: Callable[..., jax.Array], *args: Any) -> int:
    from ._structure import saved_residuals, type_bytes

    return sum(
        type_bytes(kind)
        for kind, origin in saved_residuals(loss, *args)
        if "from the argument" not in origin
    )


def _train(
    loss: Callable[..., jax.Array], weights: Any, data: tuple[Any, ...], steps: int
) -> float:
    grad = jax.jit(jax.value_and_grad(loss))
    value = jnp.inf
    for _ in range(steps):
        value, g = grad(weights, *data)
        weights = jax.tree.map(lambda w, d: w - 0.05 * d, weights, g)
    return float(loss(weights, *data))


TRAIN_STEPS = 20


def memory(quick: bool = False) -> list[MemoryRow]:
    rows = []
    for kind in ("MLP", "transformer"):
        make_layer, weights, data = model(kind, quick)
        _, small_weights, small_data = model(kind, True)  # training: the quick sizes
        trained_losses: dict[str, float] = {}
        for checkpoint in (False, True):
            for variant, residual_dtype in VARIANTS:
                loss = scanned_loss(make_layer(*products(variant, residual_dtype)), checkpoint)
                compiled = jax.jit(jax.grad(loss)).lower(weights, *data).compile()
                if variant not in trained_losses:  # (jax.checkpoint changes no gradient)
                    trained_losses[variant] = _train(loss, small_weights, small_data, TRAIN_STEPS)
                trained = trained_losses[variant] / trained_losses["jaxmm exact"]
                rows.append(
                    MemoryRow(
                        kind,
                        checkpoint,
                        variant,
                        residual_bytes(loss, weights, *data),
                        _temp_bytes(compiled),
                        trained,
                    )
                )
    return rows


def per_token_block(matmul: ProductFunction, einsum: ProductFunction) -> Callable[..., jax.Array]:
    """A transformer block written for one sequence position and mapped with nested vmap over
    the sequence and the batch (attention reads the whole sequence's keys and values)."""

    def token(x: jax.Array, keys: jax.Array, values: jax.Array, w: Any) -> jax.Array:
        qkv, out, up, down = w
        heads = keys.shape[1]
        q = matmul(x, qkv[:, : qkv.shape[1] // 3]).reshape(heads, -1)
        scores = einsum("hd,khd->hk", q, keys) / 8.0
        mixed = einsum("hk,khd->hd", jax.nn.softmax(scores, axis=-1), values).reshape(-1)
        h = x + matmul(mixed, out)
        return h + matmul(jax.nn.gelu(matmul(h, up)), down)

    def sequence(xs: jax.Array, w: Any) -> jax.Array:
        kv = jax.vmap(lambda x: matmul(x, w[0][:, w[0].shape[1] // 3 :]))(xs)
        keys, values = (t.reshape(xs.shape[0], -1, 64) for t in jnp.split(kv, 2, axis=-1))
        return jax.vmap(token, (0, None, None, None))(xs, keys, values, w)

    def loss(w: Any, xs: jax.Array) -> jax.Array:
        return jnp.mean(jnp.tanh(jax.vmap(sequence, (0, None))(xs, w)) ** 2)

    return loss


@dataclasses.dataclass
class StepRow:
    case: str
    jaxmm_ms: float
    jnp_ms: float
    ratio: float
    jaxmm_temp_bytes: int
    jnp_temp_bytes: int
    jaxmm_dots: int
    jnp_dots: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _temp_bytes(compiled: Any) -> int:
    return int(compiled.memory_analysis().temp_size_in_bytes)


def _interleaved_ms(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    for fn in fns:
        jax.block_until_ready(fn())
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples.append(time.perf_counter() - start)
    return [1e3 * statistics.median(samples) for samples in times]


def steps(quick: bool = False) -> list[StepRow]:
    """Training-step (jit of grad) time and compiled temporaries, jaxmm exact against jnp."""
    repeats = 5 if quick else 7
    cases: list[tuple[str, Callable[..., Callable[..., jax.Array]], Any, tuple[Any, ...]]] = []
    make_mlp, mlp_weights, mlp_data = model("MLP", quick)
    cases.append(
        ("scanned MLP", lambda p: scanned_loss(make_mlp(*p), False), mlp_weights, mlp_data)
    )
    make_block, block_weights, block_data = model("transformer", quick)
    cases.append(
        (
            "scanned transformer",
            lambda p: scanned_loss(make_block(*p), False),
            block_weights,
            block_data,
        )
    )
    batch, sequence, width = PER_TOKEN_SIZES[quick]
    keys = jax.random.split(jax.random.key(1), 5)
    shapes = [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)]
    per_token_weights = tuple(jax.random.normal(k, s) / s[0] ** 0.5 for k, s in zip(keys, shapes))
    tokens = jax.random.normal(keys[4], (batch, sequence, width))
    cases.append(("nested-vmap block", per_token_block_loss, per_token_weights, (tokens,)))
    rows = []
    for name, make_loss, weights, data in cases:
        ours, theirs = (
            jax.jit(jax.grad(make_loss(products(variant, None))))
            for variant in ("jaxmm exact", "jnp")
        )
        compiled = [fn.lower(weights, *data).compile() for fn in (ours, theirs)]
        ours_ms, theirs_ms = _interleaved_ms(
            [partial(ours, weights, *data), partial(theirs, weights, *data)], repeats
        )
        rows.append(
            StepRow(
                name,
                ours_ms,
                theirs_ms,
                ours_ms / theirs_ms,
                *(_temp_bytes(c) for c in compiled),
                *(str(c.as_text()).count(" dot(") for c in compiled),
            )
        )
    return rows


def per_token_block_loss(
    products: tuple[ProductFunction, ProductFunction],
) -> Callable[..., jax.Array]:
    return per_token_block(*products)


def report(quick: bool = False) -> tuple[list[MemoryRow], list[StepRow], str]:
    memory_rows, step_rows = memory(quick), steps(quick)
    mib = 2.0**20
    lines = [
        "models: layers under lax.scan (residuals handed to the backward pass, arguments "
        f"excluded; compiled temporaries of jit(grad); loss after {TRAIN_STEPS} SGD steps relative "
        "to exact)",
        f"{'model':<12} {'checkpoint':<10} {'variant':<16} {'residual MiB':>12} "
        f"{'temp MiB':>9} {'loss / exact':>12}",
    ]
    for r in memory_rows:
        lines.append(
            f"{r.model:<12} {'yes' if r.checkpoint else 'no':<10} {r.variant:<16} "
            f"{r.residual_bytes / mib:12.2f} {r.temp_bytes / mib:9.2f} "
            f"{r.loss_after_training:12.5f}"
        )
    lines += [
        "",
        "training step (jit of grad), jaxmm exact / jnp, median of interleaved repeats",
        f"{'case':<20} {'jaxmm ms':>9} {'jnp ms':>9} {'ratio':>6} {'temp MiB':>9} "
        f"{'jnp temp':>9} {'dots':>5} {'jnp':>4}",
    ]
    for s in step_rows:
        lines.append(
            f"{s.case:<20} {s.jaxmm_ms:9.2f} {s.jnp_ms:9.2f} {s.ratio:6.3f} "
            f"{s.jaxmm_temp_bytes / mib:9.2f} {s.jnp_temp_bytes / mib:9.2f} "
            f"{s.jaxmm_dots:5d} {s.jnp_dots:4d}"
        )
    return memory_rows, step_rows, "\n".join(lines)
