r"""The dense matrix of a convolutional layer (doubly block-circulant for periodic padding).

Sedghi, Gupta, Long, ICLR 2019, Lemma 1 / eq. (6): a stride-1 periodic 2-D convolution
is a ``c_out x c_in`` array of doubly block-circulant ``n^2 x n^2`` blocks. This module
builds the matrix of any layer :mod:`convsv.geometry` describes (any number of spatial
axes, strides, dilations, groups, convsv's and PyTorch's paddings, transposed layers) from
the layer's own tap-domain adjoint applied to basis signals: the dense path of
:func:`convsv.singular_values` for small non-periodic layers. (The tests' reference is
independent of it: torch's convolutions applied to basis signals.) It is memory-checked:
the matrix has ``c_out * prod(out) * c_in * prod(n)`` entries.

Index conventions (PyTorch's): rows enumerate ``(o, i_1, ..., i_d)`` and columns
``(c, j_1, ..., j_d)`` in C order, i.e. ``A @ x.reshape(-1)`` is the layer applied to
``x`` of shape ``(c_in, *n)``. Output position ``i`` reads input position

* ``(i * s + p * dilation) mod n`` for ``padding="circular"`` (kernels larger than the
  input wrap around the torus), and
* ``i * s + p * dilation - (dilation * (k - 1)) // 2`` for ``padding="zeros"`` (zero
  outside ``[0, n)``; the centred "same" convolution, PyTorch's ``padding=(k-1)//2``
  for odd ``k``),

with ``out = ceil(n / s)`` outputs per axis in both cases.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from ._array_api import as_result, device_of, itemsize
from ._validation import check_memory
from .geometry import Geometry, LayerKeywords, layer_adjoint, prepare_layer

__all__ = ["dense_operator"]


def geometry_nbytes(geom: Geometry, xp: ModuleType, dtype: Any) -> float:
    # the result plus one chunk list of the same total size before the concatenation
    return 2.0 * math.prod(geom.shape) * itemsize(xp, dtype)


def dense_from_geometry(
    kernel: Any, geom: Geometry, xp: ModuleType, *, chunk_bytes: float = 2**26
) -> Any:
    """Public matrix of a layer (``A``, or ``A^T`` if transposed), row blocks at a time.

    Row ``r`` is ``conj(A^H e_r)``: the tap-domain adjoint
    (:func:`convsv.geometry.layer_adjoint`) applied to chunks of basis signals, so the
    rows come out C-contiguous with no transpose; exact (every entry is one tap or a sum
    of taps that share a padded position); the basis chunks stay within ``chunk_bytes``.
    """
    rows, cols = geom.shape
    dev = device_of(kernel)
    step = max(1, int(chunk_bytes // (max(rows, cols) * itemsize(xp, kernel.dtype))))
    blocks = []
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        eye = xp.eye(stop - start, rows, k=start, dtype=kernel.dtype, device=dev)
        eye = xp.reshape(eye, (stop - start, *geom.out_shape))
        blocks.append(xp.reshape(layer_adjoint(kernel, geom, eye, xp), (stop - start, cols)))
    t = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
    return xp.conj(t) if xp.isdtype(t.dtype, "complex floating") else t


def dense_operator(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
    memory_limit: float | None = None,
    xp: Any = None,
) -> Any:
    """Dense matrix of a convolutional layer (Sedghi et al. 2019, Lemma 1, eq. 6).

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` (``layout="oihw"``, PyTorch) or
        ``(*k, c_in/groups, c_out)`` (``layout="hwio"``); 1-3 spatial axes. For
        ``transposed=True``: PyTorch's ConvTranspose weight ``(c_in, c_out/groups, *k)``.
    n : int or tuple of int
        Input spatial size.
    stride, dilation : int or tuple of int
    groups : int
        As in ``torch.nn.Conv2d``; the matrix is block-diagonal over groups.
    layout : {"oihw", "hwio"}
    padding : {"circular", "zeros"}, int, tuple of int, "same" or "valid"
        ``"circular"`` (default): the periodic (torus) layer; ``"zeros"``: convsv's centred
        zero padding (see the module docstring). An int, tuple, ``"same"`` or ``"valid"``:
        exactly ``torch.nn.Conv{d}d(..., padding=padding, padding_mode=padding_mode)``
        (``ConvTranspose{d}d`` with ``transposed=True``), bias excluded.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        PyTorch's; default ``"zeros"``. Only with PyTorch-style ``padding``.
    transposed : bool
        The layer is ``ConvTranspose{d}d``: the transpose of the convolution whose
        gradient it is (``n`` is its input size). With ``padding="circular"``/``"zeros"``:
        the transpose of convsv's layer on ``n * stride`` (the periodic transposed conv).
    output_padding : int or tuple of int
        ConvTranspose's ``output_padding`` (``< max(stride, dilation)``, as torch).
    memory_limit : float, optional
        Refuse (``ValueError``) if building the matrix needs more bytes (default 1 GiB).
    xp : namespace, optional
        Namespace to build in; inferred from ``kernel`` if None.

    Returns
    -------
    array
        ``(c_out * prod(out), c_in * prod(n))`` matrix, ``out = ceil(n / stride)`` for the
        string paddings of convsv and PyTorch's output size otherwise, in the kernel's
        dtype, namespace and device.
    """
    layer = LayerKeywords(
        stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
    )
    k, geom, xp = prepare_layer(kernel, n, layer, xp)
    check_memory(
        geometry_nbytes(geom, xp, k.dtype),
        memory_limit,
        f"the dense {geom.shape[0]} x {geom.shape[1]} operator",
        "raise memory_limit, or use convsv.apply / convsv.apply_adjoint (matrix-free)",
    )
    return as_result(dense_from_geometry(k, geom, xp))
