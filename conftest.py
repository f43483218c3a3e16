"""Collection for the whole repository (tests/ and the doctests of jaxmm/)."""

try:
    from jax.experimental.hijax import VJPHiPrimitive  # noqa: F401
except (
    ImportError
):  # an older JAX: importing jaxmm.experimental raises (tests/test_experimental_import.py)
    collect_ignore = ["jaxmm/experimental.py", "jaxmm/_primitive.py"]
