r"""Proven brackets for the singular values of any layer, from its periodic embedding.

:mod:`convsv.geometry` writes every layer as ``A = R A_per E`` (``R`` keeps ``rows - r``
of the periodic layer's rows, ``E`` is the 0/1 padding map). Two classical facts give
brackets without ever forming ``A``:

* **Upper** (Horn & Johnson, *Topics in Matrix Analysis*, Thm. 3.3.16):
  :math:`\sigma_i(XY) \le \sigma_i(X)\,\|Y\|_2`, and deleting rows never increases a
  singular value, so :math:`\sigma_i(A) \le \|E\|_2\, \sigma_i(A_{per})`. ``E`` has at most
  one 1 per row, so ``E^T E`` is diagonal (the column counts) and
  :math:`\|E\|_2 = \prod_j \sqrt{\max \text{column count of } E_j}` (1 for zero padding).
* **Lower** (Thompson 1972, interlacing for submatrices; Cauchy for compressions):
  write ``E = W D`` with ``W`` orthonormal columns (the nonzero columns of ``E``
  normalised) and ``D >= 1`` diagonal, and let ``q`` be the number of columns of
  ``A_per`` outside ``range(W)``. Then

  .. math:: \sigma_{i+r+q}(A_{per}) \le \sigma_i(R A_{per} W) \le \sigma_i(R A_{per} W D)
            = \sigma_i(A),

  since removing ``r`` rows and compressing to ``N - q`` orthonormal columns each shift
  the index by at most the number removed, and ``D >= I`` only enlarges
  ``(A_per W D)(A_per W D)^H``. Input columns the layer never reads are zero columns of
  ``A`` and change no nonzero singular value.

When the layer is a permuted periodic layer (``r = q = 0``, ``E`` a permutation) both
brackets collapse to the exact spectrum. The periodic values come from the symbol
blocks (Sedghi et al. 2019, Thm. 6; Senderovich et al. 2022, Thm. 2) and are rounded
outward by a bound on their own floating-point error, so ``lower <= sigma_i(A) <=
upper`` holds as computed, float32 included.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from ._array_api import device_of, real_dtype
from ._backends import one_thread_math, single_threaded
from ._progress import check_progress
from ._validation import grouped, parse_memory_limit
from .geometry import Geometry, LayerKeywords, prepare_layer
from .spectrum import spectral_chunks

__all__ = ["norm_upper_bound", "periodic_error", "singular_value_bounds"]


def periodic_error(kernel_oihw: Any, geom: Geometry, s_max: float, xp: ModuleType) -> float:
    """Bound on ``|computed - true|`` of every periodic singular value (absolute).

    A symbol entry is a sum of at most ``T`` taps times phases computed in float64 and
    rounded once to the working precision, so it errs by at most ``(T + 2) eps`` times
    the sum of its ``|taps|`` (Higham, *Accuracy and Stability*, eq. 3.5); by
    Cauchy-Schwarz the block error is at most ``(T + 2) sqrt(T) eps ||K_g||_F`` in norm
    (factor 2 for complex arithmetic). A backward-stable SVD of an ``a x b`` block errs
    by ``p eps ||B||`` with ``p`` modest (LAPACK Users' Guide, Sec. 4.9, takes ``p = 1``;
    we take ``8 sqrt(max(a, b))``) and ``||B|| <= s_max``. Weyl's theorem turns both into
    singular-value errors; the final ``4 eps s_max`` covers the rounding of ``value -/+
    error`` itself.
    """
    spec = geom.conv
    eps = float(xp.finfo(real_dtype(xp, kernel_oihw.dtype)).eps)
    taps = math.prod(spec.k)
    co, ci = spec.c_out // spec.groups, spec.c_in // spec.groups * spec.phases
    kabs = xp.abs(kernel_oihw)
    kfro = float(xp.sqrt(xp.max(xp.sum(xp.reshape(kabs * kabs, (spec.groups, -1)), axis=1))))
    symbol = 2.0 * (taps + 2) * math.sqrt(taps) * kfro
    return eps * (8.0 * math.sqrt(max(co, ci)) * s_max + symbol + 4.0 * s_max)


def _periodic_values(
    kernel_oihw: Any, geom: Geometry, xp: ModuleType, memory_limit: float | None, progress: bool
) -> Any:
    parts = spectral_chunks(
        grouped(kernel_oihw, geom.conv, xp),
        geom.conv,
        xp,
        method="lfa",
        solver="svd",
        memory_limit=memory_limit,
        progress=progress,
    )
    flat = [xp.reshape(p, (-1,)) for p in parts]
    values = flat[0] if len(flat) == 1 else xp.concat(flat)
    values = xp.astype(values, real_dtype(xp, kernel_oihw.dtype), copy=False)
    return xp.sort(values, descending=True)


def norm_upper_bound(
    kernel_oihw: Any,
    geom: Geometry,
    xp: ModuleType,
    *,
    memory_limit: float | None = None,
    progress: bool = False,
) -> float:
    """Proven upper bound on the layer's operator norm: ``||E||_2 * ||A_per||_2`` (rounded up).

    ``||A_per||_2`` is bounded by the certified periodic norm of :func:`convsv.norm.periodic_norm`
    (Cholesky certificates per symbol block, rounding included), not by a full spectrum:
    the bracket of a real layer costs about one periodic ``operator_norm``.

    Parameters
    ----------
    kernel_oihw : array
        The conv-form kernel (as :func:`convsv.geometry.layer_geometry` takes it).
    geom : Geometry
    xp : namespace
    memory_limit : float, optional
        Byte budget per frequency chunk of the periodic blocks.

    Returns
    -------
    float
        ``>= sigma_1(A)`` (a host scalar: one number crosses from the device).
    """
    from .norm import periodic_norm

    # the periodic bound's own relative slack (1e-6) is far below the embedding's gap
    with one_thread_math():
        _, info = periodic_norm(
            grouped(kernel_oihw, geom.conv, xp),
            geom.conv,
            xp,
            rtol=1e-6,
            memory_limit=memory_limit,
            progress=progress,
        )
    return _round_up(geom.embed_norm * float(info.upper))


def _round_up(v: float) -> float:
    """``v`` enlarged past the rounding of the float64 product that produced it."""
    return math.nextafter(v * (1.0 + 4.0 * 2.0**-52), math.inf)


@single_threaded
def singular_value_bounds(
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
    progress: bool = False,
    xp: Any = None,
) -> tuple[Any, Any]:
    r"""Proven brackets ``lower[i] <= sigma_i(layer) <= upper[i]``, without a dense matrix.

    The layer (any padding of :func:`convsv.singular_values`) is ``A = R A_per E``, a
    periodic layer on a torus ``N`` (:mod:`convsv.geometry`) with ``r`` rows removed and a
    0/1 padding map ``E``. Then, with ``q`` the periodic columns outside ``E``'s range
    (module docstring; Thompson's interlacing for submatrices, Cauchy's for compressions,
    and :math:`\sigma_i(XY) \le \sigma_i(X) \|Y\|_2`):

    .. math:: \sigma_{i+r+q}(A_{per}) \le \sigma_i(A) \le \|E\|_2\, \sigma_i(A_{per}).

    ``r = q = 0`` and ``||E|| = 1`` (both brackets exact) when the layer is a periodic
    layer up to a permutation (e.g. circular padding with ``n`` divisible by the stride
    and PyTorch's output size ``n / stride``). Zero padding has ``||E|| = 1``; reflect /
    replicate / circular padding copies inputs, ``||E|| = prod_j sqrt(max copies)``.

    Parameters
    ----------
    kernel, n, stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
        As in :func:`convsv.singular_values`.
    memory_limit : float, optional
        Byte budget per frequency chunk of the periodic spectrum (default 1 GiB).
    progress : bool, optional
        Progress bar over the frequency chunks.
    xp : namespace, optional

    Returns
    -------
    lower, upper : array
        1-D, length ``min(rows, cols)`` of the layer, descending, real, in the kernel's
        precision, namespace and device. Rounded outward by a bound on the periodic
        values' own floating-point error (:func:`periodic_error`), so the brackets hold
        for the computed numbers, float32 included. ``lower`` is 0 beyond index
        ``len(periodic) - r - q``.

    Examples
    --------
    >>> import numpy as np, convsv
    >>> k = np.random.default_rng(0).standard_normal((8, 8, 3, 3))
    >>> lo, up = convsv.singular_value_bounds(k, 16, padding=1)
    >>> bool(np.all(lo <= up))
    True
    """
    check_progress(progress)
    memory_limit = None if memory_limit is None else parse_memory_limit(memory_limit)
    layer = LayerKeywords(
        stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
    )
    k, geom, xp = prepare_layer(kernel, n, layer, xp)
    # at entries of size ~1 (a power of two, exact): the error bound squares them, which
    # overflows from ~1e154 (float64) and left brackets of [0, inf]; scaled back below
    from .real_layers import _unit_scaled, _unscaled

    k, expo = _unit_scaled(k, xp)
    values = _periodic_values(k, geom, xp, memory_limit, progress)
    count = int(values.shape[0])
    length = geom.n_singular_values
    dev = device_of(values)
    s_max = float(values[0]) if count else 0.0
    err = periodic_error(k, geom, s_max, xp)
    shift = geom.removed_rows + geom.removed_cols
    zero = xp.zeros((1,), dtype=values.dtype, device=dev)

    def fit(v: Any) -> Any:  # exactly `length` entries: cut, or pad with zeros
        got = int(v.shape[0])
        if got >= length:
            return v[:length]
        return xp.concat([v, xp.broadcast_to(zero, (length - got,))])

    # upper: sigma_i(A) = 0 beyond the periodic rank (the zeros `fit` appends are exact);
    # the product with ||E|| rounds in the values' dtype, hence the second margin
    scale = geom.embed_norm
    eps = float(xp.finfo(values.dtype).eps)
    upper = fit((values + err) * scale + 4.0 * eps * scale * (s_max + err))
    lower = fit(values[shift:] if shift < count else values[:0])
    lower = xp.clip(lower - err, min=0.0)
    # (a power-of-two scaling is exact unless it underflows: then the lower end rounds
    # down, the upper end up, by at most the smallest subnormal)
    lower, upper = _unscaled(lower, expo, xp), _unscaled(upper, expo, xp)
    if expo > 0:  # scaled back down: subnormal results may have been rounded
        tiny = float(xp.finfo(upper.dtype).smallest_normal) * float(xp.finfo(upper.dtype).eps)
        lower = xp.clip(lower - tiny, min=0.0)
        upper = upper + tiny
    return (xp.asarray(lower, copy=True), xp.asarray(upper, copy=True))
