"""Differences between the JAX releases jaxmm supports, in one place.

Each entry names the JAX releases it answers and when it can be deleted. The rules themselves
(``_rules.py``, ``_mechanisms.py``) are written once, against the newest JAX, and read as
their derivation; what an older JAX needs instead is adapted here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from typing import Any

import jax


# --- shard_map's varying axes (the default functions) -------------------------------------------
#
# JAX 0.10 keeps the mesh axes a value varies along in ``aval.manual_axis_type.varying``; earlier
# releases in ``aval.vma``. Delete the fallback when jaxmm requires JAX >= 0.10.
def varying_axes(x: jax.Array) -> frozenset[str]:
    """The shard_map mesh axes along which ``x`` varies (empty outside shard_map)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    axes: frozenset[str] = (
        manual.varying if manual is not None else getattr(aval, "vma", frozenset())
    )
    return axes


# JAX 0.8.2 renamed ``lax.pvary(x, axes)`` to ``lax.pcast(x, axes, to="varying")``. Delete the
# fallback when jaxmm requires JAX >= 0.8.2.
def cast_to_varying(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    pcast = getattr(jax.lax, "pcast", None)
    if pcast is not None:
        cast: jax.Array = pcast(x, axes, to="varying")
    else:
        cast = jax.lax.pvary(x, axes)  # type: ignore[attr-defined, unused-ignore]
    return cast


# --- custom_vjp backward rules (the default functions) --------------------------------------------
#
# JAX 0.8.0 and 0.8.1 require a custom_vjp's backward rule to return the same tree of cotangents
# for every perturbation pattern it is traced with (later releases take None for any operand):
# there, zeros stand in for an unwanted cotangent, and XLA drops them unused. Delete when jaxmm
# requires JAX >= 0.8.2.
_FIXED_BWD_TREE = jax.__version_info__ < (0, 8, 2)


def unwanted_cotangent_as_zeros(cotangent: jax.Array | None, operand_type: Any) -> Any:
    """``cotangent``, or where it is ``None`` (not wanted) and JAX needs one, zeros."""
    if not _FIXED_BWD_TREE or cotangent is not None:
        return cotangent
    if not jax.numpy.issubdtype(operand_type.dtype, jax.numpy.inexact):
        return None  # integer operands never get a cotangent: None in every pattern
    sharding = None if operand_type.sharding.mesh.empty else operand_type.sharding
    return jax.lax.full(operand_type.shape, 0, operand_type.dtype, sharding=sharding)


# --- custom_vjp residuals of an operand not saved (the narrowed products) ----------------------
#
# Whether an operand is saved must be told by the residual *arrays*, not by static pytree data:
# JAX (seen on 0.10.2) caches a custom_vjp's forward rule under jit per perturbation
# pattern but keeps only the most recent residual tree structure, which then unflattens one
# pattern's residuals with another's structure. So an operand nobody needs is stood in for by
# empty arrays in the tree structure ``save_operand`` gives it, the first of rank one more than
# the operand's (which tells it apart). Delete (and save ``None``) when JAX keys the residual tree
# by perturbation pattern.
def not_saved_marker(operand: jax.Array, scaled: bool) -> Any:
    """Empty arrays in the tree structure of ``save_operand`` for ``operand``: one, or a pair
    where it would be saved ``scaled`` (narrowed with a scale)."""
    marker = jax.numpy.zeros((0,) * (operand.ndim + 1), bool)
    return (marker, jax.numpy.zeros((0,), bool)) if scaled else marker


def is_saved(saved: Any, operand_type: Any) -> bool:
    """Whether ``saved`` is a saved operand rather than ``not_saved_marker``."""
    return bool(jax.tree.leaves(saved)[0].ndim == operand_type.ndim)


# --- The hijax primitive class of jaxmm.experimental --------------------------------------------
#
# JAX 0.10.2 to 0.11.1 call the class ``jax.experimental.hijax.VJPHiPrimitive``; JAX 0.11.2
# renamed it ``HiPrim``. Where neither exists (JAX 0.8.0, for one) jaxmm.experimental is
# unavailable: ``import jaxmm.experimental`` raises ``HIJAX_MISSING``. Delete the fallback to
# ``VJPHiPrimitive`` when jaxmm.experimental requires JAX >= 0.11.2.
def _hijax_base() -> Any:
    try:
        hijax = importlib.import_module("jax.experimental.hijax")
    except ImportError:  # pragma: no cover - depends on the installed JAX
        return None
    return getattr(hijax, "HiPrim", None) or getattr(hijax, "VJPHiPrimitive", None)


HIJAX_BASE: Any = _hijax_base()

HIJAX_MISSING = (
    "jaxmm.experimental needs JAX's primitive class jax.experimental.hijax.HiPrim (JAX 0.11.2 or "
    "newer) or VJPHiPrimitive (JAX 0.10.2 to 0.11.1), which JAX {version} does not have: install "
    "JAX 0.10.2 or newer (jaxmm's default functions, jaxmm.matmul / dot_general / einsum, work "
    "without it)."
)

# The checkpointing rule (``remat``) a hijax primitive gives ``jax.checkpoint`` under JAX's
# ``jax_remat3`` implementation changed its signature twice:
#   JAX 0.10.x:   remat(policy, *args) -> (out, rematerialize(*args))
#   JAX 0.11.x:   remat(trace, *args)  -> (out, rematerialize(*args)), the policy is trace.policy
#   JAX >= 0.12:  remat(trace, *args)  -> (out, residuals, rematerialize(residuals, *args))
# jaxmm writes the rule once, in the newest form but taking the policy (``remat_rule`` below);
# ``remat`` adapts it. Delete the two older branches when jaxmm.experimental requires JAX >= 0.12.
_REMAT_TAKES_POLICY = jax.__version_info__ < (0, 11)
_REMAT_RETURNS_RESIDUALS = jax.__version_info__ >= (0, 12)

RematRule = tuple[Any, Any, Callable[..., Any]]

if HIJAX_BASE is not None:

    class HiPrimitiveBase(HIJAX_BASE):  # type: ignore[misc]  # JAX's class, typed per release
        """JAX's hijax primitive class (``HiPrim`` or ``VJPHiPrimitive``), whose checkpointing
        rule a subclass writes once as ``remat_rule(policy, *args)``, returning
        ``(out, residuals, rematerialize)`` with ``rematerialize(residuals, *args) == out``."""

        def remat_rule(self, policy: Any, *args: Any) -> RematRule:
            del policy  # recompute everything, as JAX's own default
            return self(*args), (), lambda _, *args: self(*args)

        def remat(self, policy_or_trace: Any, *args: Any) -> tuple[Any, ...]:
            policy = policy_or_trace if _REMAT_TAKES_POLICY else policy_or_trace.policy
            out, residuals, rematerialize = self.remat_rule(policy, *args)
            if _REMAT_RETURNS_RESIDUALS:
                return out, residuals, rematerialize
            return out, partial(rematerialize, residuals)


# A product that jax.checkpoint saves under ``jax_remat3``: JAX >= 0.12 rounds the saved value to
# its dtype's precision (``lax.reduce_precision``), so that the backward pass reads exactly what a
# recomputation would give and not a value held at XLA's excess precision (jax-ml/jax#22244);
# JAX 0.10 and 0.11 save the value as computed. jaxmm's checkpointing rule does what the installed
# JAX does for its own ``dot_general``, so that both programs are the same. Delete the version
# test when jaxmm.experimental requires JAX >= 0.12.
_PINS_SAVED_PRECISION = jax.__version_info__ >= (0, 12)


def pin_saved_precision(saved: jax.Array) -> jax.Array:
    """``saved`` as JAX's ``jax_remat3`` keeps a saved product on the installed release."""
    if not _PINS_SAVED_PRECISION or not jax.numpy.issubdtype(saved.dtype, jax.numpy.inexact):
        return saved
    finfo = jax.numpy.finfo(saved.dtype)
    return jax.lax.reduce_precision(saved, exponent_bits=finfo.nexp, mantissa_bits=finfo.nmant)


# --- scan's equation parameters (jaxmm.clipped_grad reads traced programs) ----------------------
#
# JAX 0.12.1 replaced the ``num_consts`` / ``num_carry`` parameters of a ``scan`` equation by
# ``ft_in``, a tree of the inputs with one subtree per kind: (constants, carry, scanned). Delete
# the fallback when jaxmm requires JAX >= 0.12.1.
def scan_counts(params: dict[str, Any], num_inputs: int) -> tuple[int, int]:
    """How many of a ``scan`` equation's ``num_inputs`` inputs are constants, and how many carry."""
    if "num_consts" in params:
        return int(params["num_consts"]), int(params["num_carry"])
    # A tree of the inputs, unpacked into its three kinds.
    consts, carry, _ = params["ft_in"].update(list(range(num_inputs))).unpack()
    return len(list(consts)), len(list(carry))
