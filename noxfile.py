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
    """Build the documentation site warning-free (-W): API pages, MyST pages, executed gallery."""
    session.install("-e", ".[docs]")
    session.run("bash", "docs/build.sh", "python", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Stored asv run (``CONVSV_BENCH_SIZE``, default small); ``-- --write-docs [sections]``
    also reruns ``compare.py``, which rewrites the tracked ``docs/bench_*.md``."""
    session.install("-e", ".[bench,test]")
    args = list(session.posargs)
    if "--write-docs" in args:
        args.remove("--write-docs")
        session.run("python", "asv_benchmarks/compare.py", *args)
        args = []
    session.run("bash", "asv_benchmarks/run.sh", *args, external=True)


if __name__ == "__main__":
    nox.main()
