"""Sphinx configuration of detloss's documentation (``make docs`` builds it into ``site/``).

About this site: Sphinx with autodoc and napoleon, because the docstrings are written for it
(reStructuredText roles such as ``:func:`` and ``:class:``, ``.. math::`` blocks, Google-style
``Args:`` / ``Shape:`` / ``Example:`` sections), myst-parser so that the guides are Markdown,
and the furo theme. The build is strict (``-W --keep-going -n``: a warning, a broken link or an
unresolved reference fails ``make test``) and offline: nothing is downloaded (MathJax is
referenced by the pages, loaded by the reader's browser).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE / "_ext"))

import detloss  # noqa: E402

project = "detloss"
author = "the detloss developers"
copyright = "the detloss developers, Apache-2.0"
release = detloss.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "detloss_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# Generated figures and tables live beside the pages (the commands write them there): the
# reports with a title are pages, the tables without one are included into results.md.
exclude_patterns = ["_build", "detection/**", "plots/**", "bench/roofline.md"]

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 4

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
# torch.nn.Module.forward's docstring is torch's, not this library's: a method without one shows none.
autodoc_inherit_docstrings = False
autodoc_default_options = {"exclude-members": "__init__, function"}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_custom_sections = ["Shape"]

nitpicky = True
# Annotations name torch's, numpy's and Python's own types: without a network there is no
# inventory of their documentation to link to, so they are shown as text. Private names
# (a leading underscore) are not part of the documented interface.
nitpick_ignore_regex = [
    ("py:.*", r"(torch|numpy|np|typing|collections|rich|typer|pathlib|matplotlib)(\..*)?"),
    ("py:.*", r"(.*\.)?_[A-Za-z].*"),
]

# Options and commands are written with two hyphens (`--out`): no typographic dashes or quotes.
smartquotes = False

html_theme = "furo"
html_title = f"detloss {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
