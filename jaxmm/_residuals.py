"""What the forward pass saves of an operand for the backward pass, and how it is read back.

By default an operand is saved as it is. With ``residual_dtype`` a real floating operand wider
than that dtype is saved narrowed, and widened again when the backward pass reads it; the forward
result never changes, only the operands the cotangent products read.

Every *narrowed* operand is tagged with :func:`jax.ad_checkpoint.checkpoint_name` as ``"jaxmm_lhs"``
or ``"jaxmm_rhs"`` (a scale under its operand's name), so that :func:`jax.checkpoint` policies such
as ``save_only_these_names("jaxmm_lhs", "jaxmm_rhs")`` keep exactly the narrowed copies the backward
pass reads. An operand saved as it is carries no name: ``checkpoint_name`` makes a new value, and
JAX forwards a residual that *is* an input of the differentiated function (a layer's weight, a
``lax.scan``'s sliced weights) instead of saving it, only while it is that input. Named, a scanned
weight would be saved a second time, stacked over the layers; unnamed, it is read "from the
argument", as for ``jnp``. A narrowed copy is a new array anyway, so its name costs nothing.

Scaled narrowing
----------------
float16, ``float8_e4m3fn`` and ``float8_e5m2`` cover far fewer powers of two than float32
(float16 ends at 65504 and flushes magnitudes below 6e-8 to zero; ``float8_e4m3fn`` ends at 448),
and a plain cast would turn large operands into inf and small ones into zeros, silently. So when
the residual dtype's exponent range is narrower than the operand's, the operand ``X`` is saved as
``Q = narrow(X / s)`` together with a power-of-two scale ``s``, and read back as ``s · widen(Q)``:

- ``s = 2^e`` is chosen from ``A = max |X|`` over the finite entries so that ``A / s`` lies in
  ``(T/2, T]``, ``T`` the largest finite value of the narrow dtype: the largest magnitude lands at
  the top of the narrow range. Dividing and multiplying by a power of two is exact, so the scale
  adds no rounding; the only rounding is the cast, exactly as without scaling.
- NaN and ±inf are left out of ``A`` (they would make every finite entry zero) and are saved as
  themselves: NaN as NaN, ±inf as ±inf. ``float8_e4m3fn`` has no inf, so there ``T`` is taken as
  256, which no finite entry then rounds above, and its largest value ±448 stands for ±inf.
  The backward pass therefore sees NaN and inf exactly where the exact one does.
- An all-zero operand gets some power-of-two scale and is saved as zeros; ``e`` is clamped so
  that both ``s`` and ``1/s`` are normal numbers of the operand's dtype (which only matters for
  float16 operands of magnitudes below 2^-7, where the flush threshold then stays near float16's
  own smallest numbers).

bfloat16 has float32's exponent range and is saved by a plain cast (from float64 operands it is
scaled too, as is a float32 residual of a float64 operand).

The error this costs (each saved entry)
---------------------------------------
With ``u`` the narrow dtype's unit roundoff and ``τ`` its smallest subnormal, the cast of a scaled
entry errs by at most ``max(u |X|, s τ / 2)``, and ``s ≤ 2 A / T``. So every saved entry is within
``u`` relative of its value, except entries below ``A · 2τ/T`` (the narrow dtype's dynamic range
under the largest entry), which may be flushed with an absolute error of at most ``A · τ / T``:

=================  ============  ==================================
residual dtype      ``u``         range kept below the largest entry
=================  ============  ==================================
float32 (of f64)    2^-24 ≈ 6e-8  2^-276 (all of float32's)
bfloat16            2^-8 ≈ 4e-3   float32's (not scaled)
float16             2^-11 ≈ 5e-4  2^-39 ≈ 2e-12
float8_e5m2         2^-3 = 0.125  ≈ 2^-31 ≈ 5e-10
float8_e4m3fn       2^-4 ≈ 0.06   2^-16 ≈ 2e-5
=================  ============  ==================================

For a gradient ``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]`` this bounds the error entrywise by
``Σ_j |dY[b, i, j]| (u |R[b, c, j]| + s τ / 2)`` (plus the product's own accumulation rounding).
A gradient entry within that error of its own dtype's overflow threshold may overflow where the
exact one does not, as it would from any rounding of the operands.

Which axes a per-channel scale may run along
--------------------------------------------
``residual_scaling="channel"`` gives each index of the saved operand's *kept* axes its own scale.
For the saved rhs, the lhs cotangent is (see :mod:`jaxmm._rules`)

    dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j].

Write ``R[b, c, j] = s[b, c] Q[b, c, j]`` with a scale that does not depend on ``j``. Then

    dL[b, i, c] = Σ_j dY[b, i, j] s[b, c] Q[b, c, j] = s[b, c] · Σ_j dY[b, i, j] Q[b, c, j]

because ``s[b, c]`` is a constant of the sum over ``j``: the scale factors out of the backward
product, which runs on the saved values as they are, and multiplies each entry of its result
once. A scale that varied along ``j`` would sit inside the sum, multiplying every term by a
different factor, and would not factor out. So the scale of a saved rhs may vary along its batch
axes ``b`` and its contracting axes ``c``, never along its free axes ``j``. For the saved lhs the
rhs cotangent is ``dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]``: the same with the roles swapped,
so its scale may vary along ``b`` and ``c``, never along its free axes ``i``. In both cases the
kept axes are the operand's batch and contracting axes, and the absolute maximum is taken over
its free axes. (XLA fuses the multiplication by ``s`` into the widening of ``Q``; the result is
the same.) Each gradient entry then reads one channel of the saved operand under one scale, so a
channel of small values is no longer flushed because another channel holds large ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from ._typing import Dimensions

SCALINGS = ("tensor", "channel")
# The residual dtypes jaxmm saves in: each a real floating dtype that XLA converts to and from.
RESIDUAL_DTYPES = tuple(
    np.dtype(d)
    for d in (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn, jnp.float8_e5m2)
)
# The name of each saved operand (and of its scale) for jax.checkpoint policies.
NAMES = {"lhs": "jaxmm_lhs", "rhs": "jaxmm_rhs"}


class ResidualFormat(NamedTuple):
    """How operands are saved for the backward pass: the canonical, hashable (static) form of the
    public ``residual_dtype`` and ``residual_scaling`` options."""

    dtypes: tuple[np.dtype | None, ...]  # per operand: the dtype it is saved in, or None (as is)
    scaling: str  # one of SCALINGS

    def of(self, side: str) -> np.dtype | None:
        """The dtype the ``"lhs"`` or ``"rhs"`` operand of a product is saved in."""
        return self.dtypes[0 if side == "lhs" else 1]

    def pair(self, lhs: np.dtype | None, rhs: np.dtype | None) -> ResidualFormat | None:
        """The format of one product of two of the operands (``None``: both saved as they are)."""
        return None if lhs is None and rhs is None else ResidualFormat((lhs, rhs), self.scaling)

    def intermediate(self) -> np.dtype | None:
        """What an intermediate result of several products is saved in: the residual dtype when
        one dtype was given for all operands, else as it is (it is no operand of the caller's)."""
        first, *rest = self.dtypes
        return first if all(d == first for d in rest) else None


def canonicalize_residual(
    dtype: Any, scaling: str = "tensor", num_operands: int = 2
) -> ResidualFormat | None:
    """``None`` (save the operands as they are), or the format to save them in.

    ``dtype`` is one dtype for every operand, or a sequence of one dtype (or ``None``, as it is)
    per operand. Raises TypeError for a dtype jaxmm does not save in, ValueError for a sequence
    of the wrong length or an unknown scaling, before any work.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"residual_scaling must be one of {SCALINGS}, got {scaling!r}.")
    if dtype is None:
        return None
    if isinstance(dtype, (tuple, list)):
        if len(dtype) != num_operands:
            raise ValueError(
                f"residual_dtype has {len(dtype)} entries for {num_operands} operands: give one "
                "dtype (or None) per operand, or one dtype for all of them."
            )
        dtypes = tuple(None if d is None else _residual_dtype(d) for d in dtype)
    else:
        dtypes = (_residual_dtype(dtype),) * num_operands
    if all(d is None for d in dtypes):
        return None
    return ResidualFormat(dtypes, scaling)


def _residual_dtype(dtype: Any) -> np.dtype:
    try:
        canonical = np.dtype(dtype)
    except TypeError:
        canonical = None
    if canonical not in RESIDUAL_DTYPES:
        names = ", ".join(d.name for d in RESIDUAL_DTYPES)
        got = canonical if canonical is not None else repr(dtype)
        raise TypeError(
            f"residual_dtype must be one of {names} (or None), got {got}: give one of them for "
            "every operand, or a sequence of one of them (or None) per operand."
        )
    narrow: np.dtype = canonical
    return narrow


def _narrowed(dtype: np.dtype, narrow: np.dtype | None) -> bool:
    """Whether an operand of ``dtype`` is saved in ``narrow``: real floating and wider."""
    return (
        narrow is not None
        and jnp.issubdtype(dtype, np.floating)
        and narrow.itemsize < np.dtype(dtype).itemsize
    )


def is_scaled(dtype: np.dtype, narrow: np.dtype | None) -> bool:
    """Whether an operand of ``dtype`` is saved in ``narrow`` with a scale: narrowed to a dtype
    that covers fewer powers of two. Static: the saved pytree is ``(narrow, scale)`` exactly when
    true."""
    if narrow is None or not _narrowed(dtype, narrow):
        return False
    narrow_info, wide = jnp.finfo(narrow), jnp.finfo(dtype)
    return narrow_info.maxexp < wide.maxexp or narrow_info.minexp > wide.minexp


def _top(narrow: np.dtype) -> float:
    """The largest magnitude a finite entry is scaled to: the narrow dtype's largest finite value,
    or 256 for a dtype without inf, whose larger values then encode ±inf."""
    finfo = jnp.finfo(narrow)
    return float(finfo.max) if _has_inf(narrow) else 2.0 ** (finfo.maxexp - 1)


def _has_inf(dtype: np.dtype) -> bool:
    return bool(np.isinf(np.array(np.inf).astype(dtype)))


def _scale(operand: jax.Array, narrow: np.dtype, reduced_axes: tuple[int, ...]) -> jax.Array:
    """The power of two ``s`` that puts ``max |operand|`` (over ``reduced_axes``, finite entries
    only) in ``(T/2, T]`` with ``T = _top(narrow)``; shaped to broadcast against the operand."""
    wide = jnp.finfo(operand.dtype)
    magnitude = jnp.where(jnp.isfinite(operand), jnp.abs(operand), 0)
    amax = lax.stop_gradient(jnp.max(magnitude, axis=reduced_axes, keepdims=True))
    # amax = m·2^k and T = mt·2^kt with m, mt in [0.5, 1): amax / 2^(k-kt) = m·2^kt, which is
    # at most T when m ≤ mt and otherwise needs one more halving.
    top_mantissa, top_exponent = np.frexp(_top(narrow))
    mantissa, exponent = jnp.frexp(amax)
    exponent = exponent - top_exponent + (mantissa > top_mantissa).astype(exponent.dtype)
    # Both s and 1/s normal numbers of the operand's dtype.
    low, high = max(wide.minexp, 1 - wide.maxexp), min(wide.maxexp - 1, -wide.minexp)
    return jnp.ldexp(jnp.ones((), operand.dtype), jnp.clip(exponent, low, high))


def save_operand(
    operand: jax.Array,
    residual: ResidualFormat | None,
    dimension_numbers: Dimensions,
    side: str,
) -> Any:
    """The operand as saved for the backward pass; a narrowed copy is named ``NAMES[side]`` for
    jax.checkpoint (the operand itself is not: see the module docstring).

    Args:
      operand: the ``lhs`` or ``rhs`` of a ``dot_general``, of any shape.
      residual: the saving format, or ``None`` to save the operand as it is.
      dimension_numbers: the product's; a per-channel scale runs along the operand's batch and
        contracting axes (see the module docstring), the absolute maximum is taken over the others.
      side: ``"lhs"`` or ``"rhs"``.

    Returns:
      The operand itself, the operand cast to its side's residual dtype, or, where that dtype has
      the narrower exponent range, the pair ``(narrow, scale)`` with ``scale`` a power of two of the
      operand's dtype, of shape ``()`` per tensor or the operand's shape with 1 along every axis
      not kept per channel. :func:`load_operand` reads any of them back.
    """
    saved: jax.Array | tuple[jax.Array, jax.Array]
    narrow = None if residual is None else residual.of(side)
    if residual is None or narrow is None or not _narrowed(operand.dtype, narrow):
        return operand
    if not is_scaled(operand.dtype, narrow):
        saved = lax.convert_element_type(operand, narrow)
    else:
        if residual.scaling == "channel":
            kept = _kept_axes(dimension_numbers, side)
            reduced = tuple(a for a in range(operand.ndim) if a not in kept)
        else:
            reduced = tuple(range(operand.ndim))
        scale = _scale(operand, narrow, reduced)
        scaled = operand / scale
        if not _has_inf(narrow):  # ±inf as ±max, which no finite entry rounds to
            top = jnp.finfo(narrow).max.astype(operand.dtype)
            scaled = jnp.where(jnp.isinf(operand), jnp.copysign(top, operand), scaled)
        narrowed = lax.convert_element_type(scaled, narrow)
        saved = (narrowed, scale if residual.scaling == "channel" else scale.reshape(()))
    return checkpoint_name(saved, NAMES[side])


def load_operand(saved: Any, operand_type: Any) -> jax.Array:
    """A saved operand back in its own dtype: every narrow value is a wide one, and the scale a
    power of two, so this adds no rounding to the saved values."""
    dtype = operand_type.dtype
    if not isinstance(saved, tuple):
        return saved if saved.dtype == dtype else lax.convert_element_type(saved, dtype)
    narrow, scale = saved
    widened = lax.convert_element_type(narrow, dtype)
    operand = widened * scale
    if not _has_inf(narrow.dtype):
        top = jnp.finfo(narrow.dtype).max.astype(dtype)
        operand = jnp.where(jnp.abs(widened) == top, jnp.copysign(jnp.inf, widened), operand)
    result: jax.Array = operand
    return result


def _kept_axes(dimension_numbers: Dimensions, side: str) -> tuple[int, ...]:
    """The ``"lhs"`` or ``"rhs"`` operand's batch and contracting axes: the axes of a saved operand
    that its partner's cotangent keeps apart (``b`` and ``c`` of ``R[b, c, j]`` in ``dL``), along
    which a per-channel residual scale may vary (module docstring)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    return (*lhs_batch, *lhs_contract) if side == "lhs" else (*rhs_batch, *rhs_contract)
