"""Development tasks: ``nox -s tests``, ``nox -s lint``, ``nox -s docs``, ``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra pytest arguments are forwarded)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "convsv", "tests", "asv_benchmarks", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx documentation (API pages from the numpydoc docstrings)."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the paper-comparison benchmark script and a quick asv pass."""
    session.install("-e", ".[bench,test]")
    session.run("python", "asv_benchmarks/compare.py", *session.posargs)
    session.chdir("asv_benchmarks")
    session.run("asv", "run", "--quick", "--python=same", "--show-stderr")


if __name__ == "__main__":
    nox.main()
