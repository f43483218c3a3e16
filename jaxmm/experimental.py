"""jaxmm's products as one JAX primitive: forward mode (``jax.jvp``, ``jax.jacfwd``,
``jax.linearize``) as well as reverse mode, each with a rule derived by hand, whatever the
options.

The default functions (``jaxmm.matmul``, ``jaxmm.einsum``, ...) support forward mode with their
default options, but with ``residual_dtype`` they are ``jax.custom_vjp`` functions, for which JAX
refuses it. The functions here are the same functions (signatures, results, dtypes, errors,
options, layout code and backward rules), with every product one primitive
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

from collections.abc import Sequence

import jax

from ._compat import HIJAX_BASE, HIJAX_MISSING

if HIJAX_BASE is None:  # pragma: no cover - depends on the installed JAX
    raise ImportError(HIJAX_MISSING.format(version=jax.__version__))

from . import _products, _vectorized
from ._dot_general import apply_dot_general
from ._einsum import OptimizeLike, apply_einsum, num_operands
from ._matmul import apply_matmul
from ._options import Options
from ._primitive import primitive_product
from ._scope import named
from ._typing import ArrayLike, DotDimensionNumbers, DTypeLike, OutSharding, PrecisionLike

__all__ = [
    "dot",
    "dot_general",
    "einsum",
    "inner",
    "matmul",
    "matvec",
    "outer",
    "tensordot",
    "vdot",
    "vecdot",
    "vecmat",
]

# Each function: the public signature of its jaxmm namesake, whose documentation (arguments,
# result, backward rule) is its own; the options made one Options value; the same layout code.


@named("jaxmm.experimental.dot_general")
def dot_general(
    lhs: ArrayLike,
    rhs: ArrayLike,
    dimension_numbers: DotDimensionNumbers,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    *,
    out_sharding: OutSharding = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.dot_general` as one primitive that also has a hand-derived forward rule.

    Forward (``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]``)::

      dY[b, i, j] = Σ_c dL[b, i, c] R[b, c, j] + Σ_c L[b, i, c] dR[b, c, j]

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmm import experimental
      >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> dn = (((1,), (0,)), ((), ()))
      >>> jax.jvp(lambda x: experimental.dot_general(x, w, dn), (x,), (x,))[1][0]
      Array([3., 3., 3., 3.], dtype=float32)
    """
    opts = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
    )
    return apply_dot_general(primitive_product, lhs, rhs, dimension_numbers, opts)


@named("jaxmm.experimental.matmul")
def matmul(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.matmul` with every product :func:`jaxmm.experimental.dot_general`'s.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmm import experimental
      >>> a, b = jnp.ones((2, 3)), jnp.ones((3,))
      >>> jax.jacfwd(experimental.matmul, argnums=1)(a, b)
      Array([[1., 1., 1.],
             [1., 1., 1.]], dtype=float32)
    """
    opts = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
    )
    return apply_matmul(primitive_product, a, b, opts)


@named("jaxmm.experimental.einsum")
def einsum(
    subscripts: str | ArrayLike,
    /,
    *operands: ArrayLike,
    out: None = None,
    optimize: OptimizeLike = "auto",
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.einsum` with every pairwise contraction one primitive.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxmm import experimental
      >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
      >>> y, linear = jax.linearize(lambda w: experimental.einsum("ij,jk->ik", x, w), w)
      >>> linear(2 * w)[0]
      Array([6., 6., 6., 6.], dtype=float32)
    """
    if out is not None:
        raise NotImplementedError("The 'out' argument to jaxmm.einsum is not supported.")
    count = num_operands(subscripts, operands)
    opts = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling, count
    )
    return apply_einsum(primitive_product, subscripts, operands, optimize, opts)


@named("jaxmm.experimental.dot")
def dot(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.dot` as one primitive with a forward rule."""
    opts = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
    )
    return _products.apply_dot(primitive_product, a, b, opts)


@named("jaxmm.experimental.tensordot")
def tensordot(
    a: ArrayLike,
    b: ArrayLike,
    axes: int | Sequence[int] | Sequence[Sequence[int]] = 2,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: OutSharding = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.tensordot` as one primitive with a forward rule."""
    opts = Options.of(
        precision, preferred_element_type, out_sharding, residual_dtype, residual_scaling
    )
    return _products.apply_tensordot(primitive_product, a, b, axes, opts)


@named("jaxmm.experimental.vdot")
def vdot(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.vdot` as one primitive with a forward rule."""
    opts = Options.of(precision, preferred_element_type, None, residual_dtype, residual_scaling)
    return _products.apply_vdot(primitive_product, a, b, opts)


@named("jaxmm.experimental.inner")
def inner(
    a: ArrayLike,
    b: ArrayLike,
    *,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.inner` as one primitive with a forward rule."""
    opts = Options.of(precision, preferred_element_type, None, residual_dtype, residual_scaling)
    return _products.apply_inner(primitive_product, a, b, opts)


@named("jaxmm.experimental.outer")
def outer(
    a: ArrayLike,
    b: ArrayLike,
    out: None = None,
    *,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.outer` as one primitive with a forward rule."""
    opts = Options.of(None, None, None, residual_dtype, residual_scaling)
    return _products.apply_outer(primitive_product, a, b, out, opts)


@named("jaxmm.experimental.matvec")
def matvec(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.matvec` as one primitive with a forward rule."""
    opts = Options.of(None, None, None, residual_dtype, residual_scaling)
    return _vectorized.apply_matvec(primitive_product, x1, x2, opts)


@named("jaxmm.experimental.vecmat")
def vecmat(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.vecmat` as one primitive with a forward rule."""
    opts = Options.of(None, None, None, residual_dtype, residual_scaling)
    return _vectorized.apply_vecmat(primitive_product, x1, x2, opts)


@named("jaxmm.experimental.vecdot")
def vecdot(
    x1: ArrayLike,
    x2: ArrayLike,
    /,
    *,
    axis: int = -1,
    precision: PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    residual_dtype: DTypeLike | None = None,
    residual_scaling: str = "tensor",
) -> jax.Array:
    """:func:`jaxmm.vecdot` as one primitive with a forward rule."""
    opts = Options.of(precision, preferred_element_type, None, residual_dtype, residual_scaling)
    return _vectorized.apply_vecdot(primitive_product, x1, x2, axis, opts)
