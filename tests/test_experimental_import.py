"""jaxmm.experimental needs JAX's hijax primitives; jaxmm itself does not."""

import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest


def test_without_hijax_primitives_only_the_experimental_module_is_refused(monkeypatch):
    """On a JAX without VJPHiPrimitive, ``import jaxmm.experimental`` says which JAX it needs,
    and ``jaxmm`` itself still imports and works."""
    monkeypatch.setitem(sys.modules, "jax.experimental.hijax", types.ModuleType("hijax"))
    for name in ["jaxmm", "jaxmm.experimental", "jaxmm._primitive"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    import jaxmm

    with pytest.raises(ImportError, match=r"JAX 0\.10\.2 or newer"):
        import jaxmm.experimental  # noqa: F401
    a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
    np.testing.assert_array_equal(jaxmm.matmul(a, b), jnp.matmul(a, b))
