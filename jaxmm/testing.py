"""Checks for hand-written derivatives, jaxmm's own or anyone's.

- :func:`check_vjp`: ``jax.vjp`` of a function against ``jax.vjp`` of a trusted reference, with a
  random cotangent, every output and cotangent compared (value, dtype, shape) at a per-dtype
  tolerance, under ``jit`` and eagerly.
- :func:`check_jvp`: the same for ``jax.jvp`` (forward mode), with random tangents.
- :func:`check_structure`: the compiled forward+backward program against the reference's (dot
  count, XLA FLOPs, collectives).
- :func:`check_finite_differences`: the VJP against central differences of the function itself,
  in float64.

See ``docs/testing.md`` for a worked example on a user's own quantized ``custom_vjp`` product.
"""

from ._structure import check_structure as check_structure
from ._structure import structure as structure
from ._testing import TOLERANCE as TOLERANCE
from ._testing import assert_allclose as assert_allclose
from ._testing import check_finite_differences as check_finite_differences
from ._testing import check_jvp as check_jvp
from ._testing import check_vjp as check_vjp
from ._testing import tolerance as tolerance

__all__ = [
    "TOLERANCE",
    "assert_allclose",
    "check_finite_differences",
    "check_jvp",
    "check_structure",
    "check_vjp",
    "structure",
    "tolerance",
]
