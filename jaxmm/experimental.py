"""jaxmm's products as one JAX primitive: forward mode (``jax.jvp``, ``jax.jacfwd``,
``jax.linearize``) as well as reverse mode, each with a rule derived by hand, whatever the
options.

The default functions (``jaxmm.matmul``, ``jaxmm.einsum``, ...) support forward mode with their
default options, but with ``residual_dtype`` they are ``jax.custom_vjp`` functions, for which JAX
refuses it. The functions here are the same functions (signatures, results, dtypes, errors,
options, layout code and backward rules, :mod:`jaxmm._namespace`), with every product one primitive
(``jax.experimental.hijax.HiPrim``, called ``VJPHiPrimitive`` before JAX 0.11.2) that also
carries the hand-derived JVP, ``dY = dL·R + L·dR`` (derivation in ``jaxmm/_rules.py``), a
batching rule, a transpose rule and a checkpointing rule. The primitive API is experimental in
JAX, and so is this module: it needs JAX 0.10.2 or newer.

For ``Y = W X``::

  forward  (jvp):  dY = dW X + W dX
  backward (vjp):  dW = dY Xᵀ,   dX = Wᵀ dY     (the transpose of the forward rule)

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxmm import experimental
  >>> w, x = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.ones((2, 1))
  >>> y, dy = jax.jvp(experimental.matmul, (w, x), (jnp.eye(2), jnp.zeros((2, 1))))
  >>> dy  # dW X with dW = I
  Array([[1.],
         [1.]], dtype=float32)
"""

from __future__ import annotations

import jax

from ._compat import HIJAX_BASE, HIJAX_MISSING

if HIJAX_BASE is None:  # pragma: no cover - depends on the installed JAX
    raise ImportError(HIJAX_MISSING.format(version=jax.__version__))

from ._namespace import Family, family
from ._primitive import hijax_dot_general

__all__ = [*Family._fields]


dot, dot_general, einsum, inner, matmul, matvec, outer, tensordot, vdot, vecdot, vecmat = family(
    hijax_dot_general, __name__
)
