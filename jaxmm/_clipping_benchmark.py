"""What :func:`jaxmm.clipped_grad` costs against a non-private step and against ``vmap`` of
``grad`` (jax-privacy's ``clipped_grad`` where installed): compiled temporaries and step time on
the transformer of :mod:`jaxmm._clipping_models`. Part of ``python -m jaxmm``; the tables in
``docs/clipping.md`` come from it."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._clipping_models import transformer_loss, transformer_params

# (name, vocab, width, hidden, layers, heads, batch, sequence[, stacked under lax.scan])
MEMORY_CASES = {
    True: (("T=32, width 256", 256, 256, 1024, 2, 4, 16, 32),),
    False: (
        ("T=32, width 1024", 256, 1024, 4096, 4, 16, 64, 32),
        ("same, lax.scan", 256, 1024, 4096, 4, 16, 64, 32, True),
        ("T=512, width 64", 256, 64, 256, 4, 1, 64, 512),
    ),
}
TIME_CASE = ("small transformer", 256, 128, 512, 2, 2, 32, 32)


def _case(spec: tuple[Any, ...]) -> tuple[Any, jax.Array]:
    _, vocab, width, hidden, layers, heads, batch, sequence = spec[:8]
    stacked = len(spec) > 8 and spec[8]
    params = transformer_params(
        jax.random.key(0), vocab, width, hidden, layers, heads, stacked=stacked
    )
    tokens = jax.random.randint(jax.random.key(1), (batch, sequence + 1), 0, vocab)
    return params, tokens


def steps() -> dict[str, Callable[[Any, jax.Array], Any]]:
    """The steps compared, each ``(params, tokens) -> gradient``: non-private, jaxmm's, and
    ``vmap`` of ``grad`` (jax-privacy's where it is installed, else the same written here)."""
    import jaxmm

    found: dict[str, Callable[[Any, jax.Array], Any]] = {
        "non-private": jax.grad(transformer_loss),
        "jaxmm.clipped_grad": jaxmm.clipped_grad(transformer_loss, l2_clip_norm=1.0),
    }
    try:
        from jax_privacy.clipping import clipped_grad  # type: ignore[import-untyped]
    except ImportError:
        found["vmap of grad"] = _vmap_of_grad
    else:
        found["jax-privacy"] = _quiet(clipped_grad(transformer_loss, l2_clip_norm=1.0))
    return found


def _quiet(step: Callable[..., Any]) -> Callable[..., Any]:
    """jax-privacy 2.0 calls ``optax.global_norm``, which newer optax deprecates (a warning)."""

    def quiet(*args: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return step(*args)

    return quiet


def _vmap_of_grad(params: Any, tokens: jax.Array) -> Any:
    grads = jax.vmap(jax.grad(transformer_loss), (None, 0))(params, tokens[:, None])
    norms = jnp.sqrt(
        sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, 1) for g in jax.tree.leaves(grads))
    )
    factors = jnp.minimum(1.0, 1.0 / norms)
    return jax.tree.map(lambda g: jnp.tensordot(factors, g, 1), grads)


def memory(quick: bool) -> list[dict[str, Any]]:
    """Compiled temporaries (MiB) of each step, and their ratio to the non-private step's."""
    rows = []
    for spec in MEMORY_CASES[quick]:
        params, tokens = _case(spec)
        row: dict[str, Any] = {"case": spec[0]}
        for name, step in steps().items():
            compiled = jax.jit(step).lower(params, tokens).compile()
            analysis: Any = compiled.memory_analysis()
            row[name] = analysis.temp_size_in_bytes / 2**20
        rows.append(row)
    return rows


def timing(quick: bool) -> dict[str, float]:
    """Median time (ms) of each step over interleaved repeats, after a warm-up."""
    params, tokens = _case(TIME_CASE)
    compiled = {name: jax.jit(step) for name, step in steps().items()}
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(1 + (5 if quick else 15)):
        for name, step in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(step(params, tokens))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t[1:]) for name, t in times.items()}


def self_check() -> list[tuple[str, str | None]]:
    """``(case, problem or None)``: jaxmm's norms and clipped sum against ``vmap`` of ``grad``."""
    import jaxmm

    params, tokens = _case(("check", 17, 32, 64, 2, 2, 4, 8))
    rows = []
    for scan in (False, True):
        loss = lambda p, t, scan=scan: transformer_loss(p, t, scan)  # noqa: E731
        got, aux = jaxmm.clipped_grad(loss, l2_clip_norm=1.0, return_grad_norms=True)(
            params, tokens
        )
        grads = jax.vmap(jax.grad(loss), (None, 0))(params, tokens[:, None])
        leaves = [g.reshape(g.shape[0], -1) for g in jax.tree.leaves(grads)]
        norms = jnp.sqrt(sum(jnp.sum(g**2, 1) for g in leaves))
        factors = jnp.minimum(1.0, 1.0 / norms)
        want = jax.tree.map(lambda g, c=factors: jnp.tensordot(c, g, 1), grads)
        error = max(
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))
        )
        error = max(error, float(np.max(np.abs(aux.grad_norms / norms - 1))))
        problem = None if error < 1e-4 else f"relative error {error:.2e}"
        rows.append((f"clipped_grad transformer{' scan' if scan else ''}", problem))
    return rows


def report(quick: bool) -> tuple[list[dict[str, Any]], dict[str, float], str]:
    """The memory and time tables (rows, times, printed table), for ``python -m jaxmm``."""
    rows = memory(quick)
    names = [name for name in rows[0] if name != "case"]
    lines = ["per-example clipping: compiled temporaries, MiB (ratio to non-private)"]
    lines.append(f"{'case':<18}" + "".join(f" {name:>22}" for name in names))
    for row in rows:
        cells = [f"{row[n]:9.0f} ({row[n] / row['non-private']:5.2f}x)" for n in names]
        lines.append(f"{row['case']:<18}" + "".join(f" {c:>22}" for c in cells))
    times = timing(quick)
    lines.append(f"per-example clipping: step time, {TIME_CASE[0]}, ms (ratio to non-private)")
    for name, ms in times.items():
        lines.append(f"{name:<22} {ms:9.2f} ({ms / times['non-private']:5.2f}x)")
    return rows, times, "\n".join(lines)
