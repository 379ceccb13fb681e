"""Independent references and assertions shared by the tests."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np
import torch
import torch.nn.functional as F
from conftest import Env


def torch_dense(
    kernel: np.ndarray,
    n: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    padding: str,
) -> np.ndarray:
    """Matrix of the layer, built by applying torch.nn.functional.conv*d to basis signals.

    Independent of convsv: circular padding is realised by tiling the input periodically
    (so kernels larger than the input wrap), zeros by F.pad.
    """
    kt = torch.as_tensor(kernel)
    d = kt.ndim - 2
    c_in = kt.shape[1] * groups
    cols = c_in * math.prod(n)
    eye = torch.eye(cols, dtype=kt.dtype).reshape(cols, c_in, *n)
    conv = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    out = tuple(-(-ni // si) for ni, si in zip(n, stride))
    k = kt.shape[2:]
    if padding == "circular":
        need = [(o - 1) * s + (kk - 1) * dl + 1 for o, s, kk, dl in zip(out, stride, k, dilation)]
        reps = [-(-nd // ni) for nd, ni in zip(need, n)]
        x = eye.repeat(1, 1, *reps)
        x = x[(..., *[slice(0, nd) for nd in need])]
    else:
        pads = []
        for kk, dl in reversed(list(zip(k, dilation))):
            left = dl * (kk - 1) // 2
            pads += [left, dl * (kk - 1) - left]
        x = F.pad(eye, pads)
    y = conv(x, kt, stride=stride, dilation=dilation, groups=groups)
    y = y[(..., *[slice(0, o) for o in out])]
    return y.reshape(cols, -1).T.contiguous().numpy()


def dense_svd(a: np.ndarray) -> np.ndarray:
    return np.linalg.svd(
        a.astype(np.complex128 if np.iscomplexobj(a) else np.float64), compute_uv=False
    )


def tol(xp: Any, dtype: Any, scale: float, size: int = 1, factor: float = 50.0) -> float:
    """Absolute tolerance ``factor * eps(dtype) * scale * sqrt(size)``."""
    return factor * float(xp.finfo(dtype).eps) * scale * math.sqrt(max(size, 1))


def assert_array(env: Env, actual: Any, *, dtype: Any, shape: tuple[int, ...]) -> None:
    """Namespace, device, dtype and shape of a result, before any value check."""
    ns = array_api_compat.array_namespace(actual)
    assert ns.__name__.removeprefix("array_api_compat.") == env.xp.__name__.removeprefix(
        "array_api_compat."
    ), ns.__name__
    assert array_api_compat.device(actual) == env.device
    assert actual.dtype == dtype, (actual.dtype, dtype)
    assert tuple(actual.shape) == shape, (tuple(actual.shape), shape)
