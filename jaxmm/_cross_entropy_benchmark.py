"""The linear cross-entropy section of ``python -m jaxmm``: the jitted loss and both gradients of
:func:`jaxmm.linear_cross_entropy` against the naive formulation (the logits ``x @ w``
materialised, JAX's autodiff) and the peers installed, side by side in one run.

- Memory: XLA's compiled temporaries (``memory_analysis().temp_size_in_bytes``) of the step.
  Compiled only, nothing runs, so sizes where the logits take GiBs cost seconds.
- Time: the median of interleaved repeats of the step (``jax.jit(jax.value_and_grad(loss))``).

The peers, each measured when installed (``pip install jaxmm[cross-entropy]``) and named as not run
otherwise: jax-cce (``jax_cce.linear_cross_entropy``, a chunked linear cross-entropy for JAX) and
Tokamax (``tokamax.linear_softmax_cross_entropy_loss``, whose XLA implementation, the one for
CPUs and GPUs, forms the logits). Optional peers, never dependencies.
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

# tokens, d, vocab: memory at sizes where the logits dominate (up to 4 GiB of them; compiled
# only), time at sizes that run in seconds per step.
MEMORY_SIZES = (
    (1024, 512, 8192),
    (4096, 256, 32768),
    (8192, 1024, 32768),
    (8192, 1024, 65536),
    (8192, 1024, 131072),
)
QUICK_MEMORY_SIZES = ((4096, 512, 32768),)
TIME_SIZES = ((1024, 512, 8192), (2048, 512, 16384), (4096, 256, 32768))
QUICK_TIME_SIZE = (512, 256, 4096)
PEERS = ("jax-cce", "tokamax")


def naive_loss(x: jax.Array, w: jax.Array, labels: jax.Array) -> jax.Array:
    """The loss written the obvious way: the whole ``[tokens, V]`` logits, then cross-entropy."""
    logits = jnp.matmul(x, w, preferred_element_type=jnp.float32)
    label_logits = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - label_logits)


def _jax_cce() -> tuple[Callable[..., jax.Array], bool] | None:
    """jax-cce's loss (it takes ``w`` transposed, ``(V, d)``), or None without it."""
    try:
        import jax_cce
    except ImportError:
        return None
    return jax_cce.linear_cross_entropy, True


def _tokamax() -> tuple[Callable[..., jax.Array], bool] | None:
    try:
        import tokamax
        from absl import flags
    except ImportError:
        return None
    # Tokamax reads its options from absl flags, and on first use parses sys.argv for them: the
    # arguments of whatever runs this (python -m jaxmm --quick, pytest -q), which it rejects.
    # Marked as parsed, its flags keep their defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

    def loss(x: jax.Array, w: jax.Array, labels: jax.Array) -> jax.Array:
        mean: jax.Array = tokamax.linear_softmax_cross_entropy_loss(
            x, labels, w, reduction="mean", implementation="xla"
        )
        return mean

    return loss, False


def _losses() -> dict[str, tuple[Callable[..., jax.Array], bool]]:
    """name: (loss, whether it takes ``w`` transposed, ``(V, d)``), for those installed."""
    losses = {"jaxmm": (linear_cross_entropy, False), "naive": (naive_loss, False)}
    for name, peer in (("jax-cce", _jax_cce()), ("tokamax", _tokamax())):
        if peer is not None:
            losses[name] = peer
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


@dataclass
class Timings:
    rows: list[TimeRow]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def step_time(size: tuple[int, int, int], repeats: int = 5) -> TimeRow:
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


def report(quick: bool = False) -> tuple[list[MemoryRow], Timings, str]:
    """Both measurements and their printed tables."""
    rows = memory(QUICK_MEMORY_SIZES if quick else MEMORY_SIZES)
    sizes = (QUICK_TIME_SIZE,) if quick else TIME_SIZES
    timings = Timings([step_time(size, repeats=3 if quick else 5) for size in sizes])
    names = list(rows[0].temp_bytes)
    mib = 2**20
    lines = [
        "linear cross-entropy: jitted loss + gradients of x and w, float32",
        "compiled temporaries, MiB (and / the logits' bytes)",
        f"{'tokens x d x V':<20} {'logits':>8}" + "".join(f" {name:>16}" for name in names),
    ]
    for r in rows:
        lines.append(
            f"{f'{r.tokens}x{r.d}x{r.vocab}':<20} {r.logits_bytes / mib:8.0f}"
            + "".join(
                f" {r.temp_bytes[n] / mib:8.1f} ({r.temp_bytes[n] / r.logits_bytes:5.3f})"
                for n in names
            )
        )
    lines += [
        "step time, ms (and / the naive loss's), median of interleaved repeats",
        f"{'tokens x d x V':<20}" + "".join(f" {name:>16}" for name in names),
    ]
    for t in timings.rows:
        lines.append(
            f"{f'{t.tokens}x{t.d}x{t.vocab}':<20}"
            + "".join(f" {t.ms[n]:8.1f} ({t.ratio[n]:5.2f})" for n in names)
        )
    missing = [peer for peer in PEERS if peer not in names]
    if missing:
        install = "pip install jaxmm[cross-entropy]"
        lines.append(f"not installed, not run: {', '.join(missing)} ({install})")
    return rows, timings, "\n".join(lines)
