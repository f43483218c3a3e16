"""A namespace of jaxmm's products computed by another mechanism, built from the public functions.

``jaxmm.custom_vjp`` and ``jaxmm.experimental`` are jaxmm's public functions (signatures, layout
code, checks, errors, rules) with one thing changed: the mechanism that gives each product's
rules to JAX. :func:`with_mechanism` wraps a public function so that, while it runs, the options
it canonicalises carry that mechanism (:func:`jaxmm._options.using`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from ._options import Product, using

F = TypeVar("F", bound=Callable[..., Any])


def with_mechanism(public: F, mechanism: Product, namespace: str) -> F:
    """``public`` (a function of :mod:`jaxmm`) with every product computed by ``mechanism``, named
    ``namespace.<name>`` (in profiles too), with ``public``'s signature."""
    name = public.__name__

    @functools.wraps(public)
    def function(*args: Any, **kwargs: Any) -> Any:
        with using(mechanism), jax.named_scope(f"{namespace}.{name}"):
            return public(*args, **kwargs)

    function.__module__ = namespace
    function.__doc__ = (
        f":func:`jaxmm.{name}` with every product computed by the mechanism of "
        f":mod:`{namespace}`: the same signature, result, dtypes, errors and options."
    )
    return function  # type: ignore[return-value]
