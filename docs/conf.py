"""Sphinx configuration: the API reference is rendered from jaxmm's docstrings.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (warnings are errors).
"""

import jaxmm

project = "jaxmm"
author = "the jaxmm authors"
release = version = jaxmm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style "Args:" / "Returns:" sections
    "sphinx.ext.intersphinx",
    "myst_parser",  # the Markdown pages
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "benchmark_*.json"]
myst_heading_anchors = 3

autodoc_typehints = "signature"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Cross-references to JAX resolve offline: no inventory is downloaded at build time.
intersphinx_mapping: dict = {}
nitpicky = False

html_theme = "furo"
html_title = f"jaxmm {release}"
