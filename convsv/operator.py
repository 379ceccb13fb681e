r"""The layer as an operator: periodic strided convolution and its adjoint via FFT.

Uses the symbols of :mod:`convsv.lfa` on the coarse grid (Senderovich et al. 2022,
Theorem 2): split the input into its ``s^d`` polyphase components, take their DFT,
multiply by the ``c_out x (s^d c_in)`` symbol block of each frequency, transform back.
The adjoint multiplies by the blocks' conjugate transposes and merges the phases.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import as_result, complex_dtype, device_of, to_namespace
from ._validation import ConvSpec, conv_spec, grouped, normalize_tuple, prepare_kernel
from .geometry import (
    LayerKeywords,
    infer_input_size,
    is_legacy,
    layer_adjoint,
    layer_apply,
)
from .lfa import grid_symbols
from .polyphase import merge_phases, require_divisible, split_phases

__all__ = ["apply", "apply_adjoint"]


def _operator_setup(
    kernel: Any,
    x: Any,
    stride: Any,
    dilation: Any,
    groups: int,
    layout: str,
    xp: Any,
    *,
    adjoint: bool,
) -> tuple:
    k, x, xp = _promoted(kernel, x, layout, xp, "y" if adjoint else "x")
    d = k.ndim - 2
    if x.ndim < d + 1:
        msg = (
            f"{'y' if adjoint else 'x'} must have shape (..., channels, *spatial) with "
            f"{d} spatial axes, got shape {tuple(x.shape)}"
        )
        raise ValueError(msg)
    spatial = tuple(int(v) for v in x.shape[-d:])
    if adjoint:
        s = normalize_tuple(stride, "stride", d)
        n = tuple(v * si for v, si in zip(spatial, s))
    else:
        n = spatial
    spec = conv_spec(k, n, stride, dilation, groups)
    require_divisible(spec)
    want = spec.c_out if adjoint else spec.c_in
    if int(x.shape[-d - 1]) != want:
        msg = (
            f"{'y' if adjoint else 'x'} has {int(x.shape[-d - 1])} channels at axis "
            f"{-d - 1}, the layer needs {want}"
        )
        raise ValueError(msg)
    real = not (xp.isdtype(k.dtype, "complex floating") or xp.isdtype(x.dtype, "complex floating"))
    cdt = complex_dtype(xp, k.dtype)
    blocks = grid_symbols(grouped(k, spec, xp), spec, [np.arange(m) for m in spec.m], xp)
    return k, x, spec, xp, blocks, real, cdt


def _promoted(kernel: Any, x: Any, layout: str, xp: Any, name: str) -> tuple[Any, Any, ModuleType]:
    """Kernel and signal in one namespace, on the kernel's device, in their promoted dtype.

    Array-API type promotion: float32 kernel and float64 ``x`` compute in float64, a
    complex ``x`` makes the result complex (issue 14, item 4).
    """
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    x = to_namespace(x, xp, name=name, device=device_of(k))
    if not (xp.isdtype(x.dtype, "real floating") or xp.isdtype(x.dtype, "complex floating")):
        msg = f"{name} must be a real or complex floating array, got dtype {x.dtype}"
        raise TypeError(msg)
    dt = xp.result_type(k.dtype, x.dtype)
    if k.dtype != dt:
        k = xp.astype(k, dt)
    if x.dtype != dt:
        x = xp.astype(x, dt)
    return k, x, xp


def _check_signal(v: Any, d: int, channels: int, name: str) -> tuple[int, ...]:
    if v.ndim < d + 1:
        msg = (
            f"{name} must have shape (..., channels, *spatial) with {d} spatial axes, got "
            f"shape {tuple(v.shape)}"
        )
        raise ValueError(msg)
    if int(v.shape[-d - 1]) != channels:
        msg = (
            f"{name} has {int(v.shape[-d - 1])} channels at axis {-d - 1}, the layer needs "
            f"{channels}"
        )
        raise ValueError(msg)
    return tuple(int(t) for t in v.shape[-d:])


def _geometry_apply(
    kernel: Any, v: Any, layer: LayerKeywords, n: Any, xp: Any, *, adjoint: bool
) -> Any:
    """apply / apply_adjoint of any layer, in the tap domain (:mod:`convsv.geometry`)."""
    name = "y" if adjoint else "x"
    k, v, xp = _promoted(kernel, v, layer.layout, xp, name)
    d = k.ndim - 2
    if v.ndim < d + 1:
        _check_signal(v, d, 0, name)
    spatial = tuple(int(t) for t in v.shape[-d:])
    if not adjoint:
        n = spatial
    elif n is None:
        n = infer_input_size(
            k,
            spatial,
            layer.stride,
            layer.dilation,
            layer.groups,
            layer.padding,
            layer.padding_mode,
            bool(layer.transposed),
            layer.output_padding,
        )
    geom = layer.geometry(k, n)
    want = geom.out_shape if adjoint else geom.in_shape
    _check_signal(v, d, want[0], name)
    if spatial != tuple(want[1:]):
        msg = (
            f"{name} has spatial size {spatial}, the layer (n={tuple(geom.in_shape[1:])}) "
            f"{'outputs' if adjoint else 'needs'} {tuple(want[1:])}"
        )
        raise ValueError(msg)
    return (layer_adjoint if adjoint else layer_apply)(k, geom, v, xp)


def _fft_axes(spec: ConvSpec) -> tuple[int, ...]:
    return tuple(range(2, 2 + spec.d))


def apply(
    kernel: Any,
    x: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
    xp: Any = None,
) -> Any:
    """Apply a convolution layer to ``x`` (the periodic one via FFT by default).

    Output ``y[o, i] = sum_{c, p} K[o, c, p] x[c, (i*s + p*dilation) mod n]``
    (Sedghi et al. 2019, eq. 6; strided form of Senderovich et al. 2022, Theorem 2).

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` (``"oihw"``) or ``(*k, c_in/groups, c_out)`` (``"hwio"``).
    x : array
        ``(..., c_in, *n)``.
    stride, dilation : int or tuple of int
    groups : int
    layout : {"oihw", "hwio"}
    padding, padding_mode, transposed, output_padding
        As in :func:`convsv.dense_operator`: ``padding="circular"`` is the periodic layer
        (FFT when ``n`` is divisible by ``stride``); anything else is exactly PyTorch's
        ``Conv{d}d`` / ``ConvTranspose{d}d`` (or convsv's centred ``"zeros"``), computed in
        the tap domain (:func:`convsv.geometry.conv_apply`).
    xp : namespace, optional

    Returns
    -------
    array
        ``(..., c_out, *out)``; ``out = n // stride`` for the periodic layer, PyTorch's
        output size otherwise. Dtype: the array-API promotion of the kernel's and
        ``x``'s dtypes (real if both are real).
    """
    if (
        padding != "circular"
        or not is_legacy(padding, padding_mode, transposed, output_padding)
        or not _divisible(kernel, x, stride, layout)
    ):
        layer = LayerKeywords(
            stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
        )
        return as_result(_geometry_apply(kernel, x, layer, None, xp, adjoint=False))
    _k, x, spec, xp, blocks, real, cdt = _operator_setup(
        kernel, x, stride, dilation, groups, layout, xp, adjoint=False
    )
    batch = tuple(int(v) for v in x.shape[: -spec.d - 1])
    xb = xp.reshape(xp.astype(x, cdt), (math.prod(batch), spec.c_in, *spec.n))
    xh = xp.fft.fftn(split_phases(xb, spec, xp), axes=_fft_axes(spec))
    yh = _multiply(blocks, xh, spec, xp, adjoint=False)
    y = xp.fft.ifftn(yh, axes=_fft_axes(spec))
    y = xp.real(y) if real else y
    return as_result(xp.reshape(y, (*batch, spec.c_out, *spec.m)))


def apply_adjoint(
    kernel: Any,
    y: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
    n: Any = None,
    xp: Any = None,
) -> Any:
    """Apply the adjoint (conjugate transpose) of a convolution layer to ``y``.

    ``<apply(K, x), y> = <x, apply_adjoint(K, y)>``; for the periodic layer with strides
    this is the periodic transposed convolution with output size ``n = out * stride``.

    Parameters
    ----------
    kernel : array
    y : array
        ``(..., c_out, *out)``.
    stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding, xp
        As in :func:`apply`.
    n : int or tuple of int, optional
        The layer's input size. Inferred if None: ``out * stride`` for
        ``padding="circular"``/``"zeros"``, the unique size otherwise (a ``ValueError``
        asks for ``n`` when a stride makes several sizes give ``out``).

    Returns
    -------
    array
        ``(..., c_in, *n)``, in the promoted dtype of kernel and ``y``.
    """
    if (
        not is_legacy(padding, padding_mode, transposed, output_padding)
        or padding != "circular"
        or n is not None
    ):
        layer = LayerKeywords(
            stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
        )
        return as_result(_geometry_apply(kernel, y, layer, n, xp, adjoint=True))
    _k, y, spec, xp, blocks, real, cdt = _operator_setup(
        kernel, y, stride, dilation, groups, layout, xp, adjoint=True
    )
    batch = tuple(int(v) for v in y.shape[: -spec.d - 1])
    yb = xp.reshape(xp.astype(y, cdt), (math.prod(batch), spec.c_out, *spec.m))
    yh = xp.fft.fftn(yb, axes=_fft_axes(spec))
    xh = _multiply(blocks, yh, spec, xp, adjoint=True)
    x = merge_phases(xp.fft.ifftn(xh, axes=_fft_axes(spec)), spec, xp)
    x = xp.real(x) if real else x
    return as_result(xp.reshape(x, (*batch, spec.c_in, *spec.n)))


def _divisible(kernel: Any, x: Any, stride: Any, layout: str) -> bool:
    """Whether the FFT path applies (circular padding, ``n`` divisible by ``stride``)."""
    try:
        d = len(kernel.shape) - 2
        spatial = tuple(int(v) for v in x.shape[-d:])
        s = normalize_tuple(stride, "stride", d)
    except (AttributeError, TypeError, ValueError):
        return True  # let the FFT path report the problem with its own message
    return len(spatial) == d and all(v % si == 0 for v, si in zip(spatial, s))


def _multiply(blocks: Any, vh: Any, spec: ConvSpec, xp: ModuleType, *, adjoint: bool) -> Any:
    """Per-frequency (per-group) block product of ``(B, C, *m)`` transformed signals."""
    d, g = spec.d, spec.groups
    b = int(vh.shape[0])
    c = int(vh.shape[1]) // g
    t = xp.reshape(vh, (b, g, c, *spec.m))
    t = xp.permute_dims(t, (*range(3, 3 + d), 1, 2, 0))  # (*m, G, C_g, B)
    mat = xp.conj(xp.matrix_transpose(blocks)) if adjoint else blocks
    out = mat @ t  # (*m, G, C'_g, B)
    co = int(out.shape[-2])
    out = xp.permute_dims(out, (2 + d, d, 1 + d, *range(d)))  # (B, G, C'_g, *m)
    return xp.reshape(out, (b, g * co, *spec.m))
