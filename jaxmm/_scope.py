"""Every public product runs under ``jax.named_scope("jaxmm.<name>")``, as ``jnp.einsum`` names its
own: its operations, and those of its derivatives, carry the name in profiles and in the lowered
program's op metadata (``op_name="jit(f)/jaxmm.matmul/..."``)."""

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
