"""Sphinx configuration of the medblip-dicom documentation site.

Pages are Markdown (MyST); the API reference is generated from the docstrings by autodoc, whose
``:class:``/``:func:``/``:mod:`` roles Sphinx resolves. Nothing is fetched from the network
(no intersphinx), so the site builds offline. Build it with warnings as errors:

    sphinx-build -W --keep-going -b html docs build/docs
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # an uninstalled checkout still documents its own code

project = "medblip-dicom"
author = "the medblip-dicom authors"
copyright = "the medblip-dicom authors"  # noqa: A001 - Sphinx's name for it

try:
    from medblip_dicom import __version__ as release
except ImportError:  # pragma: no cover - the package could not be imported at all
    release = ""
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the numpy-style "Parameters / Returns / Raises" sections
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: [text](page.md#section) links are checked against headings down to level 3.
myst_heading_anchors = 3

# The API reference: members in source order, type hints in the description (not the signature),
# and autosummary tables only (no generated stub files in the source tree).
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autosummary_generate = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True

html_theme = "furo"
html_title = f"medblip-dicom {release}".strip()

# A method without a docstring of its own shows none, rather than the standard library's text for
# the method it overrides (written in another markup).
autodoc_inherit_docstrings = False
