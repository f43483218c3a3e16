# JAX's primitive class declares its rules with *args; a subclass names its operands.
# pyright: reportIncompatibleMethodOverride=false
"""One JAX primitive for ``dot_general`` that carries every derivative rule written by hand.

``jax.custom_vjp`` (``_dot_general.py``) gives a function one hand-written rule, its VJP, and JAX
refuses forward mode for it. A JAX primitive (``jax.experimental.hijax.HiPrim``, called
``VJPHiPrimitive`` before JAX 0.11.2; ``_compat.py``) carries a rule for each transformation:
the VJP (``vjp_fwd`` / ``vjp_bwd_retval``), the JVP (``jvp``), the linearization (``lin`` /
``linearized``, for ``jax.linearize``), the transpose of its linear uses, a batching rule, a
checkpointing rule and an ``expand`` into ``lax.dot_general`` for lowering. This module is that
primitive; :mod:`jaxmm.experimental` puts the shared layout code in front of it.

The forward rule, derived
-------------------------
With one multi-index per kind of axis, as in ``_dot_general.py``,

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

which are exactly the backward rules derived from the chain rule in ``_dot_general.py`` (the same
functions, ``lhs_cotangent`` and ``rhs_cotangent``, compute them here). The seed's mnemonic seen
from the other side: in ``dY = dL·R`` replace each tangent by its cotangent and move ``R`` to the
other side transposed, ``L̄ = dY·Rᵀ``. So the transpose rule of the linear tangent products is the
backward rule, ``vjp_bwd_retval`` is the transposed JVP evaluated at the saved operands, and no
rule is obtained from JAX's autodiff.

Batching (``vmap``) needs no new product: a batch axis of both operands becomes one more pair of
``dot_general`` batch axes, and a batch axis of one operand is one more free axis of it, which the
product keeps, in a position known from the dimension numbers.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.ad_checkpoint import Saveable
from jax.experimental.hijax import Zero

from ._compat import HiPrimitiveBase, RematRule, pin_saved_precision
from ._residuals import ResidualFormat, load_operand, save_operand
from ._rules import batched_dimension_numbers, batched_sharding, lhs_cotangent, rhs_cotangent
from ._typing import DotDimensionNumbers


def primitive_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: DotDimensionNumbers,
    precision: Any,
    preferred_element_type: Any,
    out_sharding: Any,
    residual: ResidualFormat | None,
) -> jax.Array:
    """``lax.dot_general`` of checked, canonical arguments as one :class:`DotGeneral` primitive:
    the ``product`` that ``apply_dot_general`` calls for :mod:`jaxmm.experimental`."""
    primitive = DotGeneral(
        jax.typeof(lhs),
        jax.typeof(rhs),
        dimension_numbers,
        precision,
        preferred_element_type,
        out_sharding,
        residual,
    )
    out: jax.Array = primitive(lhs, rhs)
    return out


class DotGeneral(HiPrimitiveBase):
    """``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]`` with hand-written rules for every transformation.

    Its parameters (static, hashable) are those of ``lax.dot_general`` plus the residual format;
    the operand types are parameters too, so that two products of different shapes are never
    taken for the same primitive.
    """

    def __init__(
        self,
        lhs_type: Any,
        rhs_type: Any,
        dimension_numbers: DotDimensionNumbers,
        precision: Any,
        preferred_element_type: Any,
        out_sharding: Any,
        residual: ResidualFormat | None,
    ):
        self.in_avals = (lhs_type, rhs_type)
        # The result type of lax.dot_general itself (shape, dtype, weak type, and the sharding
        # and shard_map varying axes of the operands), so that the primitive is typed as the
        # product it stands for.
        self.out_aval = jax.typeof(
            jax.eval_shape(
                partial(
                    lax.dot_general,
                    dimension_numbers=dimension_numbers,
                    precision=precision,
                    preferred_element_type=preferred_element_type,
                    out_sharding=out_sharding,
                ),
                lhs_type,
                rhs_type,
            )
        )
        self.params = dict(
            lhs_type=lhs_type,
            rhs_type=rhs_type,
            dimension_numbers=dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
            residual=residual,
        )
        super().__init__()

    # The attributes below are set from ``params`` by JAX's primitive class.
    lhs_type: Any
    rhs_type: Any
    dimension_numbers: DotDimensionNumbers
    precision: Any
    preferred_element_type: Any
    out_sharding: Any
    residual: ResidualFormat | None

    def expand(
        self, lhs: jax.Array, rhs: jax.Array
    ) -> jax.Array:  # how the primitive lowers: the product itself
        return lax.dot_general(
            lhs,
            rhs,
            self.dimension_numbers,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            out_sharding=self.out_sharding,
        )

    def _product(
        self,
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: DotDimensionNumbers | None = None,
        out_sharding: Any = None,
    ) -> jax.Array:
        """The same product (this primitive again) of other operands: tangents, batched."""
        return primitive_dot_general(
            lhs,
            rhs,
            dimension_numbers or self.dimension_numbers,
            self.precision,
            self.preferred_element_type,
            out_sharding or self.out_sharding,
            self.residual,
        )

    def _cotangents(
        self, cotangent: jax.Array, lhs: jax.Array | None, rhs: jax.Array | None
    ) -> tuple[jax.Array | None, jax.Array | None]:
        """``(L̄, R̄)``; ``None`` for an operand whose cotangent is not wanted (its partner was not
        given). Precision and preferred type reach the backward products too."""
        options = (self.dimension_numbers, self.precision, self.preferred_element_type)
        lhs_ct = rhs_ct = None
        if rhs is not None:
            lhs_ct = lhs_cotangent(cotangent, self.lhs_type, rhs, *options)
        if lhs is not None:
            rhs_ct = rhs_cotangent(cotangent, lhs, self.rhs_type, *options)
        return lhs_ct, rhs_ct

    def _save(self, operand: jax.Array, side: str) -> Any:
        """``save_operand`` of the ``side`` operand: a per-channel scale runs along its batch and
        contracting axes (_residuals)."""
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = self.dimension_numbers
        if side == "lhs":
            return save_operand(operand, self.residual, (*lhs_batch, *lhs_contract), side)
        return save_operand(operand, self.residual, (*rhs_batch, *rhs_contract), side)

    # Reverse mode: L̄ needs R and R̄ needs L, so each operand is saved only if the other one's
    # cotangent is wanted (nzs_in says which operands are differentiated). Integer and boolean
    # operands have no cotangent.
    def vjp_fwd(
        self, nzs_in: tuple[bool, bool], lhs: jax.Array, rhs: jax.Array
    ) -> tuple[jax.Array, tuple[Any, Any]]:
        lhs_wanted, rhs_wanted = (nz and _inexact(x) for nz, x in zip(nzs_in, (lhs, rhs)))
        saved_lhs = self._save(lhs, "lhs") if rhs_wanted else None
        saved_rhs = self._save(rhs, "rhs") if lhs_wanted else None
        return self(lhs, rhs), (saved_lhs, saved_rhs)

    def vjp_bwd_retval(
        self, residuals: tuple[Any, Any], cotangent: Any
    ) -> tuple[jax.Array | None, jax.Array | None]:
        if isinstance(cotangent, Zero):  # Y does not reach the loss: nothing to propagate
            return None, None
        saved_lhs, saved_rhs = residuals
        lhs = None if saved_lhs is None else load_operand(saved_lhs, self.lhs_type)
        rhs = None if saved_rhs is None else load_operand(saved_rhs, self.rhs_type)
        return self._cotangents(cotangent, lhs, rhs)

    # Forward mode: dY = dL·R + L·dR.
    def jvp(self, primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]) -> Any:
        lhs, rhs = primals
        # The operands the tangent products read are what the backward pass reads, saved as
        # residual_dtype says (so that a gradient through this rule, which JAX takes inside
        # jax.checkpoint, equals the one through vjp_fwd) and named (by save_operand): the
        # policy save_only_these_names("jaxmm_lhs", "jaxmm_rhs") keeps them, and recomputes
        # nothing that feeds a product.
        lhs_read = load_operand(self._save(lhs, "lhs"), self.lhs_type)
        rhs_read = load_operand(self._save(rhs, "rhs"), self.rhs_type)
        # jax.checkpoint asks its policy about each equation of this rule's output. The primal
        # is the plain product (what the primitive expands to), so that dots_saveable sees a
        # dot_general and saves it exactly when it saves jnp's. (Without residual_dtype it reads
        # the named operands, which are the operands themselves: nothing is saved twice.) JAX's
        # default jax.checkpoint never asks the primitive's own `remat` rule, and sees the
        # primitive only as `call_hi_primitive` (tests/test_experimental_limits.py). The cost:
        # differentiating this primal output again (jvp of jvp) uses JAX's dot_general rules,
        # which give the same numbers; tangents are this primitive, with jaxmm's rules.
        if self.residual is None:
            lhs, rhs = lhs_read, rhs_read
        return self.expand(lhs, rhs), self._tangent(lhs_read, rhs_read, *tangents)

    def _tangent(self, lhs: Any, rhs: Any, lhs_dot: Any, rhs_dot: Any) -> Any:
        terms = []
        if not isinstance(lhs_dot, Zero):
            terms.append(self._product(lhs_dot, rhs))
        if not isinstance(rhs_dot, Zero):
            terms.append(self._product(lhs, rhs_dot))
        if not terms:
            return Zero(self.out_aval.to_tangent_aval())
        return terms[0] if len(terms) == 1 else lax.add(*terms)

    # jax.linearize: the forward rule split in two. The residuals are the operands the tangent
    # products need, R for dL·R and L for L·dR, saved as for the backward pass.
    def lin(
        self, nzs_in: tuple[bool, bool], lhs: jax.Array, rhs: jax.Array
    ) -> tuple[jax.Array, tuple[Any, Any]]:
        lhs_nz, rhs_nz = nzs_in
        saved_lhs = self._save(lhs, "lhs") if rhs_nz else None
        saved_rhs = self._save(rhs, "rhs") if lhs_nz else None
        return self(lhs, rhs), (saved_lhs, saved_rhs)

    def linearized(self, residuals: tuple[Any, Any], lhs_dot: Any, rhs_dot: Any) -> Any:
        saved_lhs, saved_rhs = residuals
        lhs = None if saved_lhs is None else load_operand(saved_lhs, self.lhs_type)
        rhs = None if saved_rhs is None else load_operand(saved_rhs, self.rhs_type)
        return self._tangent(lhs, rhs, lhs_dot, rhs_dot)

    # The transpose of a use that is linear in one operand (the tangent products above, when
    # jax.grad differentiates through jax.checkpoint, lax.scan or a linearized function): the
    # backward rule, derived in the module docstring. The linear operand arrives as JAX's
    # cotangent accumulator, the other as a value.
    def transpose(self, cotangent: Any, lhs: Any, rhs: Any) -> None:
        lhs_linear, rhs_linear = (_is_accumulator(x) for x in (lhs, rhs))
        if lhs_linear == rhs_linear:
            raise NotImplementedError(
                "jaxmm's product is linear in one operand at a time; transposing it with respect "
                f"to {'both' if lhs_linear else 'neither'} operands is not defined."
            )
        if isinstance(cotangent, Zero):
            return
        lhs_ct, rhs_ct = self._cotangents(
            cotangent, None if lhs_linear else lhs, None if rhs_linear else rhs
        )
        (lhs if lhs_linear else rhs).accum(lhs_ct if lhs_linear else rhs_ct)

    def batch(
        self, axis_data: Any, args: tuple[jax.Array, jax.Array], dims: tuple[int | None, int | None]
    ) -> tuple[jax.Array, int | None]:
        lhs, rhs = args
        lhs_dim, rhs_dim = dims
        if lhs_dim is None and rhs_dim is None:  # vmap of jvp calls this for unbatched values
            return self(lhs, rhs), None
        # A mapped axis of one operand is a free axis of it, of both a batch pair (_rules).
        dimension_numbers, out_dim = batched_dimension_numbers(
            self.dimension_numbers, lhs.ndim, rhs.ndim, lhs_dim, rhs_dim
        )
        out = self._product(
            lhs,
            rhs,
            dimension_numbers,
            batched_sharding(self.out_sharding, out_dim, axis_data),
        )
        return out, out_dim

    def remat_rule(self, policy: Any, lhs: jax.Array, rhs: jax.Array) -> RematRule:
        """Under ``jax.checkpoint`` (JAX's ``jax_remat3`` implementation): ask the policy about
        the product as the ``dot_general`` it is, so that ``dots_saveable`` saves it and
        ``nothing_saveable`` recomputes it, as for ``jnp``. A saved product keeps its value and
        is still differentiated through this primitive. (JAX's default implementation asks the
        policy about the equations of the JVP, where the primal product is a ``dot_general``;
        see ``jvp``.) An ``Offloadable`` decision recomputes the product."""
        out = self(lhs, rhs)
        lax_params = dict(
            dimension_numbers=self.dimension_numbers,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            out_sharding=self.out_sharding,
        )
        decision = policy is not None and policy(
            lax.dot_general_p, self.lhs_type, self.rhs_type, **lax_params
        )
        if decision is True or decision is Saveable:
            saved = pin_saved_precision(out)
            return saved, saved, lambda saved, lhs, rhs: _saved_primal(saved, self(lhs, rhs))
        return out, (), lambda _, lhs, rhs: self(lhs, rhs)  # recompute


def _inexact(x: jax.Array) -> bool:
    return jax.numpy.issubdtype(x.dtype, np.inexact)


def _is_accumulator(x: Any) -> bool:
    """A transpose rule receives a linear operand as JAX's gradient accumulator (it has
    ``accum``), a non-linear one as an array."""
    return not isinstance(x, jax.Array) and hasattr(x, "accum")


@jax.custom_jvp
def _saved_primal(saved: jax.Array, recomputed: jax.Array) -> jax.Array:
    """``saved``, with the derivative of ``recomputed``: a checkpoint that keeps a product's
    value but differentiates through the primitive (so its rules still apply)."""
    return saved


@_saved_primal.defjvp
def _saved_primal_jvp(primals: Any, tangents: Any) -> tuple[Any, Any]:
    return primals[0], tangents[1]
