"""The linear cross-entropy section of ``python -m jaxmm``: the jitted loss and both gradients of
:func:`jaxmm.linear_cross_entropy` against the naive formulation (the logits ``x @ w``
materialised, JAX's autodiff), side by side in one run.

- Memory: XLA's compiled temporaries (``memory_analysis().temp_size_in_bytes``) of the step.
  Compiled only, nothing runs, so sizes where the logits take GiBs cost seconds.
- Time: the median of interleaved repeats of the step, at a size that runs in a fraction of a
  second per step.

jax-cce (``pip install jax-cce``), another chunked linear cross-entropy for JAX, is timed and
measured alongside when it is installed: an optional peer, never a dependency.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp

from ._cross_entropy import linear_cross_entropy

# tokens, d, vocab: memory at sizes where the logits dominate, time at a smaller size.
MEMORY_SIZES = ((8192, 1024, 32768), (8192, 1024, 65536), (8192, 1024, 131072))
QUICK_MEMORY_SIZES = ((4096, 512, 32768),)
TIME_SIZE = (1024, 512, 8192)
QUICK_TIME_SIZE = (512, 256, 4096)


def naive_loss(x: jax.Array, w: jax.Array, labels: jax.Array) -> jax.Array:
    """The loss written the obvious way: the whole ``[tokens, V]`` logits, then cross-entropy."""
    logits = jnp.matmul(x, w, preferred_element_type=jnp.float32)
    label_logits = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - label_logits)


def _peer() -> Callable[..., jax.Array] | None:
    """jax-cce's loss, taking ``w`` as ``(d, V)`` like the others, or None without it."""
    try:
        import jax_cce
    except ImportError:
        return None

    def loss(x: jax.Array, w_transposed: jax.Array, labels: jax.Array) -> jax.Array:
        result: jax.Array = jax_cce.linear_cross_entropy(x, w_transposed, labels)
        return result

    return loss


def _losses() -> dict[str, tuple[Callable[..., jax.Array], bool]]:
    """name: (loss, whether it takes ``w`` transposed, ``(V, d)``)."""
    losses = {"jaxmm": (linear_cross_entropy, False), "naive": (naive_loss, False)}
    peer = _peer()
    if peer is not None:
        losses["jax-cce"] = (peer, True)
    return losses


def _step(loss: Callable[..., jax.Array]) -> Any:
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _arguments(
    tokens: int, d: int, vocab: int, transposed: bool, abstract: bool
) -> tuple[Any, ...]:
    shapes = ((tokens, d), (vocab, d) if transposed else (d, vocab), (tokens,))
    dtypes = (jnp.float32, jnp.float32, jnp.int32)
    if abstract:
        return tuple(jax.ShapeDtypeStruct(s, t) for s, t in zip(shapes, dtypes))
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shapes[0]) / d**0.5
    w = jax.random.normal(keys[1], shapes[1])
    return x, w, jax.random.randint(keys[2], shapes[2], 0, vocab)


@dataclass
class MemoryRow:
    tokens: int
    d: int
    vocab: int
    logits_bytes: int  # one float32 [tokens, V] array
    temp_bytes: dict[str, int]  # compiled temporaries of the jitted loss and both gradients

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def memory(sizes: tuple[tuple[int, int, int], ...] = MEMORY_SIZES) -> list[MemoryRow]:
    rows = []
    for tokens, d, vocab in sizes:
        temp = {}
        for name, (loss, transposed) in _losses().items():
            args = _arguments(tokens, d, vocab, transposed, abstract=True)
            compiled = _step(loss).lower(*args).compile()
            temp[name] = int(compiled.memory_analysis().temp_size_in_bytes)
        rows.append(MemoryRow(tokens, d, vocab, 4 * tokens * vocab, temp))
    return rows


@dataclass
class TimeRow:
    tokens: int
    d: int
    vocab: int
    ms: dict[str, float]  # median step time
    ratio: dict[str, float]  # step time / the naive formulation's

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_time(size: tuple[int, int, int] = TIME_SIZE, repeats: int = 5) -> TimeRow:
    tokens, d, vocab = size
    functions = {
        name: (_step(loss), _arguments(tokens, d, vocab, transposed, abstract=False))
        for name, (loss, transposed) in _losses().items()
    }
    for step, args in functions.values():  # compile and warm up
        jax.block_until_ready(step(*args))
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):  # interleaved, so that drifts in machine speed hit all alike
        for name, (step, args) in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            samples[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(s) for name, s in samples.items()}
    return TimeRow(tokens, d, vocab, ms, {name: t / ms["naive"] for name, t in ms.items()})


def report(quick: bool = False) -> tuple[list[MemoryRow], TimeRow, str]:
    """Both measurements and their printed table."""
    rows = memory(QUICK_MEMORY_SIZES if quick else MEMORY_SIZES)
    timing = step_time(QUICK_TIME_SIZE if quick else TIME_SIZE, repeats=3 if quick else 5)
    names = list(rows[0].temp_bytes)
    mib = 2**20
    lines = [
        "linear cross-entropy: jitted loss + gradients of x and w, float32; compiled temporaries",
        f"{'tokens x d x V':<20} {'logits MiB':>10}"
        + "".join(f" {name + ' MiB':>12}" for name in names)
        + f" {'jaxmm/logits':>12}",
    ]
    for r in rows:
        lines.append(
            f"{f'{r.tokens}x{r.d}x{r.vocab}':<20} {r.logits_bytes / mib:10.0f}"
            + "".join(f" {r.temp_bytes[name] / mib:12.1f}" for name in names)
            + f" {r.temp_bytes['jaxmm'] / r.logits_bytes:12.3f}"
        )
    t = timing
    lines.append(
        f"step time at {t.tokens}x{t.d}x{t.vocab}, median of interleaved repeats: "
        + ", ".join(f"{name} {t.ms[name]:.1f} ms ({t.ratio[name]:.2f}x naive)" for name in t.ms)
    )
    if "jax-cce" not in names:
        lines.append("jax-cce peer not run (pip install jax-cce to add it)")
    return rows, timing, "\n".join(lines)
