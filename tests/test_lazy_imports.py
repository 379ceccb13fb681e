"""Optional frameworks are imported only by their adapters (convsv.dask, ...)."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_import_convsv_imports_no_framework():
    code = (
        "import sys, convsv; bad = [m for m in ('dask', 'distributed', 'torch', 'matplotlib',"
        " 'scipy') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = _run(code)
    assert out.returncode == 0, out.stdout + out.stderr


def test_convsv_dask_without_dask_names_the_extra():
    # a None entry in sys.modules makes `import dask` raise ImportError, as if not installed
    code = (
        "import sys; sys.modules['dask'] = None\n"
        "try:\n    import convsv.dask\nexcept ImportError as e:\n    print(e); sys.exit(0)\n"
        "sys.exit(1)"
    )
    out = _run(code)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pip install 'convsv[dask]'" in out.stdout, out.stdout
