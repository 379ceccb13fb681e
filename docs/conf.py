"""Sphinx configuration: API pages come from the numpydoc docstrings."""

project = "convsv"
author = "convsv developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc", "sphinx.ext.mathjax"]
autosummary_generate = True
numpydoc_show_class_members = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
source_suffix = {".rst": "restructuredtext"}
