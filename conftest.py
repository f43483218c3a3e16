"""Collection for the whole repository (tests/ and the doctests of jaxmm/)."""

from jaxmm._compat import HIJAX_BASE

if HIJAX_BASE is None:
    # A JAX without hijax primitives: importing jaxmm.experimental raises
    # (tests/test_experimental_import.py), so its modules' doctests are not collected.
    collect_ignore = ["jaxmm/experimental.py", "jaxmm/_primitive.py"]
