"""svd (singular triplets), symbols, TT, clipping and Householder frames over backends."""

from __future__ import annotations

import math

import numpy as np

import convsv
import convsv.stiefel as stiefel
import convsv.tt as tt

from .common import BACKENDS, Backend, SquareKernel, kernel, sizes


class Symbols(SquareKernel):
    params = (BACKENDS, [16, 64], sizes([32], [32, 64]), ["lfa", "fft"])
    param_names = ["backend", "c", "n", "method"]

    def time_symbols(self, backend, c, n, method):
        convsv.symbols(self.k, n, method=method)
        self.sync()


class TopSingularTriplets(SquareKernel):
    params = (BACKENDS, sizes([16], [16, 64]), [6, 64])
    param_names = ["backend", "c", "k"]

    def time_svd(self, backend, c, k):
        convsv.svd(self.k, 16, k=k)
        self.sync()


class TTSingularValues(Backend):
    params = (BACKENDS, sizes([64], [128, 256]), [4, 2])
    param_names = ["backend", "c", "c_over_r"]

    def setup(self, backend, c, c_over_r):
        self.setup_backend(backend)
        t = tt.decompose(kernel(c, c, 3, "float64"), ranks=(c // c_over_r, c // c_over_r))
        self.t = tt.TTKernel(*(self.asarray(np.asarray(a)) for a in (t.k1, t.k2, t.k3)))

    def time_tt_singular_values(self, backend, c, c_over_r):
        tt.singular_values(self.t, 16)
        self.sync()

    def peakmem_tt_singular_values(self, backend, c, c_over_r):
        tt.singular_values(self.t, 16)


class Clip(SquareKernel):
    params = (BACKENDS, sizes([16], [16, 64]), ["once", "kernel", "full"])
    param_names = ["backend", "c", "mode"]
    timeout = 300

    def time_clip(self, backend, c, mode):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if mode == "once":
                convsv.clip_once(self.k, 16, 1.0)
            else:
                convsv.clip(self.k, 16, 1.0, support=mode, iterations=10)
        self.sync()


class ClipWarm(SquareKernel):
    """Re-clip (``warm_start``) of a clipped kernel after a small random step, as ``clip_`` in
    training: the step's Frobenius norm is about 1e-3 times the clipped operator norm."""

    params = (BACKENDS, sizes([16], [16, 64]))
    param_names = ["backend", "c"]
    timeout = 300

    def setup(self, backend, c):
        super().setup(backend, c)
        out, self.info = convsv.clip(self.k, 16, 1.0, full_output=True)
        step = self.asarray(np.random.default_rng(1).standard_normal(tuple(self.k.shape)))
        self.moved = out + 1e-3 * float(convsv.operator_norm(out, 16)) * step / math.sqrt(
            float(np.prod(tuple(self.k.shape)))
        )

    def time_clip_warm(self, backend, c):
        convsv.clip(self.moved, 16, 1.0, warm_start=self.info)
        self.sync()


class Householder(Backend):
    params = (BACKENDS, sizes(["4x128x32"], ["16x256x64", "1x1024x256"]), ["wy", "loop"])
    param_names = ["backend", "shape", "method"]

    def setup(self, backend, shape, method):
        self.setup_backend(backend)
        b, d, r = (int(v) for v in shape.split("x"))
        self.h = self.asarray(np.random.default_rng(0).standard_normal((b, d, r)))

    def time_frame(self, backend, shape, method):
        stiefel.frame_from_householder(self.h, method=method)
        self.sync()
