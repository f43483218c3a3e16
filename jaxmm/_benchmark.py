"""The benchmark of ``python -m jaxmm``: jitted forward+backward step time of jaxmm against
``jnp.matmul`` autodiff, measured side by side in one run, with the practical limit (three plain
forward matmuls of the same shapes, since the step computes three products of equal cost)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._matmul import matmul

SQUARE_SIZES = (64, 128, 256, 512, 1024, 2048)
QUICK_SIZES = (64, 128, 256, 512)


@dataclass
class Result:
    case: str
    m: int
    k: int
    n: int
    dtype: str
    jaxmm_ms: float
    reference_ms: float
    forward_ms: float
    ratio: float  # jaxmm / reference step time: < 1 is faster
    gflops: float  # jaxmm's achieved rate over the step's three products
    fraction_of_limit: float  # (3 x forward time) / jaxmm step time

    def as_dict(self) -> dict:
        return asdict(self)


def shapes(sizes) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) for ``(m, k) @ (k, n)``: squares, then transformer MLP projections
    ``(tokens, d_model) @ (d_model, 4·d_model)`` sized like the largest square."""
    cases = [(f"square {s}", s, s, s) for s in sizes]
    largest = max(sizes)
    for d_model in sorted({max(largest // 8, 32), max(largest // 4, 64)}):
        tokens = 2 * d_model
        cases.append((f"mlp {tokens}x{d_model}->{4 * d_model}", tokens, d_model, 4 * d_model))
    return cases


def _step(mm: Callable) -> Callable:
    def step(a, b, cotangent):
        out, vjp = jax.vjp(mm, a, b)
        return out, *vjp(cotangent)  # the output too, or XLA drops the forward product

    return jax.jit(step)


def _time_once(fn: Callable, args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def measure(
    name: str,
    m: int,
    k: int,
    n: int,
    dtype: str = "float32",
    repeats: int = 7,
    min_seconds: float = 0.02,
) -> Result:
    key_a, key_b, key_c = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(key_a, (m, k), dtype)
    b = jax.random.normal(key_b, (k, n), dtype)
    cotangent = jax.random.normal(key_c, (m, n), dtype)
    functions = {
        "jaxmm": (_step(matmul), (a, b, cotangent)),
        "reference": (_step(jnp.matmul), (a, b, cotangent)),
        "forward": (jax.jit(jnp.matmul), (a, b)),
    }
    # Warm up (compile), and find how many calls make one timing sample long enough.
    calls = 1
    for fn, args in functions.values():
        _time_once(fn, args)
        calls = max(calls, int(min_seconds / max(_time_once(fn, args), 1e-7)) + 1)
    samples: dict[str, list[float]] = {label: [] for label in functions}
    for _ in range(repeats):  # interleaved, so drifts in machine speed hit all three alike
        for label, (fn, args) in functions.items():
            samples[label].append(sum(_time_once(fn, args) for _ in range(calls)) / calls)
    t = {label: statistics.median(s) for label, s in samples.items()}
    flops = 3 * 2 * m * k * n
    return Result(
        name,
        m,
        k,
        n,
        dtype,
        jaxmm_ms=1e3 * t["jaxmm"],
        reference_ms=1e3 * t["reference"],
        forward_ms=1e3 * t["forward"],
        ratio=t["jaxmm"] / t["reference"],
        gflops=flops / t["jaxmm"] / 1e9,
        fraction_of_limit=3 * t["forward"] / t["jaxmm"],
    )


def plot(results: list[Result], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.case for r in results]
    x = np.arange(len(results))
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    top.plot(x, [r.jaxmm_ms for r in results], "o-", label="jaxmm step")
    top.plot(x, [r.reference_ms for r in results], "s--", label="jnp.matmul autodiff step")
    top.plot(x, [3 * r.forward_ms for r in results], ":", label="limit: 3 forward matmuls")
    top.set_yscale("log")
    top.set_ylabel("time (ms)")
    top.legend()
    middle.bar(x, [r.ratio for r in results])
    middle.axhline(1.0, color="k", lw=0.8)
    middle.set_ylabel("jaxmm / reference")
    bottom.bar(x, [r.fraction_of_limit for r in results], color="tab:green")
    bottom.axhline(1.0, color="k", lw=0.8)
    bottom.set_ylabel("fraction of limit")
    bottom.set_xticks(x, labels, rotation=30, ha="right")
    fig.suptitle(f"forward+backward step, {results[0].dtype}, {jax.devices()[0].device_kind}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
