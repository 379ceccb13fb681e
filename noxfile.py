"""Development tasks.

``nox -s tests`` / ``lint`` / ``docs`` / ``bench`` as usual; ``nox -s oldest`` runs the tests
on the oldest declared dependencies, ``nox -s hypothesis-dev`` runs the property tests
with the larger ``dev`` hypothesis profile, ``nox -s mutants`` runs mutation testing.
CI pins (torch's CPU build) live in ``constraints/ci.txt``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

CI = ("-c", "constraints/ci.txt")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra pytest arguments are forwarded)."""
    session.install("-e", ".[test]", *CI)
    session.run("pytest", *session.posargs)


@nox.session
def oldest(session: nox.Session) -> None:
    """Run the tests on the oldest versions pyproject.toml declares.

    numpy 1.26 has no ``ndarray.device`` and only a partial array-API namespace:
    this is what keeps the declared ``numpy>=1.26`` honest.
    """
    session.install("-e", ".[test]", *CI, "-c", "constraints/oldest.txt")
    session.run(
        "python",
        "-c",
        "import numpy, array_api_compat; "
        "print('numpy', numpy.__version__, 'array-api-compat', "
        "array_api_compat.__version__)",
    )
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)


@nox.session(name="hypothesis-dev")
def hypothesis_dev(session: nox.Session) -> None:
    """Property tests (slow ones included) under the ``dev`` profile: 200 random examples."""
    session.install("-e", ".[test]", *CI)
    session.run(
        "pytest", *session.posargs, env={"CONVSV_HYPOTHESIS_PROFILE": "dev", "CONVSV_RUN_SLOW": "1"}
    )


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing of the numerical core with mutmut 3 (configured in pyproject.toml).

    ``nox -s mutants -- run "convsv.lfa*"`` restricts the run; ``nox -s mutants --
    results`` lists the survivors. Slow: hours for the whole core on two cores.
    """
    session.install("-e", ".[test,mutants]", *CI)
    env = {
        "CONVSV_TEST_BACKENDS": "numpy",
        "CONVSV_HYPOTHESIS_PROFILE": "mutants",
        # no threads anywhere: they do not survive the fork into a mutant's worker
        "CONVSV_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    session.run("mutmut", *(session.posargs or ["run", "--max-children", "2"]), env=env)
    session.run("mutmut", "results")


@nox.session
def lint(session: nox.Session) -> None:
    """Lint with ruff."""
    session.install("ruff", "-c", "constraints/ci.txt")
    paths = ("convsv", "tests", "asv_benchmarks", "noxfile.py", "docs")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site warning-free (-W): API pages, MyST pages, executed gallery."""
    session.install("-e", ".[docs]")
    session.run("bash", "docs/build.sh", "python", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Stored asv run (``CONVSV_BENCH_SIZE``, default small); ``-- --write-docs [sections]``
    also reruns ``compare.py``, which rewrites the tracked ``docs/bench_*.md``."""
    session.install("-e", ".[bench,test]", *CI)
    args = list(session.posargs)
    if "--write-docs" in args:
        args.remove("--write-docs")
        session.run("python", "asv_benchmarks/compare.py", "--write-docs", *args)
        args = []
    session.run("bash", "asv_benchmarks/run.sh", *args, external=True)


if __name__ == "__main__":
    nox.main()
