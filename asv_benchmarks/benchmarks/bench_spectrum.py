"""singular_values / operator_norm over backends, sizes, dtypes, methods and solvers."""

from __future__ import annotations

import numpy as np

import convsv

from .common import BACKENDS, Backend, SquareKernel, kernel, sizes


class SingularValues(Backend):
    params = (
        BACKENDS,
        sizes([16, 64], [16, 64, 256]),
        sizes([8, 16], [8, 32, 64]),
        ["float32", "float64"],
        ["svd", "gram"],
    )
    param_names = ["backend", "c", "n", "dtype", "solver"]
    timeout = 300

    def setup(self, backend, c, n, dtype, solver):
        if c * c * n * n > 256 * 256 * 32 * 32:
            raise NotImplementedError("too large for the benchmark machine")
        self.setup_backend(backend)
        self.k = self.asarray(kernel(c, c, 3, dtype))

    def time_singular_values(self, backend, c, n, dtype, solver):
        convsv.singular_values(self.k, n, solver=solver)
        self.sync()

    def peakmem_singular_values(self, backend, c, n, dtype, solver):
        convsv.singular_values(self.k, n, solver=solver)


class Strided(Backend):
    params = (BACKENDS, sizes([32], [64, 128]), [2], ["lfa", "fft"])
    param_names = ["backend", "c", "stride", "method"]

    def setup(self, backend, c, stride, method):
        self.setup_backend(backend)
        self.k = self.asarray(kernel(c, c // 2, 3, "float64"))

    def time_strided(self, backend, c, stride, method):
        convsv.singular_values(self.k, 32, stride=stride, method=method)
        self.sync()


class OperatorNorm(SquareKernel):
    params = (BACKENDS, sizes([64], [64, 256]))
    param_names = ["backend", "c"]
    dtype = "float32"

    def time_operator_norm(self, backend, c):
        convsv.operator_norm(self.k, 16)
        self.sync()


class RepeatedValues(Backend):
    """An orthogonal 1x1-centred layer: every singular value is 1.

    The hard case for the GPU path: cuSOLVER's ``gesvda`` fails on repeated singular
    values, so the certificate sends the blocks to the exact solver; this tracks what
    that costs next to ``SingularValues`` at the same size.
    """

    params = (BACKENDS, ["float32", "float64"])
    param_names = ["backend", "dtype"]

    def setup(self, backend, dtype):
        self.setup_backend(backend)
        q = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 64)))[0]
        k = np.zeros((64, 64, 3, 3), dtype=dtype)
        k[:, :, 1, 1] = q
        self.k = self.asarray(k)

    def time_singular_values(self, backend, dtype):
        convsv.singular_values(self.k, 32)
        self.sync()
