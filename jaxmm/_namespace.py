"""A namespace of jaxmm's products computed by another mechanism, built from the public functions.

``jaxmm.custom_vjp`` and ``jaxmm.experimental`` are jaxmm's public functions (signatures, layout
code, checks, errors, rules) with one thing changed: the mechanism that gives each product's
rules to JAX. :func:`with_mechanism` wraps a public function so that, while it runs, the options
it canonicalises carry that mechanism (:func:`jaxmm._options.using`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax

from . import _dot_general, _einsum, _matmul, _products, _vectorized
from ._options import Mechanism, using

F = TypeVar("F", bound=Callable[..., Any])
Function = Callable[..., jax.Array]


class Family(NamedTuple):
    """jaxmm's products, in alphabetical order."""

    dot: Function
    dot_general: Function
    einsum: Function
    inner: Function
    matmul: Function
    matvec: Function
    outer: Function
    tensordot: Function
    vdot: Function
    vecdot: Function
    vecmat: Function


PUBLIC = Family(
    _products.dot,
    _dot_general.dot_general,
    _einsum.einsum,
    _products.inner,
    _matmul.matmul,
    _vectorized.matvec,
    _products.outer,
    _products.tensordot,
    _products.vdot,
    _vectorized.vecdot,
    _vectorized.vecmat,
)


def family(mechanism: Mechanism, namespace: str) -> Family:
    """Every product of :data:`PUBLIC` with its products computed by ``mechanism``."""
    return Family(*(with_mechanism(public, mechanism, namespace) for public in PUBLIC))


def with_mechanism(public: F, mechanism: Mechanism, namespace: str) -> F:
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
