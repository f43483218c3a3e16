"""What every mechanism registers: the rules of :mod:`jaxmm._rules` in the forms JAX asks each
mechanism for them, written once and used by the primitive (:mod:`jaxmm._bilinear`), the
``jax.custom_vjp`` (:mod:`jaxmm._custom_vjp`) and the hijax primitive (:mod:`jaxmm._primitive`).

- :func:`cotangents`: the backward rule for the operands whose cotangent is wanted (an operand is
  given only where its partner's cotangent needs it).
- :func:`transpose`: the transpose of a tangent product, linear in one operand: the backward rule
  for that operand.
- :func:`batch`: ``vmap`` as new dimension numbers (a mapped axis of one operand is one more free
  axis of it, of both one more batch pair; derived in :mod:`jaxmm._bilinear`).
- :func:`result_type`: the type of ``lax.dot_general``'s result, which each product carries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax

from ._options import Mechanism, Options
from ._rules import forward, free_axes, full_spec, lhs_cotangent, rhs_cotangent
from ._typing import Dimensions


def cotangents(
    cotangent: jax.Array,
    lhs: jax.Array | None,
    rhs: jax.Array | None,
    types: tuple[Any, Any],
    dimensions: Dimensions,
    options: Options,
) -> tuple[jax.Array | None, jax.Array | None]:
    """``(L̄, R̄)``, each computed where its partner is given (``L̄`` reads ``R``, ``R̄`` reads
    ``L``) and ``None`` where it is not: an operand nobody differentiates costs no product."""
    lhs_type, rhs_type = types
    lhs_ct = rhs_ct = None
    if rhs is not None:
        lhs_ct = lhs_cotangent(cotangent, lhs_type, rhs, dimensions, options)
    if lhs is not None:
        rhs_ct = rhs_cotangent(cotangent, lhs, rhs_type, dimensions, options)
    return lhs_ct, rhs_ct


def transpose(
    cotangent: jax.Array,
    lhs: Any,
    rhs: Any,
    linear: tuple[bool, bool],
    types: tuple[Any, Any],
    dimensions: Dimensions,
    options: Options,
) -> jax.Array:
    """The transpose of a tangent product (``dL·R`` is linear in ``L``, ``L·dR`` in ``R``): the
    backward rule for the one linear operand (module docstring), reading the other one."""
    lhs_linear, rhs_linear = linear
    if lhs_linear == rhs_linear:
        raise NotImplementedError(
            "jaxmm's product is linear in one operand at a time; transposing it with respect to "
            f"{'both' if lhs_linear else 'neither'} operands is not defined."
        )
    lhs_ct, rhs_ct = cotangents(
        cotangent,
        None if lhs_linear else lhs,
        None if rhs_linear else rhs,
        types,
        dimensions,
        options,
    )
    result = lhs_ct if lhs_linear else rhs_ct
    assert result is not None
    return result


def batch(
    mechanism: Mechanism,
    lhs: jax.Array,
    rhs: jax.Array,
    mapped: tuple[int | None, int | None],
    dimensions: Dimensions,
    options: Options,
    axis_data: Any,
) -> tuple[jax.Array, int | None]:
    """The batching rule: ``vmap`` of a product is the same ``mechanism``'s product with new
    dimension numbers (a mapped axis of one operand is one more free axis of it, of both one more
    batch pair) and the result sharding with the mapped axis inserted. Returns the result and its
    mapped axis."""
    lhs_dim, rhs_dim = mapped  # None: not mapped
    if lhs_dim is None and rhs_dim is None:  # vmap of jvp asks this for unmapped values
        return mechanism(lhs, rhs, dimensions, options), None
    dimensions, out_dim = batched_dimension_numbers(
        dimensions, lhs.ndim, rhs.ndim, lhs_dim, rhs_dim
    )
    sharding = batched_sharding(options.out_sharding, out_dim, axis_data)
    return mechanism(lhs, rhs, dimensions, options.replace(out_sharding=sharding)), out_dim


@functools.lru_cache(maxsize=4096)
def result_type(lhs_type: Any, rhs_type: Any, dimensions: Dimensions, options: Options) -> Any:
    """The type of ``lax.dot_general``'s own result (shape, dtype, weak type, sharding and the
    ``shard_map`` varying axes of the operands): a mechanism's product is typed as the product it
    stands for."""
    return jax.typeof(
        jax.eval_shape(
            functools.partial(forward, dimensions=dimensions, options=options), lhs_type, rhs_type
        )
    )


def batched_dimension_numbers(
    dimension_numbers: Dimensions,
    lhs_ndim: int,
    rhs_ndim: int,
    lhs_dim: int | None,
    rhs_dim: int | None,
) -> tuple[Dimensions, int]:
    """The dimension numbers of the product with a mapped axis at ``lhs_dim`` / ``rhs_dim``
    (``None``: not mapped) of operands of rank ``lhs_ndim`` / ``rhs_ndim`` (mapped axes
    included), and the mapped axis' position in the result (module docstring: a mapped axis of
    one operand is a free axis of it, of both a new batch pair)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_contract, lhs_batch = _shift(lhs_contract, lhs_dim), _shift(lhs_batch, lhs_dim)
    rhs_contract, rhs_batch = _shift(rhs_contract, rhs_dim), _shift(rhs_batch, rhs_dim)
    lhs_free = free_axes(lhs_ndim, lhs_contract, lhs_batch)
    if lhs_dim is not None and rhs_dim is not None:
        # One more batch pair, the last: the product emits it after the others.
        out_dim = len(lhs_batch)
        lhs_batch, rhs_batch = (*lhs_batch, lhs_dim), (*rhs_batch, rhs_dim)
    elif lhs_dim is not None:  # a free axis of L, among L's free axes in increasing order
        out_dim = len(lhs_batch) + lhs_free.index(lhs_dim)
    else:
        assert rhs_dim is not None
        rhs_free = free_axes(rhs_ndim, rhs_contract, rhs_batch)
        out_dim = len(lhs_batch) + len(lhs_free) + rhs_free.index(rhs_dim)
    return ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)), out_dim


def batched_sharding(sharding: Any, out_dim: int, axis_data: Any) -> Any:
    """The result sharding with the mapped axis inserted at ``out_dim`` (sharded along the
    vmap's mesh axis, ``spmd_axis_name``, if it has one)."""
    if sharding is None:
        return None
    spec = full_spec(sharding, out_dim)
    mesh_axis = getattr(axis_data, "explicit_mesh_axis", None)
    spec = (*spec[:out_dim], mesh_axis, *spec[out_dim:])
    return sharding.update(spec=jax.sharding.PartitionSpec(*spec))


def _shift(axes: Sequence[int], inserted: int | None) -> tuple[int, ...]:
    """Axis indices after inserting an axis at ``inserted``."""
    if inserted is None:
        return tuple(axes)
    return tuple(axis + (axis >= inserted) for axis in axes)
