"""The cross-check every test uses: jaxmm against ``jax.vjp`` of JAX's own function, by
``jaxmm.testing`` (which holds the tolerance table)."""

from __future__ import annotations

import contextlib

import jax
import jax.extend
import jax.extend.core
import numpy as np
import pytest

from jaxmm._testing import TOLERANCE as TOLERANCE
from jaxmm._testing import assert_allclose, check_jvp, check_vjp
from jaxmm._testing import cotangent_like as cotangent_like
from jaxmm._testing import random_array as random_array


def x64_context(*dtypes) -> contextlib.AbstractContextManager:
    """64-bit types only exist with x64 enabled; enable it just for the cases that need it."""
    wide = any(np.dtype(d) in (np.float64, np.complex128, np.int64, np.uint64) for d in dtypes)
    return jax.enable_x64(True) if wide else contextlib.nullcontext()


def assert_close(actual, expected, what: str = "") -> None:
    """Shapes, dtypes and values (to the dtype's tolerance in jaxmm.testing.TOLERANCE)."""
    assert_allclose(actual, expected, what)


def assert_same_vjp(fn, reference, *primals, seed: int = 0, jit: bool = True) -> None:
    """Outputs and cotangents of ``fn`` equal those of ``reference`` for one random cotangent:
    ``jaxmm.testing.check_vjp``, in one jitted program by default (one compilation instead of one
    per eager op, which keeps the large case tables fast); ``jit=False`` runs it op by op."""
    check_vjp(fn, reference, *primals, seed=seed, modes=("jit",) if jit else ("eager",))


def assert_same_derivatives(fn, reference, *primals, seed: int = 0) -> None:
    """Reverse and forward mode: ``assert_same_vjp`` and ``jaxmm.testing.check_jvp`` (random
    tangents), each in one jitted program. A function whose products are ``jax.custom_vjp``
    functions (``jaxmm.custom_vjp``) has reverse mode only: its forward mode must raise JAX's
    own ``custom_vjp`` error (where an operand is differentiable: integer operands have no
    tangents, and JAX then runs the function as it is)."""
    assert_same_vjp(fn, reference, *primals, seed=seed)
    differentiable = any(jax.numpy.issubdtype(np.asarray(p).dtype, np.inexact) for p in primals)
    if differentiable and custom_vjp_calls(jax.make_jaxpr(fn)(*primals).jaxpr):
        with pytest.raises(TypeError, match="custom_vjp"):
            check_jvp(fn, reference, *primals, seed=seed)
    else:
        check_jvp(fn, reference, *primals, seed=seed)


def saved_arrays(vjp) -> list:
    """The arrays a VJP closure keeps for the backward pass. jaxmm marks an operand it does not
    save with an empty array (0 bytes; see ``jaxmm._compat.not_saved_marker``), which is left
    out here."""
    return [x for x in jax.tree.leaves(vjp) if x.size]


def sub_jaxprs(params) -> list:
    """The jaxprs nested in an equation's parameters (jit, cond, custom rules), as
    ``jax.extend.core.jaxprs_in_params`` gives them on the JAX versions that have it. A JAX
    primitive of the hijax kind (``jaxmm.experimental``'s, or every ``custom_vjp`` under JAX's
    ``jax_custom_vjp3``) keeps its jaxprs in its own parameters, as traced functions."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            item = getattr(item, "jaxpr", item)  # a traced function (jax.stages.Traced)
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                found.append(item)
            elif isinstance(getattr(item, "params", None), dict):  # a hijax primitive
                found.extend(sub_jaxprs(item.params))
    return found


def custom_vjp_calls(jaxpr) -> int:
    """How many ``custom_vjp`` applications a jaxpr holds, nested ones included: equations
    ``custom_vjp_call``, or under JAX's ``jax_custom_vjp3`` (where each ``custom_vjp`` is a
    hijax primitive) ``CustomVJPTraced``."""
    return primitive_names(jaxpr).count("custom_vjp_call")


def primitive_names(jaxpr) -> list[str]:
    """Every primitive of a jaxpr, nested jaxprs (jit, cond, custom rules) included; a
    ``custom_vjp`` application is ``custom_vjp_call`` whichever way JAX represents it."""
    names = []
    for eqn in jaxpr.eqns:
        custom_vjp3 = type(eqn.params.get("_prim")).__name__ == "CustomVJPTraced"
        names.append("custom_vjp_call" if custom_vjp3 else eqn.primitive.name)
        for sub in sub_jaxprs(eqn.params):
            names.extend(primitive_names(sub))
    return names


def operands(seed=0, a_shape=(3, 4), b_shape=(4, 5), dtype=np.float32):
    """Two random arrays of the given shapes and dtype."""
    rng = np.random.default_rng(seed)
    return random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)


def sin_loss(product):
    """A non-linear loss of ``product(a, b)``, so that second derivatives are not trivially
    zero."""
    return lambda a, b: jax.numpy.sum(jax.numpy.sin(product(a, b)))


def raised_by(fn, *args, **kwargs):
    """The type of the exception ``fn`` raises (AssertionError if it raises none)."""
    try:
        fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - we want JAX's exception type, whatever it is
        return type(error)
    raise AssertionError("the reference accepted this input")
