"""``clipped_grad``: the sum of per-example clipped gradients, without per-example gradients.

A drop-in for ``jax_privacy.clipping.clipped_grad`` (jax-privacy 2.0): same arguments, results,
edge cases and errors, computed in two passes instead of ``vmap`` of ``grad``.

1. **Norms.** The per-example loss ``ℓ_b`` is traced once (for one example, as ``vmap`` would call
   ``fun``) and evaluated again for the whole batch with each product that reads a parameter
   followed by an identity whose backward rule returns the example's squared norm of that
   parameter's gradient, by the Gram identity ``‖Xᵀ dY‖² = ⟨X Xᵀ, dY dYᵀ⟩`` or by forming that
   one layer's gradient, whichever is cheaper (:mod:`jaxmm._clipping_rules`); embedding gathers,
   and an embedding tied to the output layer, likewise (:mod:`jaxmm._clipping_gather`). Each
   such identity takes one more input, a zero ``s_b`` per example, whose cotangent therefore sums
   over all of them to the example's squared norm over those parameters. Every other parameter
   (biases, norm scales, weights used twice or read inside ``jax.checkpoint``) is fed in as one
   copy per example, so its exact per-example gradient comes out of the same pass
   (:mod:`jaxmm._clipping_norms` says which is which).
2. **Clipped sum.** With ``c_b = min(1, C / ‖∇ℓ_b‖)`` known (held constant), one ordinary backward
   pass of ``Σ_b c_b ℓ_b`` gives ``Σ_b c_b ∇ℓ_b``: the memory of a non-private step.

Why the program is read rather than jaxmm's products switched: the same code then covers jaxmm's
products and plain ``jnp`` / ``lax`` / Flax ones, needs no hook in the product modules, and which
operand is a parameter follows from the traced program's data flow, exactly (object identity at
trace time does not survive ``jit`` staging). Derivations and measurements: docs/clipping.md.

Examples whose gradient is not finite (``nan`` or ``inf`` anywhere) are handled exactly as
jax-privacy does (``nan_safe``) by a branch taken only then, which forms each example's gradient
in turn (the memory of one example's gradient).
"""

from __future__ import annotations

import collections
import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._clipping_passes import clipped_sum

# Named "Aux" as jax-privacy names its own, so that both print alike.
AuxiliaryOutput = collections.namedtuple("Aux", ["values", "grad_norms", "aux"])  # type: ignore[name-match]


@dataclasses.dataclass(frozen=True)
class BoundedSensitivityCallable:
    """A function with a known L2 sensitivity, as jax-privacy's class of the same name.

    Attributes:
      fun: the function.
      l2_norm_bound: the bound on the L2 norm of one example's contribution to its first output.
      has_aux: whether the function returns ``(value, aux)``.
    """

    fun: Callable[..., Any]
    l2_norm_bound: float
    has_aux: bool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fun(*args, **kwargs)

    def sensitivity(self, neighboring_relation: Any = None) -> float:
        """The L2 sensitivity under ``neighboring_relation`` (a ``dp_accounting``
        ``NeighboringRelation``; default ``REPLACE_SPECIAL``): twice the bound for
        ``REPLACE_ONE``, the bound for ``ADD_OR_REMOVE_ONE`` and ``REPLACE_SPECIAL``."""
        name = "REPLACE_SPECIAL" if neighboring_relation is None else neighboring_relation.name
        if name in ("ADD_OR_REMOVE_ONE", "REPLACE_SPECIAL"):
            return self.l2_norm_bound
        if name == "REPLACE_ONE":
            return 2 * self.l2_norm_bound
        raise ValueError(f"Unsupported {neighboring_relation=}")


def _as_tuple(argnums: int | Sequence[int]) -> tuple[int, ...]:
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def _check_static(
    argnums: tuple[int, ...], batch_argnums: tuple[int, ...], normalize_by: float, clip: Any
) -> None:
    """jax-privacy's checks, with its messages and types, before any work."""
    if normalize_by <= 0.0:
        raise ValueError(f"normalize_by must be > 0, got {normalize_by}.")
    if not batch_argnums:
        raise ValueError("Batch Argnums must not be empty.")
    if min(argnums + batch_argnums) < 0:
        raise ValueError(f"argnums={argnums} and batch_argnums={batch_argnums} must be >= 0.")
    shared = set(argnums) & set(batch_argnums)
    if shared:
        raise ValueError(
            "Cannot compute clipped gradients for argnums that have a batch axis. "
            f"{argnums=} and {batch_argnums=} with overlap {list(shared)}."
        )
    if isinstance(clip, numbers.Real) and clip < 0:
        raise ValueError(f"clip_norm must be non-negative, got clip_norm={clip}.")


class MissingArgumentError(ValueError, IndexError):
    """Too few arguments for ``argnums`` / ``batch_argnums``: jax-privacy raises ``ValueError``
    (``IndexError`` when it adds the group axis first, ``keep_batch_dim=True``); this is both."""


def _check_call(argnums: tuple[int, ...], batch_argnums: tuple[int, ...], args: Any) -> int:
    """The batch size, after jax-privacy's checks of the call's arguments."""
    wanted = max(argnums + batch_argnums)
    if len(args) <= wanted:
        raise MissingArgumentError(f"Unable to find argnum={wanted}, was given {len(args)} args.")
    sizes = {np.shape(x)[0] for i in batch_argnums for x in jax.tree.leaves(args[i])}
    if len(sizes) > 1:
        raise ValueError(
            f"Batch axis must have the same size for all inputs in batch_argnums, got {sizes}."
        )
    for i in argnums:
        for leaf in jax.tree.leaves(args[i]):
            if not jnp.issubdtype(jnp.result_type(leaf), np.inexact):
                raise TypeError(
                    "grad requires real- or complex-valued inputs (input dtype that is a "
                    f"sub-dtype of np.inexact), but got {jnp.result_type(leaf).name}."
                )
    return int(sizes.pop())


def _squeeze_axis_1(x: Any) -> Any:
    """jax-privacy's squeeze of the size-1 group axis from per-example outputs."""
    if hasattr(x, "shape") and len(x.shape) >= 2 and x.shape[1] == 1:
        return jnp.squeeze(x, axis=1)
    return x


def clipped_grad(
    fun: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    *,
    l2_clip_norm: Any,
    rescale_to_unit_norm: bool = False,
    normalize_by: float = 1.0,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    return_values: bool = False,
    return_grad_norms: bool = False,
    pre_clipping_transform: Callable[[Any], Any] | None = None,
    microbatch_size: int | None = None,
    nan_safe: bool = True,
    dtype: Any = None,
    prng_argnum: int | None = None,
    spmd_axis_name: str | None = None,
) -> BoundedSensitivityCallable:
    """The sum over examples of each example's gradient clipped to L2 norm ``l2_clip_norm``,
    without forming the per-example gradients of parameters read by matrix products.

    A drop-in for ``jax_privacy.clipping.clipped_grad`` (jax-privacy 2.0): same arguments,
    results, sensitivity, edge cases (``l2_clip_norm`` 0 or ``inf``, with and without
    ``rescale_to_unit_norm``, zero norms, ``nan_safe``) and errors. For a batch ``x_1..x_B``
    (the leading axis of the ``batch_argnums`` arguments) and ``ℓ_b = fun(params, x_b)``::

      g_b = ∇_params ℓ_b,   c_b = min(1, C / ‖g_b‖)  (÷ C when rescale_to_unit_norm),
      result = Σ_b c_b g_b / normalize_by.

    ``‖g_b‖`` is read off one backward pass (Gram matrices of each product's inputs and output
    cotangents, see :mod:`jaxmm._clipping`); ``Σ_b c_b g_b`` is one more ordinary backward pass
    of ``Σ_b c_b ℓ_b``. Products are recognised in the traced program: ``jaxmm``'s and ``jnp`` /
    ``lax`` / Flax ones alike, and weights stacked for ``lax.scan``; other parameters get their
    exact per-example gradient (docs/clipping.md says which).

    Args:
      fun: ``fun(*args) -> loss`` (a scalar), or ``(loss, aux)`` with ``has_aux``.
      argnums: the argument(s) to differentiate, without a batch axis.
      has_aux: whether ``fun`` returns ``(loss, aux)``; ``aux`` is returned per example.
      l2_clip_norm: ``C >= 0`` (Python number or scalar array; ``inf`` allowed).
      rescale_to_unit_norm: divide each clipped gradient by ``C`` (sensitivity 1).
      normalize_by: ``> 0``; the sum is divided by it.
      batch_argnums: the argument(s) whose leaves have the batch axis ``B`` first.
      keep_batch_dim: ``fun`` sees each example with a leading axis of size 1 (``True``) or
        without it (``False``: each "example" may then be a group, clipped as one).
      return_values: also return the per-example losses, shape ``(B,)``.
      return_grad_norms: also return ``‖g_b‖``, shape ``(B,)``.
      pre_clipping_transform: not supported (a transform of each gradient needs the gradient);
        ``None`` or the identity.
      microbatch_size: accepted for compatibility; the result does not depend on it and the
        memory is already that of one non-private step.
      nan_safe: non-finite gradient entries count as 0, as in jax-privacy.
      dtype: dtype of the returned gradient (default: that of ``params``).
      prng_argnum: an argument holding a PRNG key, split into one key per example.
      spmd_axis_name: as in ``jax.vmap``.

    Returns:
      A :class:`BoundedSensitivityCallable` taking ``fun``'s arguments (and the keyword
      ``is_padding_example``, a ``(B,)`` boolean array of examples that contribute nothing). It
      returns the gradient (a tree like ``args[argnums]``), or ``(gradient, AuxiliaryOutput(
      values, grad_norms, aux))`` when ``has_aux``, ``return_values`` or ``return_grad_norms``.

    Raises:
      ValueError: ``normalize_by <= 0``, a negative ``l2_clip_norm``, empty, negative or
        overlapping ``argnums`` / ``batch_argnums`` (here); too few arguments or batch arguments
        of different sizes (at the call).
      TypeError: integer parameters (at the call).

    Example:
      >>> import jax.numpy as jnp, jaxmm
      >>> f = lambda param, data: 0.5 * jnp.mean((data - param) ** 2)
      >>> g = jaxmm.clipped_grad(f, l2_clip_norm=jnp.inf, return_grad_norms=True)
      >>> grad, aux = g(3.0, jnp.array([0.0, 7.0, -2.0]))
      >>> grad, aux.grad_norms
      (Array(4., dtype=float32), Array([3., 4., 5.], dtype=float32))
    """
    argnums_t, batch_t = _as_tuple(argnums), _as_tuple(batch_argnums)
    _check_static(argnums_t, batch_t, normalize_by, l2_clip_norm)
    if pre_clipping_transform is not None:
        raise NotImplementedError(
            "jaxmm.clipped_grad does not form per-example gradients, so it cannot transform them "
            "(pre_clipping_transform); use jax_privacy.clipping.clipped_grad for that."
        )
    del microbatch_size  # the result does not depend on it
    options = _Options(
        argnums_t,
        isinstance(argnums, int),
        batch_t,
        has_aux,
        keep_batch_dim,
        l2_clip_norm,
        rescale_to_unit_norm,
        nan_safe,
        dtype,
        prng_argnum,
        spmd_axis_name,
    )

    def clipped(*args: Any, **kwargs: Any) -> Any:
        padding = kwargs.pop("is_padding_example", None)
        batch_size = _check_call(argnums_t, batch_t, args)
        if padding is None:
            padding = jnp.zeros(batch_size, dtype=jnp.bool_)
        grads, values, norms, aux = clipped_sum(fun, options, args, kwargs, padding)
        if dtype is not None:
            grads = jax.tree.map(lambda x: x.astype(dtype), grads)
        if normalize_by != 1.0:
            grads = jax.tree.map(lambda x: x / normalize_by, grads)
        if not (has_aux or return_values or return_grad_norms):
            return grads
        if keep_batch_dim:
            aux = jax.tree.map(_squeeze_axis_1, aux)
        return grads, AuxiliaryOutput(
            values=values if return_values else None,
            grad_norms=norms if return_grad_norms else None,
            aux=aux if has_aux else None,
        )

    bound = (1.0 if rescale_to_unit_norm else l2_clip_norm) / normalize_by
    return BoundedSensitivityCallable(clipped, bound, has_aux or return_values or return_grad_norms)


@dataclasses.dataclass(frozen=True)
class _Options:
    argnums: tuple[int, ...]
    single: bool
    batch_argnums: tuple[int, ...]
    has_aux: bool
    keep_batch_dim: bool
    clip: Any
    rescale: bool
    nan_safe: bool
    dtype: Any
    prng_argnum: int | None
    spmd_axis_name: str | None
