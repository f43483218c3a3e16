"""The rules of ``dot_general``, for any dimension numbers, that every mechanism of jaxmm shares
(the primitive of :mod:`jaxmm._bilinear`, the ``custom_vjp`` of :mod:`jaxmm._custom_vjp`, the
hijax primitive of :mod:`jaxmm._primitive`): the backward rules and the forward rule (derived
below), what each needs saved, and the batching rule (a ``vmap``-ped axis of one operand is one
more free axis of it, of both one more batch pair; derived in :mod:`jaxmm._bilinear`).

The derivation, for any dimension numbers
-----------------------------------------
Group the axes of each operand into three kinds: *batch* axes (paired between the operands and kept
in the output), *contracting* axes (paired and summed over) and *free* axes (all the others, kept in
the output). With one multi-index for each kind, ``lax.dot_general`` computes

    Y[b, i, j] = Σ_c L[b, i, c] · R[b, c, j]

where ``b`` runs over the batch axes, ``i`` over the lhs free axes, ``j`` over the rhs free axes and
``c`` over the contracting axes; the output axes come in the order (batch, lhs free, rhs free).

As in the seed derivation for ``Y = W X``, the chain rule gives
``dL[b, i, c] = Σ_{b', i', j'} dY[b', i', j'] · ∂Y[b', i', j'] / ∂L[b, i, c]``. ``Y[b', i', j']``
depends on ``L[b, i, c]`` only when ``b' = b`` and ``i' = i`` (it reads row ``i`` of batch ``b``
only), and then its derivative is ``R[b, c, j']``. Every other term vanishes, leaving

    dL[b, i, c] = Σ_j dY[b, i, j] · R[b, c, j]

which is again a ``dot_general``: of ``dY`` with ``R``, contracting ``dY``'s rhs-free axes with
``R``'s free axes and pairing the batch axes. It yields the axes in the order (batch, lhs free,
rhs's remaining = contracting axes); one transpose puts them back in ``L``'s own order. For
``Y = L R`` with 2-D operands this is ``dL = dY Rᵀ``; the rhs rule is the same rule with the roles
of the operands swapped, ``dR[b, c, j] = Σ_i dY[b, i, j] · L[b, i, c]`` (``dR = Lᵀ dY``). Nothing is
conjugated: for complex operands JAX's convention is the plain transpose.

The forward rule, derived
-------------------------
With one multi-index per kind of axis, as above,

    Y[b, i, j] = Σ_c L[b, i, c] · R[b, c, j].

Move ``L`` by ``ε·dL`` and ``R`` by ``ε·dR``. Each term of the sum is a product of one entry of
``L`` and one of ``R``, so

    (L + ε dL)[b, i, c] · (R + ε dR)[b, c, j]
        = L[b, i, c] R[b, c, j] + ε (dL[b, i, c] R[b, c, j] + L[b, i, c] dR[b, c, j])
          + ε² dL[b, i, c] dR[b, c, j],

and the first-order term, summed over ``c``, is the directional derivative (the product rule;
``Y`` is bilinear, so nothing else survives ``ε → 0``):

    dY[b, i, j] = Σ_c dL[b, i, c] R[b, c, j] + Σ_c L[b, i, c] dR[b, c, j].

Each sum is the primal's ``dot_general`` with the primal's dimension numbers, of a tangent with
the other operand (for ``Y = L R``: ``dY = dL R + L dR``). A symbolic-zero tangent (an operand
nobody differentiates with respect to) drops its term, and no product is computed for it. Both
tangent products are this primitive again, so differentiating a JVP in reverse mode (``jax.grad``
of a function that calls ``jax.jvp``, ``jax.jacrev(jax.jacfwd(f))``) runs the hand-written
backward rules once more.

Transposing the forward rule gives the backward rules
----------------------------------------------------
For fixed primals the JVP is linear in the tangents. Its transpose maps an output cotangent
``dY`` to the input cotangents ``(L̄, R̄)`` with
``⟨dY, dL·R + L·dR⟩ = ⟨L̄, dL⟩ + ⟨R̄, dR⟩`` for every ``dL``, ``dR``. Write the left side out:

    Σ_{b,i,j} dY[b, i, j] (Σ_c dL[b, i, c] R[b, c, j] + Σ_c L[b, i, c] dR[b, c, j])
      = Σ_{b,i,c} dL[b, i, c] (Σ_j dY[b, i, j] R[b, c, j])
      + Σ_{b,c,j} dR[b, c, j] (Σ_i dY[b, i, j] L[b, i, c]),

reading off the coefficients of ``dL`` and ``dR``:

    L̄[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]      (2-D: L̄ = dY Rᵀ)
    R̄[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]      (2-D: R̄ = Lᵀ dY)

which are exactly the backward rules derived from the chain rule above (the same
functions, :func:`lhs_cotangent` and :func:`rhs_cotangent`, compute both). The seed's mnemonic seen
from the other side: in ``dY = dL·R`` replace each tangent by its cotangent and move ``R`` to the
other side transposed, ``L̄ = dY·Rᵀ``. So the transpose rule of the linear tangent products is the
backward rule, ``vjp_bwd_retval`` is the transposed JVP evaluated at the saved operands, and no
rule is obtained from JAX's autodiff.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax import lax

from ._typing import Dimensions

if TYPE_CHECKING:  # _options imports _residuals, which computes with the rules' axes
    from ._options import Options


def lhs_cotangent(
    cotangent: jax.Array,
    lhs_type: Any,
    rhs: jax.Array,
    dimension_numbers: Dimensions,
    options: Options,
    *,
    rhs_free_first: bool = False,
) -> jax.Array:
    """``dL[b, i, c] = Σ_j dY[b, i, j] R[b, c, j]``, in ``L``'s axis order, shape and dtype.

    ``rhs_free_first`` says that the rhs free axes come before the lhs free axes in ``cotangent``:
    that is how the rhs rule reuses this one, with the operands' roles swapped.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_free = free_axes(lhs_type.ndim, lhs_contract, lhs_batch)
    rhs_free = free_axes(rhs.ndim, rhs_contract, rhs_batch)
    num_batch = len(lhs_batch)
    # Y's axes are (batch, lhs free, rhs free), or (batch, rhs free, lhs free) when swapped.
    rhs_free_start = num_batch if rhs_free_first else num_batch + len(lhs_free)
    summed = tuple(range(rhs_free_start, rhs_free_start + len(rhs_free)))  # j, in Y
    batch = tuple(range(num_batch))  # b, in Y
    # R's contracting axis rhs_contract[k] is paired with L's axis lhs_contract[k]; a product
    # yields R's contracting axes in R's order, which are these axes of L:
    c_axes = tuple(lhs_contract[k] for k in np.argsort(rhs_contract, kind="stable"))
    # Σ_j pairs Y's rhs-free axes with R's free axes, b stays paired with R's batch axes; the
    # product's axes are (b, i, c), transposed back to L's order.
    product_axes = (*lhs_batch, *lhs_free, *c_axes)
    product = forward(
        cotangent,
        rhs,
        ((summed, rhs_free), (batch, rhs_batch)),
        options.replace(out_sharding=_cotangent_sharding(lhs_type, product_axes)),
    )
    lhs_cotangent = _transpose(product, tuple(np.argsort(product_axes, kind="stable")))
    return _cast_like(lhs_cotangent, lhs_type)


def rhs_cotangent(
    cotangent: jax.Array,
    lhs: jax.Array,
    rhs_type: Any,
    dimension_numbers: Dimensions,
    options: Options,
) -> jax.Array:
    """``dR[b, c, j] = Σ_i dY[b, i, j] L[b, i, c]``, in ``R``'s axis order, shape and dtype: the
    lhs rule with the operands' roles (and dimension numbers) swapped."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    swapped = ((rhs_contract, lhs_contract), (rhs_batch, lhs_batch))
    return lhs_cotangent(cotangent, rhs_type, lhs, swapped, options, rhs_free_first=True)


def forward(lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options) -> jax.Array:
    """``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]``: ``lax.dot_general`` with the options, what every
    mechanism computes and lowers to."""
    return lax.dot_general(lhs, rhs, dimensions, **options.lax_params())


def has_cotangent(operand_type: Any) -> bool:
    """Whether an operand has a cotangent: integer and boolean ones have none (JAX gives them
    float0 zeros), so their partner need not be saved nor their cotangent product computed."""
    return bool(jax.numpy.issubdtype(operand_type.dtype, np.inexact))


def tangent(
    lhs: Any, rhs: Any, lhs_dot: Any, rhs_dot: Any, product: Callable[[Any, Any], jax.Array]
) -> jax.Array | None:
    """The forward rule, ``dY = dL·R + L·dR`` (``product`` the same product of other operands):
    a tangent ``None`` (symbolic zero: frozen weights, inputs) drops its term, and no product is
    computed for it; ``None`` when both are. Derived in the module docstring."""
    terms = []
    if lhs_dot is not None:
        terms.append(product(lhs_dot, rhs))
    if rhs_dot is not None:
        terms.append(product(lhs, rhs_dot))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else lax.add(*terms)


def free_axes(ndim: int, contract: Sequence[int], batch: Sequence[int]) -> tuple[int, ...]:
    """The axes that are neither contracted nor batched, in increasing order."""
    return tuple(axis for axis in range(ndim) if axis not in contract and axis not in batch)


def _transpose(x: jax.Array, permutation: tuple[int, ...]) -> jax.Array:
    if permutation == tuple(range(x.ndim)):
        return x
    return lax.transpose(x, permutation)


def _cotangent_sharding(operand_type: Any, product_axes: tuple[int, ...]) -> Any:
    """The operand's own sharding, laid out in the order the cotangent product emits its axes, so
    that each cotangent comes out sharded like its primal (``None`` outside any mesh)."""
    sharding = operand_type.sharding
    if sharding.mesh.empty:
        return None
    spec = full_spec(sharding, operand_type.ndim)
    return sharding.update(spec=jax.sharding.PartitionSpec(*(spec[axis] for axis in product_axes)))


def _cast_like(cotangent: jax.Array, primal_type: Any) -> jax.Array:
    """A cotangent has its primal's dtype: the real part for a real operand of a complex product
    (the imaginary part is not a direction the real operand can move in)."""
    if jax.numpy.iscomplexobj(cotangent) and not jax.numpy.issubdtype(
        primal_type.dtype, np.complexfloating
    ):
        cotangent = lax.real(cotangent)
    if cotangent.dtype != primal_type.dtype:
        cotangent = lax.convert_element_type(cotangent, primal_type.dtype)
    return cotangent


def full_spec(sharding: Any, ndim: int) -> tuple[Any, ...]:
    """The mesh axes of the first ``ndim`` array axes (or more, where it names more) of a
    ``NamedSharding`` or a ``PartitionSpec``: padded with ``None``, as a spec may leave trailing
    axes out."""
    spec = tuple(sharding if isinstance(sharding, jax.sharding.PartitionSpec) else sharding.spec)
    return spec + (None,) * (ndim - len(spec))
