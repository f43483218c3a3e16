"""Collection for the whole repository (tests/ and the doctests of jaxmm/)."""

try:
    from jax.experimental.hijax import VJPHiPrimitive  # noqa: F401
except ImportError:
    # An older JAX: importing jaxmm.experimental raises (tests/test_experimental_import.py), so
    # its modules' doctests are not collected.
    collect_ignore = ["jaxmm/experimental.py", "jaxmm/_primitive.py"]
