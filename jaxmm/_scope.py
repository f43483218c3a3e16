"""How a public function's work is staged: named, and compiled once per signature.

Every public product runs under ``jax.named_scope("jaxmm.<name>")``, as ``jnp.einsum`` names its
own: its operations, and those of its derivatives, carry the name in profiles and in the lowered
program's op metadata (``op_name="jit(f)/jaxmm.matmul/..."``). Its checked arguments then go to
one :func:`staged` function: compiled as one program when called un-jitted (as ``jnp``'s
functions are), so that an eager call or gradient runs a few cached executables instead of the
layout code and the custom rule op by op, and inlined into the caller's program when traced."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax

F = TypeVar("F", bound=Callable[..., Any])


def named(name: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with jax.named_scope(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def staged(*static_argnums: int) -> Callable[[F], F]:
    """``jax.jit(fn, static_argnums=static_argnums, inline=True)``, typed as ``fn``."""

    def decorate(fn: F) -> F:
        return jax.jit(fn, static_argnums=static_argnums, inline=True)  # type: ignore[return-value]

    return decorate
