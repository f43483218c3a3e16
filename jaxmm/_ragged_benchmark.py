"""The ragged section of ``python -m jaxmm``'s benchmark (its self-check is
:mod:`jaxmm._selfcheck`'s, with every public function's): the jitted forward and
``value_and_grad`` (both operands) of the grouped product of a mixture-of-experts layer, three
ways, interleaved in one run:

- ``jaxmm``: :func:`jaxmm.ragged_dot` (its hand-derived rules; on CPU the loop over row tiles).
- ``lax``: ``lax.ragged_dot`` and JAX's autodiff of it (on CPU, G masked dense products).
- ``dense``: the same product written group by group with the group sizes known in advance
  (static slices, one dense product per group): the cost the ragged product aims at.

Time is the median of interleaved repeats; memory is XLA's compiled temporaries of the jitted
``value_and_grad`` (``memory_analysis().temp_size_in_bytes``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._ragged import ragged_dot

SIZE = (4096, 512, 512)  # tokens, d_in, d_out
QUICK_SIZE = (512, 128, 128)


def cases(tokens: int = SIZE[0]) -> dict[str, list[int]]:
    """Group sizes: 8 equal groups, 8 uneven ones of which 2 empty, 32 uneven ones."""
    rng = np.random.default_rng(0)
    uneven = rng.multinomial(tokens, rng.dirichlet(np.ones(6)))
    return {
        "g=8 equal": [tokens // 8] * 8,
        "g=8 uneven, 2 empty": [int(s) for s in np.insert(uneven, [1, 4], 0)],
        "g=32 uneven": [int(s) for s in rng.multinomial(tokens, rng.dirichlet(np.ones(32)))],
    }


def dense_group_by_group(sizes: list[int]) -> Callable[..., jax.Array]:
    """The product with the group sizes fixed in the program: one dense product per group."""
    bounds = np.concatenate([[0], np.cumsum(sizes)])

    def product(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
        del group_sizes
        parts = [x[s:e] @ w[g] for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:]))]
        return jnp.concatenate(parts + [jnp.zeros((x.shape[0] - bounds[-1], w.shape[2]), x.dtype)])

    return product


def _products(sizes: list[int]) -> dict[str, Callable[..., jax.Array]]:
    return {"jaxmm": ragged_dot, "lax": lax.ragged_dot, "dense": dense_group_by_group(sizes)}


def _loss(product: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    return lambda x, w, sizes: 0.5 * jnp.sum(jnp.square(product(x, w, sizes)))


@dataclass
class Row:
    case: str
    forward_ms: dict[str, float]
    step_ms: dict[str, float]  # jitted value_and_grad of x and w
    temp_mib: dict[str, float]  # its compiled temporaries

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_times(
    functions: dict[str, Any], args: tuple[Any, ...], repeats: int
) -> dict[str, float]:
    for fn in functions.values():  # compile and warm up
        jax.block_until_ready(fn(*args))
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):  # interleaved, so that drifts in machine speed hit all alike
        for name, fn in functions.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def _temp_bytes(compiled: Any) -> int:
    return int(compiled.memory_analysis().temp_size_in_bytes)


def measure(name: str, sizes: list[int], size: tuple[int, int, int], repeats: int) -> Row:
    tokens, d_in, d_out = size
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (tokens, d_in)) / d_in**0.5
    w = jax.random.normal(keys[1], (len(sizes), d_in, d_out))
    args = (x, w, jnp.asarray(sizes, jnp.int32))
    products = _products(sizes)
    steps = {n: jax.jit(jax.value_and_grad(_loss(p), (0, 1))) for n, p in products.items()}
    temp = {n: _temp_bytes(step.lower(*args).compile()) / 2**20 for n, step in steps.items()}
    forward = _median_times({n: jax.jit(p) for n, p in products.items()}, args, repeats)
    return Row(name, forward, _median_times(steps, args, repeats), temp)


def report(quick: bool = False) -> tuple[list[Row], list[str], str]:
    """The measurements, the names of the formulations compared, and the printed table."""
    size = QUICK_SIZE if quick else SIZE
    tokens, d_in, d_out = size
    rows = [measure(n, s, size, 3 if quick else 5) for n, s in cases(tokens).items()]
    names = ["jaxmm", "lax", "dense"]
    lines = [
        f"ragged_dot, x [{tokens}, {d_in}], w [g, {d_in}, {d_out}], float32: forward ms, "
        "value_and_grad(x, w) ms and compiled temp MiB, medians of interleaved repeats",
        f"{'case':<22}" + "".join(f" {'fwd ' + n:>11}" for n in names)
        + "".join(f" {'step ' + n:>11}" for n in names)
        + "".join(f" {'MiB ' + n:>10}" for n in names)
        + f" {'jaxmm/lax':>9} {'jaxmm/dense':>11}",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r.case:<22}"
            + "".join(f" {r.forward_ms[n]:11.1f}" for n in names)
            + "".join(f" {r.step_ms[n]:11.1f}" for n in names)
            + "".join(f" {r.temp_mib[n]:10.1f}" for n in names)
            + f" {r.step_ms['jaxmm'] / r.step_ms['lax']:9.3f}"
            + f" {r.step_ms['jaxmm'] / r.step_ms['dense']:11.3f}"
        )
    return rows, names, "\n".join(lines)
