"""The benchmark of ``python -m jaxmm``: jitted forward+backward step time of jaxmm against
``jnp.matmul`` autodiff, measured side by side in one run, with the practical limit (three plain
forward matmuls of the same shapes, since the step computes three products of equal cost)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
    torch_ms: float | None = None  # torch.matmul + backward, when torch is installed
    torch_ratio: float | None = None  # jaxmm / torch step time
    # jaxmm.experimental (None on a JAX without it): its vjp step, and forward mode, a jvp step
    # (the forward product and both tangent products) against jnp.matmul's.
    experimental_ms: float | None = None
    experimental_ratio: float | None = None  # experimental / reference vjp step time
    jvp_ms: float | None = None
    jvp_reference_ms: float | None = None
    jvp_ratio: float | None = None  # experimental / jnp.matmul jvp step time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def shapes(sizes: Sequence[int]) -> list[tuple[str, int, int, int]]:
    """(name, m, k, n) for ``(m, k) @ (k, n)``: squares, then transformer MLP projections
    ``(tokens, d_model) @ (d_model, 4·d_model)`` sized like the largest square."""
    cases = [(f"square {s}", s, s, s) for s in sizes]
    largest = max(sizes)
    for d_model in sorted({max(largest // 8, 32), max(largest // 4, 64)}):
        tokens = 2 * d_model
        cases.append((f"mlp {tokens}x{d_model}->{4 * d_model}", tokens, d_model, 4 * d_model))
    return cases


def _vjp_step(mm: Callable[..., jax.Array]) -> Callable[..., Any]:
    """Forward and both cotangents; a new function object on every call (nothing cached)."""

    def step(a: jax.Array, b: jax.Array, cotangent: jax.Array) -> tuple[jax.Array, ...]:
        out, vjp = jax.vjp(mm, a, b)
        return out, *vjp(cotangent)  # the output too, or XLA drops the forward product

    return step


def _step(mm: Callable[..., jax.Array]) -> Any:
    return jax.jit(_vjp_step(mm))


def _jvp_step(mm: Callable[..., jax.Array]) -> Any:
    def step(a: jax.Array, b: jax.Array, a_dot: jax.Array, b_dot: jax.Array) -> Any:
        return jax.jvp(mm, (a, b), (a_dot, b_dot))

    return jax.jit(step)


def _experimental_matmul() -> Callable[..., jax.Array] | None:
    try:
        from .experimental import matmul as experimental_matmul
    except ImportError:  # a JAX without the primitive API jaxmm.experimental needs
        return None
    return experimental_matmul


def _torch_step(m: int, k: int, n: int, dtype: str) -> Callable[[], Any] | None:
    """PyTorch's autograd step on the same shapes, or None without torch (an optional peer)."""
    if "torch" not in sys.modules:
        # OpenMP threads that spin between torch calls would steal this 2-core machine's cores
        # from XLA; sleeping ones do not.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return None
    generator = torch.Generator().manual_seed(0)
    a, b, cotangent = (
        torch.randn(shape, generator=generator, dtype=getattr(torch, dtype))
        for shape in ((m, k), (k, n), (m, n))
    )
    a.requires_grad_(True)
    b.requires_grad_(True)

    def step() -> tuple[Any, Any, Any]:
        a.grad = b.grad = None
        out = torch.matmul(a, b)
        out.backward(cotangent)
        return out.detach(), a.grad, b.grad

    return step


def _time_once(fn: Callable[..., Any], args: Sequence[Any]) -> float:
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
    torch: bool = True,
) -> Result:
    key_a, key_b, key_c = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(key_a, (m, k), dtype)
    b = jax.random.normal(key_b, (k, n), dtype)
    cotangent = jax.random.normal(key_c, (m, n), dtype)
    functions: dict[str, tuple[Callable[..., Any], tuple[jax.Array, ...]]] = {
        "jaxmm": (_step(matmul), (a, b, cotangent)),
        "reference": (_step(jnp.matmul), (a, b, cotangent)),
        "forward": (jax.jit(jnp.matmul), (a, b)),
    }
    experimental = _experimental_matmul()
    if experimental is not None:
        key_a, key_b = jax.random.split(jax.random.key(1))
        tangents = jax.random.normal(key_a, (m, k), dtype), jax.random.normal(key_b, (k, n), dtype)
        functions["experimental"] = (_step(experimental), (a, b, cotangent))
        functions["jvp"] = (_jvp_step(experimental), (a, b, *tangents))
        functions["jvp_reference"] = (_jvp_step(jnp.matmul), (a, b, *tangents))
    # Warm up (compile), and find how many calls make one timing sample long enough.
    calls = 1
    for fn, args in functions.values():
        _time_once(fn, args)
        calls = max(calls, int(min_seconds / max(_time_once(fn, args), 1e-7)) + 1)
    samples: dict[str, list[float]] = {label: [] for label in functions}
    for _ in range(repeats):  # interleaved, so drifts in machine speed hit all alike
        for label, (fn, args) in functions.items():
            samples[label].append(sum(_time_once(fn, args) for _ in range(calls)) / calls)
    t = {label: statistics.median(s) for label, s in samples.items()}
    # The peer is timed after, not interleaved: its threads must not share the cores with XLA's.
    torch_step = _torch_step(m, k, n, dtype) if torch else None
    if torch_step is not None:
        _time_once(torch_step, ())
        calls = max(1, int(min_seconds / max(_time_once(torch_step, ()), 1e-7)) + 1)
        t["torch"] = statistics.median(
            sum(_time_once(torch_step, ()) for _ in range(calls)) / calls for _ in range(repeats)
        )
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
        torch_ms=1e3 * t["torch"] if "torch" in t else None,
        torch_ratio=t["jaxmm"] / t["torch"] if "torch" in t else None,
        **(
            dict(
                experimental_ms=1e3 * t["experimental"],
                experimental_ratio=t["experimental"] / t["reference"],
                jvp_ms=1e3 * t["jvp"],
                jvp_reference_ms=1e3 * t["jvp_reference"],
                jvp_ratio=t["jvp"] / t["jvp_reference"],
            )
            if experimental is not None
            else {}
        ),
    )


@dataclass
class Overhead:
    """Un-jitted (eager) gradient and compile times, jaxmm against jnp.matmul autodiff."""

    size: int
    eager_ratio: float  # eager jaxmm / eager reference, both gradients
    eager_one_operand_ratio: float  # the same, gradient of the first operand only
    one_operand_speedup: float  # jaxmm eager: both-gradient time / one-gradient time
    compile_ratio: float  # jaxmm / reference time to trace, lower and compile the step

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _eager_step(mm: Callable[..., jax.Array], wrt_both: bool) -> Callable[..., Any]:
    if wrt_both:
        return _vjp_step(mm)

    def step(a: jax.Array, b: jax.Array, cotangent: jax.Array) -> tuple[jax.Array, ...]:
        # the first operand only: b is a constant
        out, vjp = jax.vjp(lambda a: mm(a, b), a)
        return out, *vjp(cotangent)

    return step


def _compile_seconds(mm: Callable[..., jax.Array], args: Sequence[Any]) -> float:
    start = time.perf_counter()
    _step(mm).lower(*args).compile()  # a new step function: compiled afresh
    return time.perf_counter() - start


def overheads(
    sizes: Sequence[int] = (16, 64, 256),
    dtype: str = "float32",
    repeats: int = 7,
    calls: int = 50,
) -> list[Overhead]:
    results = []
    for size in sizes:
        keys = jax.random.split(jax.random.key(1), 3)
        args = tuple(jax.random.normal(key, (size, size), dtype) for key in keys)
        functions = {
            (name, both): _eager_step(mm, both)
            for name, mm in (("jaxmm", matmul), ("reference", jnp.matmul))
            for both in (True, False)
        }
        for fn in functions.values():  # warm up: compile the eager ops once
            for _ in range(3):
                jax.block_until_ready(fn(*args))
        samples: dict[tuple[str, bool], list[float]] = {label: [] for label in functions}
        compile_samples: dict[str, list[float]] = {"jaxmm": [], "reference": []}
        for _ in range(repeats):
            for label, fn in functions.items():
                samples[label].append(sum(_time_once(fn, args) for _ in range(calls)))
            compile_samples["jaxmm"].append(_compile_seconds(matmul, args))
            compile_samples["reference"].append(_compile_seconds(jnp.matmul, args))
        t = {label: statistics.median(s) for label, s in samples.items()}
        c = {label: statistics.median(s) for label, s in compile_samples.items()}
        results.append(
            Overhead(
                size,
                eager_ratio=t["jaxmm", True] / t["reference", True],
                eager_one_operand_ratio=t["jaxmm", False] / t["reference", False],
                one_operand_speedup=t["jaxmm", True] / t["jaxmm", False],
                compile_ratio=c["jaxmm"] / c["reference"],
            )
        )
    return results


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
