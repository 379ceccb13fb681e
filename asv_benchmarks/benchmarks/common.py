"""Backend-parametrised base class for convsv's asv benchmarks.

Parameters never depend on what is installed: a backend that is missing (or a GPU
that is absent) raises ``NotImplementedError`` in ``setup``, which asv reports as a
skip. GPU timings synchronise inside the timed call.
"""

from __future__ import annotations

import importlib

import numpy as np

BACKENDS = ["numpy:cpu", "torch:cpu", "torch:cuda", "cupy:cuda"]


class Backend:
    """Mixin: ``self.xp`` (raw module), ``self.asarray`` and ``self.sync``."""

    def setup_backend(self, backend: str) -> None:
        name, device = backend.split(":")
        try:
            self.xp = importlib.import_module(name)
        except ImportError as exc:
            raise NotImplementedError(f"{name} not installed") from exc
        self.device = device
        if name == "torch":
            if device == "cuda" and not self.xp.cuda.is_available():
                raise NotImplementedError("no CUDA device")
            self.asarray = lambda a: self.xp.asarray(a, device=device)
            self.sync = self.xp.cuda.synchronize if device == "cuda" else (lambda: None)
        elif name == "cupy":
            try:
                self.xp.cuda.runtime.getDeviceCount()
            except Exception as exc:
                raise NotImplementedError("no CUDA device") from exc
            self.asarray = self.xp.asarray
            self.sync = self.xp.cuda.Device().synchronize
        else:
            self.asarray = np.asarray
            self.sync = lambda: None


def kernel(c_out: int, c_in: int, k: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((c_out, c_in, k, k)).astype(dtype)


class SquareKernel(Backend):
    """Base for benchmarks whose first two parameters are ``backend`` and ``c``:
    ``self.k`` is a seeded ``(c, c, 3, 3)`` kernel of ``dtype`` on that backend."""

    dtype = "float64"

    def setup(self, backend, c, *_):
        self.setup_backend(backend)
        self.k = self.asarray(kernel(c, c, 3, self.dtype))
