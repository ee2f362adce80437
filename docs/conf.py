"""Sphinx configuration: API reference from the docstrings (autodoc, autosummary, napoleon), guides in MyST Markdown.

Build (warnings are errors, as in CI): ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]
os.environ.setdefault("KERAS_BACKEND", "jax")

import adamfx  # noqa: E402

project = "adamfx"
author = "the adamfx authors"
copyright = "the adamfx authors, Apache-2.0"
release = version = adamfx.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "apiref",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "_ext"]
root_doc = "index"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = False  # the reference page holds every entry itself (docs/_ext/apiref.py)
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields: one entry each, not a second description
add_module_names = False

html_theme = "alabaster"
html_title = f"adamfx {release}"
html_theme_options = {"description": "Adam and its relatives as exact optax transforms", "fixed_sidebar": True}
