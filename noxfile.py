"""Development tasks.

``nox -s tests`` / ``lint`` / ``docs`` / ``bench`` as usual; ``nox -s oldest`` runs the tests
on the oldest declared dependencies, ``nox -s hypothesis-dev`` runs the property tests
with the larger ``dev`` hypothesis profile, ``nox -s mutants`` runs mutation testing
(``nox -s mutants-torch -- _backends`` one module at a time, torch included).
CI pins (torch's CPU build) live in ``constraints/ci.txt``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

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


# nox -s mutants-torch: modules whose backend branches only torch reaches, each with the
# tests that exercise it (a mutant runs only the selected tests that call the mutated function;
# a short list keeps each mutant's run to seconds).
MUTANT_MODULES = {
    "_backends": [
        "tests/test_backends.py",
        "tests/test_certificate.py",
        "tests/test_threads.py",
        "tests/test_spectrum.py::TestCertifiedSVD",
    ],
    # mutmut's trampolines add stack frames, so the stacklevel check cannot pass under it
    "projection": ["tests/test_projection.py", "-k", "not warning_points_at_the_caller"],
    # the first (NumPy-only) run could not see dropped device=/dtype= arguments
    "stiefel": ["tests/test_stiefel.py"],
    "tt": ["tests/test_tt.py", "tests/test_tt_clip.py", "tests/test_tt_inputs.py"],
    "lfa": ["tests/test_lfa.py", "tests/test_lfa_symbols.py"],
    "polyphase": ["tests/test_polyphase.py", "tests/test_lfa.py", "tests/test_lfa_symbols.py"],
    "norm": ["tests/test_norm.py", "tests/test_norm_review.py"],
    "torch/_spectral_norm": ["tests/test_torch_spectral_norm.py"],
    "torch/_layers": ["tests/test_torch.py", "tests/test_torch_spectral_norm.py"],
    "torch/_clip": ["tests/test_torch.py"],
    "torch/_report": ["tests/test_torch.py", "tests/test_cli.py"],
}
MUTANTS_TORCH_ENV = {
    # array_api_strict's non-default device catches a dropped device=; torch the torch paths
    "CONVSV_TEST_BACKENDS": "numpy,array_api_strict,torch",
    "CONVSV_HYPOTHESIS_PROFILE": "mutants",
    # convsv's pool stays off by default; tests/test_backends.py starts it (workers=2) itself
    "CONVSV_NUM_THREADS": "1",
    # torch's intra-op pool and BLAS: one thread, set before torch is imported
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def stage_mutants(module: str, root: Path | str = ".") -> Path:
    """A mutmut workspace for one module: ``.nox/mutants-torch/<module>``.

    mutmut reads its configuration only from ``./pyproject.toml``, so the workspace gets
    copies of ``convsv/``, ``tests/`` and a ``pyproject.toml`` whose ``[tool.mutmut]``
    mutates ``convsv/<module>.py`` alone and selects ``MUTANT_MODULES[module]``; the shared
    section stays as it is. An earlier ``mutants/`` (mutmut's results) is kept, so a rerun
    after new tests only re-tests what changed. Returns the workspace.
    """
    if module not in MUTANT_MODULES:
        msg = f"module must be one of {sorted(MUTANT_MODULES)}, got {module!r}"
        raise ValueError(msg)
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    root = Path(root)
    stage = root / ".nox" / "mutants-torch" / module
    stage.mkdir(parents=True, exist_ok=True)
    for name in ("convsv", "tests"):
        shutil.rmtree(stage / name, ignore_errors=True)
        shutil.copytree(root / name, stage / name, ignore=shutil.ignore_patterns("__pycache__"))
    # mutmut 3 leaves decorated functions unmutated: clip, clip_once (@single_threaded) and
    # one_thread_math (@contextmanager) would drop out. In the copy, the decorator is
    # applied after the definition instead, which is the same function.
    target = stage / "convsv" / f"{module}.py"
    source = target.read_text()
    names = re.findall(r"^@[\w.]+\ndef (\w+)\(", source, flags=re.MULTILINE)
    source = re.sub(r"^@([\w.]+)\ndef (\w+)\(", r"def \2(", source, flags=re.MULTILINE)
    decorators = re.findall(r"^@([\w.]+)\ndef \w+\(", target.read_text(), flags=re.MULTILINE)
    tail = "".join(f"{n} = {dec}({n})\n" for n, dec in zip(names, decorators))
    target.write_text(
        source + ("\n\n# nox -s mutants-torch: decorators applied here\n" + tail if tail else "")
    )
    text = (root / "pyproject.toml").read_text()
    conf = tomllib.loads(text)["tool"]["mutmut"]
    conf["only_mutate"] = [f"convsv/{module}.py"]
    conf["pytest_add_cli_args_test_selection"] = MUTANT_MODULES[module]
    section = "[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in conf.items())
    start = text.index("[tool.mutmut]")
    end = text.find("\n[tool.", start + 1)
    text = text[:start] + section + (text[end:] if end >= 0 else "")
    (stage / "pyproject.toml").write_text(text)
    return stage


@nox.session(name="mutants-torch")
def mutants_torch(session: nox.Session) -> None:
    """Mutation testing of one module on NumPy, array_api_strict and torch (CPU): ``--
    <module>`` (a key of ``MUTANT_MODULES``), then mutmut's arguments (default ``run
    --max-children 1``).

    The shared ``mutants`` session runs NumPy only, which never reaches ``_backends``'s torch
    branches (``torch_conv``, ``cholesky_ex``, the per-thread torch limits). GPU-only code
    (``_fast_svd``'s gesvda, ``_device_free_bytes``) stays unreachable without a GPU.
    """
    if not session.posargs:
        session.error(f"name a module: one of {sorted(MUTANT_MODULES)}")
    module, *args = session.posargs
    session.install("-e", ".[test,mutants]", *CI)
    stage = stage_mutants(module)
    session.chdir(stage)
    session.run("mutmut", *(args or ["run", "--max-children", "1"]), env=MUTANTS_TORCH_ENV)
    session.run("mutmut", "results", env=MUTANTS_TORCH_ENV)


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
