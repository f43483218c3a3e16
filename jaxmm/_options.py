"""The keyword options of a product, canonicalised once into one static value.

Every public function takes some of ``precision``, ``preferred_element_type``, ``out_sharding``
(as the ``jnp`` / ``lax`` function it mirrors) and jaxmm's ``residual_dtype`` /
``residual_scaling``. It turns them into one frozen, hashable :class:`Options` with
:meth:`Options.of` before any work, and hands that down: to the layout code, to ``jax.jit`` as one
static argument, to the mechanism that computes each product and to the rules. Nothing below the
public functions sees an option in its user-facing form.

The mechanism is an option too, though no keyword sets it: the public functions of ``jaxmm`` use
the default one, and the namespaces ``jaxmm.custom_vjp`` and ``jaxmm.experimental`` call the same
public functions with :func:`using` in force (:mod:`jaxmm._namespace`), which :meth:`Options.of`
reads. Being part of the static options, it keys ``jax.jit``'s caches as any other option does.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from ._residuals import ResidualFormat, canonicalize_residual
from ._typing import Dimensions, DTypeLike, OutSharding, PrecisionLike

# A differentiation mechanism: ``lax.dot_general`` of checked, canonical arguments, with
# hand-derived rules (``jaxmm._dot_general.default_mechanism``, ``jaxmm._custom_vjp.dot_general``,
# ``jaxmm._primitive.hijax_dot_general``).
Mechanism = Callable[[jax.Array, jax.Array, Dimensions, "Options"], jax.Array]

_MECHANISM: contextvars.ContextVar[Mechanism | None] = contextvars.ContextVar(
    "jaxmm_mechanism", default=None
)


@contextlib.contextmanager
def using(mechanism: Mechanism) -> Iterator[None]:
    """Within this context, :meth:`Options.of` gives ``mechanism`` to every product it sets up."""
    token = _MECHANISM.set(mechanism)
    try:
        yield
    finally:
        _MECHANISM.reset(token)


@dataclasses.dataclass(frozen=True)
class Options:
    """A product's options, canonical: static (hashable) facts of the program.

    Attributes:
      precision: as ``lax.dot_general``'s, lists made tuples.
      preferred_element_type: accumulation (and result) dtype, or ``None``; float64 is float32
        without x64, as JAX computes it.
      out_sharding: the result's sharding, as ``lax.dot_general``'s.
      residual: how the operands are saved for the backward pass (``None``: as they are).
      mechanism: the :data:`Mechanism` that computes each product (``None``: jaxmm's default).
    """

    precision: Any = None
    preferred_element_type: np.dtype[Any] | None = None
    out_sharding: OutSharding = None
    residual: ResidualFormat | None = None
    mechanism: Mechanism | None = None

    @classmethod
    def of(
        cls,
        precision: PrecisionLike = None,
        preferred_element_type: DTypeLike | None = None,
        out_sharding: OutSharding = None,
        residual_dtype: Any = None,
        residual_scaling: str = "tensor",
        num_operands: int = 2,
        reduction_order: Any = None,
    ) -> Options:
        """The public keyword options as one :class:`Options`, checked (TypeError / ValueError for a
        residual option jaxmm does not know, NotImplementedError for a ``reduction_order``, before
        any work)."""
        if reduction_order is not None:
            # JAX 0.12.1's reduction_order fixes the summation order of one contraction; the
            # backward products contract other axes, whose order it does not say.
            raise NotImplementedError(
                f"jaxmm does not take reduction_order (got {reduction_order!r}): its backward "
                "products contract other axes than the forward product. Pass None."
            )
        if isinstance(precision, list):
            precision = tuple(precision)
        dtype = None
        if preferred_element_type is not None:
            dtype = jax.dtypes.canonicalize_dtype(np.dtype(preferred_element_type))
        return cls(
            precision,
            dtype,
            out_sharding,
            canonicalize_residual(residual_dtype, residual_scaling, num_operands),
            _MECHANISM.get(),
        )

    def replace(self, **changes: Any) -> Options:
        """These options with some changed (one product of several: its own dtype, sharding,
        or residual format)."""
        return dataclasses.replace(self, **changes)

    def lax_params(self) -> dict[str, Any]:
        """The keyword arguments ``lax.dot_general`` takes of these options."""
        return dict(
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            out_sharding=self.out_sharding,
        )
