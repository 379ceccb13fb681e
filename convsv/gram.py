r"""Gram blocks of a layer's symbols, straight from the taps.

The smaller Gram block ``P(theta) P(theta)^H`` (or ``P^H P``) of every frequency is the
symbol of the polyphase kernel's tap autocorrelation (a Wiener-Khinchin identity for
the crystal symbols of van Betteray et al.): one set of ``(2A - 1)^d`` small products
replaces one ``c^3`` product per frequency. :mod:`convsv.spectrum` uses it for
``solver="gram"``; :mod:`convsv.norm` for its certified norm.
"""

from __future__ import annotations

import itertools
import math
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import complex_dtype, device_of
from ._backends import map_chunks
from ._validation import ConvSpec
from .polyphase import axis_phase_matrix, contract_axes

__all__ = ["gram_autocorrelation", "gram_symbols"]


def gram_autocorrelation(kg: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    r"""Tap autocorrelation ``R`` whose symbol is the smaller Gram block (see below).

    ``P(theta) P(theta)^H = sum_Delta R[Delta] e^{i <theta, Delta>}`` with the tap
    autocorrelation ``R[Delta] = sum_{a - b = Delta} K'_a K'_b^H`` of the polyphase kernel:
    the Gram blocks come from ``(2A - 1)^d`` small products instead of one ``c^3`` product
    per frequency. For ``c_out > s^d c_in`` the same is done with ``K'_a^H`` (which yields
    ``P^H P`` at ``-theta``; over the grid, or for real kernels, the eigenvalue multiset is
    the same). Only half the lags are multiplied out (:func:`gram_half_lags`), since
    ``R[-Delta] = R[Delta]^H``, and real kernels multiply real taps. Returns ``R``
    lag-major, ``(L, G, r, r)`` with ``L = prod(2 A - 1)`` lags in C order,
    ``r = min(c_out, s^d c_in)`` per group, in the complex dtype: the layout
    :func:`gram_symbols` evaluates with one GEMM.
    """
    cdt = complex_dtype(xp, kg.dtype)
    half = gram_half_lags(kg, spec, xp)
    n_half = int(half.shape[0])
    # the lags before the centre (C order) mirror the ones after it
    before = xp.conj(xp.matrix_transpose(xp.flip(half[1:, ...], axis=0)))
    return xp.astype(xp.concat([before, half]) if n_half > 1 else half, cdt)


def gram_half_lags(kg: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """The lags ``R[Delta]`` at and after the centre (C order): ``(L // 2 + 1, G, r, r)``.

    In ``kg``'s dtype (a real kernel's lags are real); the rest follow from
    ``R[-Delta] = R[Delta]^H`` (see :func:`gram_autocorrelation`).
    """
    d = spec.d
    g, co, ci = (int(v) for v in kg.shape[:3])
    ku = _polyphase_taps(kg, spec, xp)  # (G, co, ci s^d, *taps)
    taps = tuple(int(v) for v in ku.shape[3:])
    if co > ci * spec.phases:  # the smaller Gram is on the input side
        ku = xp.conj(xp.permute_dims(ku, (0, 2, 1, *range(3, 3 + d))))
    r, width = int(ku.shape[1]), int(ku.shape[2])
    # taps before the width, C-contiguous (one copy of the kernel): a slice of the last
    # tap axis then merges with the width into a strided matrix without a copy, and the
    # other tap axes become a short sum of GEMMs (no per-lag copies of the operands)
    kt = xp.permute_dims(ku, (0, 1, *range(3, 3 + d), 2))
    kt = xp.reshape(xp.reshape(kt, (-1,)), (g, r, *taps, width))
    lags = [
        tuple(dl - (a - 1) for dl, a in zip(delta, taps))
        for delta in np.ndindex(*[2 * a - 1 for a in taps])
    ]

    cplx = xp.isdtype(kt.dtype, "complex floating")

    def product(lag: tuple[int, ...]) -> Any:
        lo = [max(0, v) for v in lag]
        hi = [min(a, a + v) for a, v in zip(taps, lag)]
        length = width * (hi[-1] - lo[-1])
        last_x = slice(lo[-1], hi[-1])
        last_y = slice(lo[-1] - lag[-1], hi[-1] - lag[-1])
        acc = None
        for outer in itertools.product(*[range(a, b) for a, b in zip(lo[:-1], hi[:-1])]):
            other = tuple(a - v for a, v in zip(outer, lag[:-1]))
            xs = xp.reshape(kt[(slice(None), slice(None), *outer, last_x, ...)], (g, r, length))
            ys = xp.reshape(kt[(slice(None), slice(None), *other, last_y, ...)], (g, r, length))
            yt = xp.matrix_transpose(ys)
            # (conj copies a real array; a @ a^T of one buffer is a half-cost SYRK)
            term = xs @ (xp.conj(yt) if cplx else yt)  # (G, r, r)
            acc = term if acc is None else acc + term
        return acc

    return xp.stack(map_chunks(product, lags[len(lags) // 2 :], xp), axis=0)


def _polyphase_taps(kg: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """The polyphase taps ``K'_a`` of ``kg``: ``(G, co, ci s^d, *A)`` (a view where possible).

    Stride 1 and dilation 1: the kernel itself (the phase matrices are identities, and
    contracting with them costs more than the products it feeds at c = 512).
    """
    g, co, ci = (int(v) for v in kg.shape[:3])
    if all(s == 1 for s in spec.stride) and all(dl == 1 for dl in spec.dilation):
        return kg
    dev = device_of(kg)
    mats = [
        xp.asarray(axis_phase_matrix(k, s, dl, None), dtype=kg.dtype, device=dev)
        for k, s, dl in zip(spec.k, spec.stride, spec.dilation)
    ]
    taps = tuple(int(m.shape[2]) for m in mats)
    return xp.reshape(contract_axes(kg, mats, xp), (g, co, ci * spec.phases, *taps))


def gram_symbols(corr: Any, spec: ConvSpec, freqs: list[np.ndarray], xp: ModuleType) -> Any:
    """Gram blocks ``sum_Delta R[Delta] e^{i <theta, Delta>}`` on a grid: ``(F_1..F_d, G, r, r)``.

    One GEMM of the ``(F, L)`` lag-phase matrix with the lag-major ``R``
    (:func:`gram_autocorrelation`), which writes the blocks frequency-major directly.
    """
    g, r = int(corr.shape[1]), int(corr.shape[2])
    spans = [2 * a - 1 for a in _lag_taps(int(corr.shape[0]), spec)]
    e = np.ones((1, 1), dtype=np.complex128)
    for span, m, w in zip(spans, spec.m, freqs):
        p = np.arange(span) - (span - 1) // 2
        ph = np.exp(2j * np.pi * ((w[:, None] * p[None, :]) % m) / m)  # (F_axis, span)
        e = (e[:, None, :, None] * ph[None, :, None, :]).reshape(e.shape[0] * ph.shape[0], -1)
    e = xp.asarray(e, dtype=corr.dtype, device=device_of(corr))
    t = e @ xp.reshape(corr, (int(corr.shape[0]), g * r * r))
    return xp.reshape(t, (*[int(w.size) for w in freqs], g, r, r))


def _lag_taps(n_lags: int, spec: ConvSpec) -> tuple[int, ...]:
    """Taps per axis behind ``n_lags`` autocorrelation lags (as in gram_autocorrelation)."""
    taps = tuple(
        int(axis_phase_matrix(k, s, dl, None).shape[2])
        for k, s, dl in zip(spec.k, spec.stride, spec.dilation)
    )
    if math.prod(2 * a - 1 for a in taps) != n_lags:
        msg = f"corr has {n_lags} lags, but this layer's taps {taps} give a different count"
        raise ValueError(msg)
    return taps
