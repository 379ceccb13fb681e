"""PyTorch-padding layers: the tap-domain operator and the interlacing brackets."""

from __future__ import annotations

import numpy as np

import convsv
from convsv.geometry import conv_adjoint, conv_apply, layer_geometry

from .common import BACKENDS, SquareKernel


class ConvApply(SquareKernel):
    """conv_apply / conv_adjoint of a zero-padded 3x3 layer (what Krylov solvers call);
    compare with ``torch_conv2d`` (torch backends only) on the same machine."""

    params = (BACKENDS, [64, 256], [32])
    param_names = ["backend", "c", "n"]

    def setup(self, backend, c, n):
        super().setup(backend, c, n)
        from array_api_compat import array_namespace

        self.ns = array_namespace(self.k)
        self.geom = layer_geometry(self.k, n, 1, 1, 1, 1, None, False, 0)
        rng = np.random.default_rng(1)
        self.x = self.asarray(rng.standard_normal((1, c, n, n)))
        self.y = conv_apply(self.k, self.geom, self.x, self.ns)

    def time_conv_apply(self, backend, c, n):
        conv_apply(self.k, self.geom, self.x, self.ns)
        self.sync()

    def time_conv_adjoint(self, backend, c, n):
        conv_adjoint(self.k, self.geom, self.y, self.ns)
        self.sync()

    def time_torch_conv2d(self, backend, c, n):
        if not backend.startswith("torch"):
            raise NotImplementedError("torch baseline")
        import torch.nn.functional as F

        F.conv2d(self.x, self.k, padding=1)
        self.sync()


class SingularValueBounds(SquareKernel):
    params = (BACKENDS, [64, 256], [32], ["zeros", "reflect"])
    param_names = ["backend", "c", "n", "padding_mode"]

    def time_bounds(self, backend, c, n, padding_mode):
        convsv.singular_value_bounds(self.k, n, padding=1, padding_mode=padding_mode)
        self.sync()
