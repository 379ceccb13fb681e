"""Backend-parametrised base class for convsv's asv benchmarks.

Parameters never depend on what is installed: a backend that is missing (or a GPU
that is absent) raises ``NotImplementedError`` in ``setup``, which asv reports as a
skip. GPU timings synchronise inside the timed call.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import numpy as np

BACKENDS = ["numpy:cpu", "torch:cpu", "torch:cuda", "cupy:cuda"]

# Problem sizes: "small" (default) keeps a full stored ``asv run --python=same`` under
# ~10 minutes on a 2-core machine; "full" adds the papers' sizes (c = 256, n = 64, ...).
# Params depend on this variable only, never on what is installed.
SIZE = os.environ.get("CONVSV_BENCH_SIZE", "small")
if SIZE not in ("small", "full"):
    msg = f"CONVSV_BENCH_SIZE must be 'small' or 'full', got {SIZE!r}"
    raise ValueError(msg)


# Import the optional backends once, when asv's forkserver imports the suite, instead of in
# every forked parameter set (``import torch`` took 20 s on the busy 2-core VM). No CUDA is
# initialised by importing; a missing backend still skips in ``setup``.
for _name in ("torch", "cupy"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)


def sizes(small: list, full: list) -> list:
    """The parameter values for the selected ``CONVSV_BENCH_SIZE``."""
    return full if SIZE == "full" else small


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
