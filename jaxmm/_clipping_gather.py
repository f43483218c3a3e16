"""Per-example squared norms for an embedding table read by a row gather (``table[tokens]``),
alone or tied to an output layer's product, without per-example copies of the table.

For one example, let ``E[n, :]`` be the cotangent of the ``n``-th gathered row, ``k_n`` its row
index, ``S`` the one-hot matrix ``S[n, v] = [k_n = v]``. The table's gradient from the gather is
``Sᵀ E`` (a scatter-add), and, as for a product (:func:`jaxmm._clipping_norms.parameter_norm_sq`),

    ‖Sᵀ E‖² = Σ_{n, m} (S Sᵀ)[n, m] ⟨E[n], E[m]⟩ = Σ_{n, m} [k_n = k_m] ⟨E[n], E[m]⟩,

a Gram matrix of the ``N`` rows (cost ``N²·d``), or the scatter-add itself (``V·d``) when that is
smaller. Tied to a product whose per-example gradient is ``P`` (``[V, d]``, read off by that
product's rule), the table's gradient is ``Sᵀ E + P`` and

    ‖Sᵀ E + P‖² = ‖Sᵀ E‖² + ‖P‖² + 2 Σ_n ⟨E[n], P[k_n]⟩,

where ``P[k_n] = Σ_i dY[i, k_n] X[i]`` (``Y = X Pᵀ`` the output layer) needs only the ``N``
columns of the output cotangent at the gathered rows. The product's backward rule runs first, so
it hands ``P[k_n]`` (``[N, d]``) to the gather's rule as the cotangent of a zero ``[N, d]`` output
of the gather (a channel carrying nothing forward), and the gather's rule adds the cross term.
Rows out of range count as dropped (as the gather's transpose drops them), or clipped in
``CLIP`` mode.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def is_row_gather(eqn: Any) -> bool:
    """Whether ``eqn`` is ``table[indices]`` of a 2-D table, whole rows (``jnp`` indexing,
    ``jnp.take(axis=0)``, Flax ``Embed``)."""
    if eqn.primitive.name != "gather" or eqn.invars[0].aval.ndim != 2:
        return False
    numbers = eqn.params["dimension_numbers"]
    width = eqn.invars[0].aval.shape[1]
    return bool(
        tuple(numbers.collapsed_slice_dims) == (0,)
        and tuple(numbers.start_index_map) == (0,)
        and tuple(numbers.offset_dims) == (eqn.outvars[0].aval.ndim - 1,)
        and not tuple(getattr(numbers, "operand_batching_dims", ()))
        and tuple(eqn.params["slice_sizes"]) == (1, width)
        and eqn.invars[1].aval.shape[-1] == 1
    )


@dataclasses.dataclass(frozen=True, eq=False)
class GatherTap:
    """One tapped gather: its primitive and parameters, and whether it is tied to a product."""

    primitive: Any
    params: dict[str, Any]
    tied: bool

    def rows(self, indices: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
        """The example's row indices ``[N]`` (clipped into range) and which are kept."""
        flat = indices.reshape(-1)
        kept = (flat >= 0) & (flat < num_rows)
        if "CLIP" in str(self.params["mode"]):
            kept = jnp.ones_like(kept)
        return jnp.clip(flat, 0, num_rows - 1), kept


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def tapped_gather(
    table: jax.Array, indices: jax.Array, probe: jax.Array, tap: GatherTap
) -> tuple[jax.Array, jax.Array]:
    """``(table[indices], zeros [N, d])``: the gather and the channel of the tied cross term."""
    rows = tap.primitive.bind(table, indices, **tap.params)
    # Zeros made of the probe, so that under vmap the channel is per example like the probe (a
    # constant would be shared, and its cotangent summed over the examples).
    shape = (indices.size // indices.shape[-1], table.shape[1])
    channel = jnp.broadcast_to(jnp.zeros_like(probe) * probe, shape)
    return rows, channel


def _tapped_gather_fwd(
    table: jax.Array, indices: jax.Array, probe: jax.Array, tap: GatherTap
) -> tuple[tuple[jax.Array, jax.Array], tuple[Any, ...]]:
    return tapped_gather(table, indices, probe, tap), (indices, probe, table.shape[0])


def _tapped_gather_bwd(
    tap: GatherTap, residuals: tuple[Any, ...], cotangents: tuple[jax.Array, jax.Array]
) -> tuple[None, None, jax.Array]:
    indices, probe, num_rows = residuals
    rows_ct, channel_ct = cotangents
    index, kept = tap.rows(indices, num_rows)
    width = rows_ct.shape[-1]
    cotangent = rows_ct.reshape(-1, width).astype(probe.dtype)
    cotangent = jnp.where(kept[:, None], cotangent, jnp.zeros_like(cotangent))
    count = index.shape[0]
    if count * count <= num_rows * width:  # Σ_{n,m} [k_n = k_m] ⟨E[n], E[m]⟩
        same = index[:, None] == index[None, :]
        gram = lax.dot_general(cotangent, cotangent, (((1,), (1,)), ((), ())))
        norm_sq = jnp.sum(jnp.where(same, gram, jnp.zeros_like(gram)))
    else:  # ‖Sᵀ E‖² by forming the scatter-add
        scattered = jnp.zeros((num_rows, width), cotangent.dtype).at[index].add(cotangent)
        norm_sq = jnp.sum(scattered * scattered)
    if tap.tied:  # + 2 Σ_n ⟨E[n], P[k_n]⟩, P[k_n] handed over by the product's rule
        norm_sq = norm_sq + 2 * jnp.sum(cotangent * channel_ct.astype(probe.dtype))
    return None, None, norm_sq.astype(probe.dtype)


tapped_gather.defvjp(_tapped_gather_fwd, _tapped_gather_bwd)


def tied_rows(
    cotangent: jax.Array,
    activation: jax.Array,
    dimensions: Any,
    param_free_first: bool,
    index: jax.Array,
    kept: jax.Array,
) -> jax.Array:
    """``P[k_n] = Σ_i dY[i, k_n] X[i, :]`` for a 2-D parameter ``P`` with one free axis (the
    table's rows) and one contracting axis, as ``[N, d]`` (zero for dropped rows)."""
    (contract, _), _ = dimensions
    num_free = activation.ndim - len(contract)
    row_axis = 0 if param_free_first else num_free
    free_in_y = tuple(a for a in range(cotangent.ndim) if a != row_axis)
    selected = jnp.take(cotangent, index, axis=row_axis)  # dY[i, k_n], the n axis at row_axis
    free = tuple(a for a in range(activation.ndim) if a not in contract)
    rows = lax.dot_general(
        selected, activation.astype(cotangent.dtype), ((free_in_y, free), ((), ()))
    )
    return jnp.where(kept[:, None], rows, jnp.zeros_like(rows))
