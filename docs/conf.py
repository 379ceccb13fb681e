"""Sphinx configuration for convsv's documentation site.

API pages come from the numpydoc docstrings (autosummary), the markdown pages (benchmarks)
are read by MyST, and ``docs/examples/plot_*.py`` are executed by sphinx-gallery at build
time. Build with ``docs/build.sh`` or ``nox -s docs`` (both ``-W``: warnings fail).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The docs describe the checkout they live in, installed or not.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import convsv

project = "convsv"
author = "convsv developers"
copyright = "convsv developers"
release = version = convsv.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "examples", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

autosummary_generate = ["api.rst"]
autosummary_imported_members = False
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
myst_heading_anchors = 3

html_theme = "pydata_sphinx_theme"
html_title = f"convsv {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": [], "user_guide": [], "theory": []}
html_show_sourcelink = False

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # execute every example
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "show_memory": False,
    "plot_gallery": "True",
}

# Every name in the ``__all__`` of a public module must have an API page: a module whose
# new function is not listed in api.rst fails the build instead of silently missing.
PUBLIC_MODULES = [
    "convsv",
    "convsv.tt",
    "convsv.tucker",
    "convsv.stiefel",
    "convsv.sttp",
    "convsv.reference",
    "convsv.fft",
    "convsv.projection",
    "convsv.spectrum",
    "convsv.lfa",
    "convsv.circulant",
    "convsv.polyphase",
    "convsv.operator",
    "convsv.singular_vectors",
    "convsv.bounds",
    "convsv.krylov",
    "convsv.norm",
    "convsv.real_layers",
    "convsv.gram",
    "convsv.torch",
    "convsv.dask",
]


def _check_api_complete() -> None:
    listed = set(
        re.findall(r"^\s+~?(convsv[\w.]*)\s*$", (DOCS / "api.rst").read_text(), flags=re.MULTILINE)
    )
    missing = []
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            # modules have their own page; constants are documented where they are used
            if isinstance(obj, type(convsv)) or name.startswith("__") or not callable(obj):
                continue
            # Re-exported names count once, under the package that exports them.
            owners = {
                f"{modname}.{name}",
                f"convsv.{name}",
                f"{getattr(obj, '__module__', '')}.{name}",
            }
            if not owners & listed:
                missing.append(f"{modname}.{name}")
    if missing:
        msg = f"docs/api.rst lacks autosummary entries for: {', '.join(sorted(missing))}"
        raise RuntimeError(msg)


_check_api_complete()
