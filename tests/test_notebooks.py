"""The notebooks execute from top to bottom (every numerical check in them is an assert)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from jaxmm._compat import HIJAX_BASE

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))

# The derivation's forward-mode sections run jaxmm.experimental, which needs JAX's hijax primitives.
HAS_HIJAX = HIJAX_BASE is not None
NEEDS_HIJAX = {"01_derivation.ipynb"}


def test_all_notebooks_are_found():
    assert [p.name for p in NOTEBOOKS] == [
        "01_derivation.ipynb",
        "02_flax.ipynb",
        "03_benchmarks.ipynb",
        "04_clipping.ipynb",
    ]


@pytest.mark.full
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    if path.name in NEEDS_HIJAX and not HAS_HIJAX:
        pytest.skip("its forward-mode sections need jaxmm.experimental (JAX 0.10.2 or newer)")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    errors = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
