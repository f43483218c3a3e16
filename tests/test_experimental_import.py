"""jaxmm.experimental needs JAX's hijax primitives; jaxmm itself does not."""

import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest


def test_without_hijax_primitives_only_the_experimental_module_is_refused(monkeypatch):
    """On a JAX without hijax primitives (neither ``HiPrim`` nor ``VJPHiPrimitive``),
    ``import jaxmm.experimental`` says what it needs, and ``jaxmm`` itself still imports and
    works."""
    monkeypatch.setitem(sys.modules, "jax.experimental.hijax", types.ModuleType("hijax"))
    for name in ["jaxmm", "jaxmm._compat", "jaxmm.experimental", "jaxmm._primitive"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import jaxmm

    needs = (
        r"jax\.experimental\.hijax\.HiPrim .* or VJPHiPrimitive .* install JAX 0\.10\.2 or newer"
    )
    with pytest.raises(ImportError, match=needs):
        import jaxmm.experimental  # noqa: F401
    a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
    np.testing.assert_array_equal(jaxmm.matmul(a, b), jnp.matmul(a, b))
