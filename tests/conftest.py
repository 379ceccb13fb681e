"""Backend fixtures and hypothesis profiles.

The ``xp`` fixture runs every test once per backend: numpy, array_api_strict (on a
non-default device, which catches code that forgets ``device=``), torch on the CPU, and
cupy / torch on CUDA where a GPU exists (skipped otherwise).
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# nox -s mutants: the ci examples, but a failure ends the test at once. Shrinking a
# mutant's counterexample took longer than mutmut's timeout on the shared 2-core box.
settings.register_profile(
    "mutants", parent=settings.get_profile("ci"), phases=[Phase.explicit, Phase.generate]
)
settings.load_profile(os.environ.get("CONVSV_HYPOTHESIS_PROFILE", "ci"))


class Backend(enum.Enum):
    NUMPY = "numpy"
    ARRAY_API_STRICT = "array_api_strict"
    TORCH = "torch"
    CUPY = "cupy"
    TORCH_CUDA = "torch-cuda"


@dataclass(frozen=True)
class Env:
    """One backend: its raw module, array-API namespace and device."""

    backend: Backend
    module: Any
    xp: Any
    device: Any

    def asarray(self, a: Any) -> Any:
        return self.xp.asarray(np.asarray(a), device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        if self.backend is Backend.CUPY:
            return a.get()
        if self.backend in (Backend.TORCH, Backend.TORCH_CUDA):
            return a.detach().cpu().numpy()
        if self.backend is Backend.ARRAY_API_STRICT:
            a = a.to_device(self.module.Device("CPU_DEVICE"))
        return np.asarray(a)


def _make(backend: Backend) -> Env:
    import importlib

    def compat(name: str) -> Any:
        return importlib.import_module(f"array_api_compat.{name}")

    if backend is Backend.NUMPY:
        import numpy

        return Env(backend, numpy, compat("numpy"), "cpu")
    if backend is Backend.ARRAY_API_STRICT:
        strict = pytest.importorskip("array_api_strict")
        if int(np.__version__.split(".")[0]) < 2:
            # its multi-device support calls np.asarray(copy=...), which NumPy 1.x lacks
            pytest.skip("array_api_strict's devices need NumPy >= 2")
        return Env(backend, strict, strict, strict.Device("device1"))
    if backend is Backend.TORCH:
        torch = pytest.importorskip("torch")
        return Env(backend, torch, compat("torch"), torch.device("cpu"))
    if backend is Backend.CUPY:
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("no CUDA device")
        except Exception:  # noqa: BLE001 - any CUDA runtime failure means no GPU here
            pytest.skip("no CUDA device")
        return Env(backend, cupy, compat("cupy"), cupy.cuda.Device(0))
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    # the index matters: tensors report cuda:0, and torch.device("cuda") != cuda:0
    return Env(backend, torch, compat("torch"), torch.device("cuda", torch.cuda.current_device()))


def _selected() -> list[Backend]:
    """Backends to run: all, or those named in CONVSV_TEST_BACKENDS (comma-separated)."""
    raw = os.environ.get("CONVSV_TEST_BACKENDS", "").strip()
    if not raw:
        return list(Backend)
    names = {v.strip() for v in raw.split(",")}
    unknown = names - {b.value for b in Backend}
    if unknown:
        msg = (
            f"CONVSV_TEST_BACKENDS names unknown backends {sorted(unknown)}; choose from "
            f"{[b.value for b in Backend]}"
        )
        raise ValueError(msg)
    return [b for b in Backend if b.value in names]


@pytest.fixture(scope="session", params=_selected(), ids=[b.value for b in _selected()])
def env(request: pytest.FixtureRequest) -> Env:
    return _make(request.param)


@pytest.fixture(scope="session")
def xp(env: Env) -> Any:
    return env.xp


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``slow`` tests run with CONVSV_RUN_SLOW=1 (nox -s hypothesis-dev) or ``-m slow``."""
    if os.environ.get("CONVSV_RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set CONVSV_RUN_SLOW=1 or pass -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
