"""One JAX primitive for ``dot_general`` that carries every derivative rule written by hand.

``jax.custom_vjp`` (``_custom_vjp.py``) gives a function one hand-written rule, its VJP, and JAX
refuses forward mode for it. A JAX primitive (``jax.experimental.hijax.HiPrim``, called
``VJPHiPrimitive`` before JAX 0.11.2; ``_compat.py``) carries a rule for each transformation:
the VJP (``vjp_fwd`` / ``vjp_bwd_retval``), the JVP (``jvp``), the linearization (``lin`` /
``linearized``, for ``jax.linearize``), the transpose of its linear uses, a batching rule, a
checkpointing rule and an ``expand`` into ``lax.dot_general`` for lowering. This module is that
primitive; :mod:`jaxmm.experimental` puts the shared layout code in front of it.

The rules it carries are derived in :mod:`jaxmm._rules` (the backward rule from the chain rule,
the forward rule from the product rule, and the backward rule again as the forward rule's
transpose); this class gives each to JAX under the name JAX asks for it.

Batching (``vmap``) needs no new product: a batch axis of both operands becomes one more pair of
``dot_general`` batch axes, and a batch axis of one operand is one more free axis of it, which the
product keeps, in a position known from the dimension numbers.
"""

# (pyright) JAX's primitive class declares its rules with *args; a subclass names its operands.
# pyright: reportIncompatibleMethodOverride=false

from __future__ import annotations

from typing import Any

import jax
from jax import lax
from jax.ad_checkpoint import Saveable
from jax.experimental.hijax import Zero

from . import _mechanisms, _rules
from ._compat import HiPrimitiveBase, RematRule, pin_saved_precision
from ._options import Options
from ._residuals import load_operand, save_operand
from ._typing import Dimensions


def hijax_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimensions: Dimensions, options: Options
) -> jax.Array:
    """``lax.dot_general`` of checked, canonical arguments as one :class:`DotGeneral` primitive:
    the product that ``apply_dot_general`` calls for :mod:`jaxmm.experimental`."""
    primitive = DotGeneral(jax.typeof(lhs), jax.typeof(rhs), dimensions, options)
    out: jax.Array = primitive(lhs, rhs)
    return out


class DotGeneral(HiPrimitiveBase):
    """``Y[b, i, j] = Σ_c L[b, i, c] R[b, c, j]`` with hand-written rules for every transformation.

    Its parameters (static, hashable) are the dimension numbers and the options; the operand
    types are parameters too, so that two products of different shapes are never taken for the
    same primitive.
    """

    def __init__(self, lhs_type: Any, rhs_type: Any, dimensions: Dimensions, options: Options):
        self.in_avals = (lhs_type, rhs_type)
        self.out_aval = _mechanisms.result_type(lhs_type, rhs_type, dimensions, options)
        self.params = dict(
            lhs_type=lhs_type, rhs_type=rhs_type, dimensions=dimensions, options=options
        )
        super().__init__()

    # The attributes below are set from ``params`` by JAX's primitive class.
    lhs_type: Any
    rhs_type: Any
    dimensions: Dimensions
    options: Options

    def expand(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        """How the primitive lowers: the product itself."""
        return _rules.forward(lhs, rhs, self.dimensions, self.options)

    def _product(self, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        """The same product (this primitive again) of other operands: the tangent products."""
        return hijax_dot_general(lhs, rhs, self.dimensions, self.options)

    def _save(self, operand: jax.Array, side: str) -> Any:
        return save_operand(operand, self.options.residual, self.dimensions, side)

    def _load(self, saved: Any, side: str) -> jax.Array | None:
        return None if saved is None else load_operand(saved, getattr(self, f"{side}_type"))

    # Reverse mode, and jax.linearize (the forward rule split in two): L̄ and L·dR need R, R̄ and
    # dL·R need L, so each operand is saved only if the other one is differentiated (``nzs_in``)
    # and, for reverse mode, has a cotangent (integer and boolean operands have none).
    def _saved(
        self, wanted: tuple[bool, bool], lhs: jax.Array, rhs: jax.Array
    ) -> tuple[jax.Array, tuple[Any, Any]]:
        lhs_wanted, rhs_wanted = wanted
        saved_lhs = self._save(lhs, "lhs") if rhs_wanted else None
        saved_rhs = self._save(rhs, "rhs") if lhs_wanted else None
        return self(lhs, rhs), (saved_lhs, saved_rhs)

    def vjp_fwd(
        self, nzs_in: tuple[bool, bool], lhs: jax.Array, rhs: jax.Array
    ) -> tuple[jax.Array, tuple[Any, Any]]:
        lhs_wanted, rhs_wanted = nzs_in
        wanted = (
            lhs_wanted and _rules.has_cotangent(lhs),
            rhs_wanted and _rules.has_cotangent(rhs),
        )
        return self._saved(wanted, lhs, rhs)

    def vjp_bwd_retval(
        self, residuals: tuple[Any, Any], cotangent: Any
    ) -> tuple[jax.Array | None, jax.Array | None]:
        if isinstance(cotangent, Zero):  # Y does not reach the loss: nothing to propagate
            return None, None
        lhs, rhs = self._load(residuals[0], "lhs"), self._load(residuals[1], "rhs")
        types = (self.lhs_type, self.rhs_type)
        return _mechanisms.cotangents(cotangent, lhs, rhs, types, self.dimensions, self.options)

    def lin(
        self, nzs_in: tuple[bool, bool], lhs: jax.Array, rhs: jax.Array
    ) -> tuple[jax.Array, tuple[Any, Any]]:
        return self._saved(nzs_in, lhs, rhs)

    def linearized(self, residuals: tuple[Any, Any], lhs_dot: Any, rhs_dot: Any) -> Any:
        saved_lhs, saved_rhs = residuals
        lhs, rhs = self._load(saved_lhs, "lhs"), self._load(saved_rhs, "rhs")
        return self._tangent(lhs, rhs, lhs_dot, rhs_dot)

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
        # the operands themselves: nothing is saved twice.) JAX's default jax.checkpoint never
        # asks the primitive's own `remat` rule, and sees the primitive only as
        # `call_hi_primitive` (tests/test_experimental_limits.py). The cost: differentiating
        # this primal output again (jvp of jvp) uses JAX's dot_general rules, which give the
        # same numbers; tangents are this primitive, with jaxmm's rules.
        if self.options.residual is None:
            lhs, rhs = lhs_read, rhs_read
        return self.expand(lhs, rhs), self._tangent(lhs_read, rhs_read, *tangents)

    def _tangent(self, lhs: Any, rhs: Any, lhs_dot: Any, rhs_dot: Any) -> Any:
        lhs_dot, rhs_dot = (None if isinstance(t, Zero) else t for t in (lhs_dot, rhs_dot))
        out_dot = _rules.tangent(lhs, rhs, lhs_dot, rhs_dot, self._product)
        return Zero(self.out_aval.to_tangent_aval()) if out_dot is None else out_dot

    # The transpose of a use that is linear in one operand (the tangent products above, when
    # jax.grad differentiates through jax.checkpoint, lax.scan or a linearized function): the
    # backward rule (_rules). The linear operand arrives as JAX's cotangent accumulator, the
    # other as a value.
    def transpose(self, cotangent: Any, lhs: Any, rhs: Any) -> None:
        linear = (_is_accumulator(lhs), _is_accumulator(rhs))
        if isinstance(cotangent, Zero):
            return
        types = (self.lhs_type, self.rhs_type)
        ct = _mechanisms.transpose(
            cotangent, lhs, rhs, linear, types, self.dimensions, self.options
        )
        (lhs if linear[0] else rhs).accum(ct)

    def batch(
        self, axis_data: Any, args: tuple[jax.Array, jax.Array], dims: tuple[int | None, int | None]
    ) -> tuple[jax.Array, int | None]:
        lhs, rhs = args
        return _mechanisms.batch(
            hijax_dot_general, lhs, rhs, dims, self.dimensions, self.options, axis_data
        )

    def remat_rule(self, policy: Any, lhs: jax.Array, rhs: jax.Array) -> RematRule:
        """Under ``jax.checkpoint`` (JAX's ``jax_remat3`` implementation): ask the policy about
        the product as the ``dot_general`` it is, so that ``dots_saveable`` saves it and
        ``nothing_saveable`` recomputes it, as for ``jnp``. A saved product keeps its value and
        is still differentiated through this primitive. (JAX's default implementation asks the
        policy about the equations of the JVP, where the primal product is a ``dot_general``;
        see ``jvp``.) An ``Offloadable`` decision recomputes the product."""
        out = self(lhs, rhs)
        lax_params = dict(dimension_numbers=self.dimensions, **self.options.lax_params())
        decision = policy is not None and policy(
            lax.dot_general_p, self.lhs_type, self.rhs_type, **lax_params
        )
        if decision is True or decision is Saveable:
            saved = pin_saved_precision(out)
            return saved, saved, lambda saved, lhs, rhs: _saved_primal(saved, self(lhs, rhs))
        return out, (), lambda _, lhs, rhs: self(lhs, rhs)  # recompute


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
