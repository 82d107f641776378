"""Sphinx configuration of opslib's documentation site.

Build (offline: MathJax is copied from the sphinx-mathjax-offline package, no CDN):

    python3 -m pip install -e ".[docs]"
    python3 -m sphinx -W --keep-going -b html docs docs/_build/html

Each op's page is generated at build time from its op file's docstring, its entry in the op
table and the benchmark CSVs (``_ext/opslib_pages.py``), so a derivation is written once, in
``opslib/ops/<name>.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "opslib"
author = "opslib developers"
copyright = "2026, opslib developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 shipped with the build: no network at view time
    "myst_parser",
    "opslib_pages",
]
# sphinx-mathjax-offline points at its CommonHTML build, whose fonts a browser refuses to load
# from file:// pages; the SVG build draws glyphs itself, so the site also works unserved.
# (opslib_pages sets mathjax_path after that extension has set its own.)
mathjax3_config = {"tex": {"tags": "none"}, "svg": {"fontCache": "global"}}

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]
nitpicky = False

html_theme = "furo"
html_title = "opslib"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
