r"""Symbols of (strided) convolutions at any frequencies: Local Fourier Analysis.

van Betteray, Rottmann, Kahl, *LFA applied to CNNs: Efficient SVD of Convolutional
Mappings by Local Fourier Analysis*. A convolution on the infinite lattice acts on
Fourier modes ``x_j = v e^{i theta j}`` as multiplication by its *symbol*; with stride
``s`` the input lattice is a crystal of ``s^d`` points per unit cell and the symbol is
the ``c_out x (s^d c_in)`` block

.. math:: \hat K(\theta)[o, (c, r)] = \sum_{p:\ p\,\delta \equiv r\ (\mathrm{mod}\ s)}
          K[o, c, p]\, e^{\,i \theta \cdot (p\delta - r)/s}

(one factor per spatial axis; ``delta`` is the dilation). It maps the DFT of the
polyphase input to the DFT of the output, ``y_hat(theta) = K_hat(theta) x_hat(theta)``
with ``x_hat(theta)[c, r] = sum_j x[c, s j + r] e^{-i theta . j}``. On the periodic grid
``theta = 2 pi w / m`` it coincides with the polyphase FFT blocks of :mod:`convsv.fft`
(including kernels larger than the torus, which wrap automatically because
``e^{i theta a}`` is ``m``-periodic in ``a``).

The symbol is evaluated straight from the taps, one spatial axis at a time: cost
``O(F_j * c_out * c_in * k_j)`` per axis and no padding of the kernel to ``n``, so any
subset of frequencies (a chunk of the grid, or off-grid points) costs only its share.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import as_result, complex_dtype, device_of, itemsize, real_dtype, to_namespace
from ._validation import (
    ConvSpec,
    check_choice,
    check_memory,
    conv_spec,
    grouped,
    normalize_tuple,
    parse_memory_limit,
    prepare_kernel,
)
from .polyphase import contract_axes, require_divisible, tap_phase_offset

__all__ = ["symbols"]


def grid_axis_matrix(k: int, s: int, dilation: int, m: int, w: np.ndarray) -> np.ndarray:
    """``M[p, r, f] = [p*dil = r mod s] exp(2 pi i w_f a_p / m)`` on the grid (float64)."""
    r, a = tap_phase_offset(k, s, dilation)
    # Reduce w*a mod m in integers first, so large offsets cost no phase accuracy.
    phase = 2.0 * np.pi * ((w[None, :] * a[:, None]) % m) / m
    out = np.zeros((k, s, w.size), dtype=np.complex128)
    out[np.arange(k), r, :] = np.exp(1j * phase)
    return out


#: Up to this many kernel taps the grid symbols are one GEMM with the full tap-phase
#: matrix (fast for the usual 3x3 / 5x5 / 3x3x3); above it, one contraction per axis.
_DIRECT_TAPS = 32


def grid_symbols(kg: Any, spec: ConvSpec, freqs: list[np.ndarray], xp: ModuleType) -> Any:
    """Symbols on a tensor product of grid frequencies, frequency-major.

    ``kg`` is the grouped kernel ``(G, co, ci, *k)``; ``freqs[j]`` holds integer
    frequencies of axis ``j`` (on the coarse grid ``m_j``). Returns a contiguous array
    ``(F_1, ..., F_d, G, co, ci * s^d)``, the layout the batched SVD wants.
    """
    cdt = complex_dtype(xp, kg.dtype)
    dev = device_of(kg)
    axes = [
        grid_axis_matrix(k, s, dl, m, w)
        for k, s, dl, m, w in zip(spec.k, spec.stride, spec.dilation, spec.m, freqs)
    ]
    fshape = tuple(int(w.size) for w in freqs)
    if math.prod(spec.k) <= _DIRECT_TAPS:
        # E[f.., r.., p..] = prod_j M_j[p_j, r_j, f_j]: small, built on the host
        e = axes[0].transpose(2, 1, 0)  # (F, S, P)
        for mj in axes[1:]:
            mt = mj.transpose(2, 1, 0)
            e = (e[:, None, :, None, :, None] * mt[None, :, None, :, None, :]).reshape(
                e.shape[0] * mt.shape[0], e.shape[1] * mt.shape[1], e.shape[2] * mt.shape[2]
            )
        t = apply_tap_phases(xp.asarray(e, dtype=cdt, device=dev), kg, spec, xp)
        return xp.reshape(t, (*fshape, *t.shape[1:]))
    mats = [xp.asarray(m, dtype=cdt, device=dev) for m in axes]
    t = contract_axes(xp.astype(kg, cdt), mats, xp)  # (G, co, ci, s.., F..)
    return frequency_major(t, spec, xp)


def apply_tap_phases(e: Any, kg: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """``P[f, g, o, (c, r)] = sum_p E[f, r, p] K[g, o, c, p]``: one GEMM, frequency-major."""
    g, co, ci = (int(v) for v in kg.shape[:3])
    kflat = xp.reshape(xp.astype(kg, e.dtype), (g, co, ci, -1))
    t = xp.tensordot(e, kflat, axes=([2], [3]))  # (F, S, G, co, ci)
    f = int(t.shape[0])
    if spec.phases == 1:
        return xp.reshape(t, (f, g, co, ci))
    t = xp.permute_dims(t, (0, 2, 3, 4, 1))
    return xp.reshape(t, (f, g, co, ci * spec.phases))


def frequency_major(t: Any, spec: ConvSpec, xp: ModuleType) -> Any:
    """``(G, co, ci, s_1..s_d, F_1..F_d)`` -> contiguous ``(F_1..F_d, G, co, ci*s^d)``."""
    d = spec.d
    g, co, ci = (int(v) for v in t.shape[:3])
    fshape = tuple(int(v) for v in t.shape[3 + d :])
    t = xp.permute_dims(t, (*range(3 + d, 3 + 2 * d), 0, 1, 2, *range(3, 3 + d)))
    # reshaping the permuted view materialises the frequency-major copy
    return xp.reshape(t, (*fshape, g, co, ci * spec.phases))


def point_symbols(kg: Any, spec: ConvSpec, theta: Any, xp: ModuleType) -> Any:
    """Symbols at a list of frequency points ``theta`` ``(F, d)`` -> ``(F, G, co, ci*s^d)``."""
    cdt = complex_dtype(xp, kg.dtype)
    rdt = real_dtype(xp, kg.dtype)
    dev = device_of(kg)
    theta = xp.astype(theta, rdt)
    e = None  # E[f, r.., p..]: the (separable) product of the per-axis phase factors
    for j, (k, s, dl) in enumerate(zip(spec.k, spec.stride, spec.dilation)):
        r, a = tap_phase_offset(k, s, dl)
        onehot = np.zeros((s, k))
        onehot[r, np.arange(k)] = 1.0
        ang = theta[:, j : j + 1] * xp.asarray(a, dtype=rdt, device=dev)[None, :]  # (F, k)
        fac = xp.astype(xp.cos(ang), cdt) + xp.astype(xp.sin(ang), cdt) * 1j
        mj = fac[:, None, :] * xp.asarray(onehot, dtype=cdt, device=dev)[None, :, :]  # (F, s, k)
        if e is None:
            e = mj
        else:
            f = int(e.shape[0])
            e = xp.reshape(
                e[:, :, None, :, None] * mj[:, None, :, None, :],
                (f, int(e.shape[1]) * s, int(e.shape[2]) * k),
            )
    # e: (F, S, P) with S, P flattened in C order, like the kernel's taps
    return apply_tap_phases(e, kg, spec, xp)


def _squeeze_single_group(blocks: Any, spec: ConvSpec) -> Any:
    return blocks[..., 0, :, :] if spec.groups == 1 else blocks


def symbols(
    kernel: Any,
    n: Any = None,
    stride: Any = 1,
    *,
    frequencies: Any = None,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    method: str = "lfa",
    memory_limit: Any = None,
    xp: Any = None,
) -> Any:
    r"""Symbol blocks of a (strided, dilated, grouped) convolution.

    Implements the LFA symbol of van Betteray et al. (crystal form for strides), which
    on the periodic grid equals the polyphase blocks of Senderovich et al., Theorem 2,
    eq. (9), and for stride 1 Sedghi et al.'s Theorem 6 transform (conjugated: convsv
    uses ``e^{+i theta a}`` so that blocks map input DFTs to output DFTs).

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` for ``layout="oihw"`` or ``(*k, c_in/groups, c_out)``
        for ``"hwio"``; 1-3 spatial axes.
    n : int or tuple of int, optional
        Input size. Required without ``frequencies``: then the symbols are returned on
        the whole coarse grid ``theta_j = 2 pi w_j / m_j``, ``w_j = 0..m_j-1``,
        ``m = n / stride``.
    stride, dilation : int or tuple of int
    frequencies : array, optional
        Real frequencies ``theta`` of shape ``(*freq_shape, d)`` (any values; the symbol
        is ``2 pi``-periodic in each). The infinite-lattice symbol; ``n`` is then unused.
    groups : int
    layout : {"oihw", "hwio"}
    method : {"lfa", "fft"}
        ``"lfa"`` evaluates the taps directly (any frequencies); ``"fft"`` uses the FFT of
        the wrapped polyphase kernel (grid only).
    memory_limit : float or str, optional
        Byte budget for the blocks and their intermediates (default 1 GiB; strings such
        as ``"4GiB"`` accepted). Checked before anything is allocated.
    xp : namespace, optional

    Returns
    -------
    array
        Complex blocks of shape ``(*freq_shape, c_out, s^d * c_in)`` (``freq_shape = m``
        on the grid), or ``(*freq_shape, groups, c_out/groups, s^d * c_in/groups)`` for
        ``groups > 1``. Columns are ordered ``(c, r_1, ..., r_d)``. C-contiguous.
    """
    check_choice(method, "method", ("lfa", "fft"))
    memory_limit = parse_memory_limit(memory_limit)
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    d = k.ndim - 2
    if frequencies is None:
        if n is None:
            msg = "symbols needs n (the input size) or frequencies (an array (..., d))"
            raise ValueError(msg)
        spec = conv_spec(k, n, stride, dilation, groups)
        require_divisible(spec)
        _check_symbol_memory(
            spec, math.prod(spec.m), xp, k.dtype, memory_limit, padded=method == "fft"
        )
        if method == "fft":
            from .fft import fft_symbols

            blocks = fft_symbols(grouped(k, spec, xp), spec, xp, half=False)
        else:
            blocks = grid_symbols(grouped(k, spec, xp), spec, [np.arange(m) for m in spec.m], xp)
        return as_result(_squeeze_single_group(blocks, spec))
    if method != "lfa":
        msg = "method='fft' evaluates the grid only; use method='lfa' with frequencies"
        raise ValueError(msg)
    spec = (
        conv_spec(k, 1 if n is None else n, stride, dilation, groups)
        if n is not None
        else conv_spec(k, normalize_tuple(stride, "stride", d), stride, dilation, groups)
    )
    theta = to_namespace(frequencies, xp, name="frequencies", device=device_of(k))
    if (
        not xp.isdtype(theta.dtype, ("real floating", "integral"))
        or theta.ndim < 1
        or int(theta.shape[-1]) != d
    ):
        msg = (
            f"frequencies must be a real array of shape (..., {d}) (one angle per "
            f"spatial axis), got shape {tuple(theta.shape)} and dtype {theta.dtype}"
        )
        raise ValueError(msg)
    fshape = tuple(int(v) for v in theta.shape[:-1])
    _check_symbol_memory(spec, math.prod(fshape), xp, k.dtype, memory_limit, padded=False)
    blocks = point_symbols(grouped(k, spec, xp), spec, xp.reshape(theta, (-1, d)), xp)
    blocks = xp.reshape(blocks, (*fshape, *blocks.shape[1:]))
    return as_result(_squeeze_single_group(blocks, spec))


def _check_symbol_memory(
    spec: ConvSpec, n_freq: int, xp: ModuleType, dtype: Any, memory_limit: float, *, padded: bool
) -> None:
    """Blocks of :func:`symbols` and their intermediates, before any of them exists.

    The result and the frequency-major copy made from the contraction (2 blocks' worth),
    the tap-phase matrix ``(F, s^d, k^d)`` (built in complex128 on the host, then copied
    to the kernel's namespace and precision; the per-axis products overlap the finished
    matrix at most once), and for the FFT path the polyphase kernel, its complex copy and
    the transform's workspace, counted in complex128 (NumPy's pocketfft transforms
    complex64 in double: 6 blocks at its peak). Measured peaks (tracemalloc,
    tests/test_lfa.py) stay below the sum.
    """
    cbytes = itemsize(xp, complex_dtype(xp, dtype))
    entries = spec.c_out * (spec.c_in // spec.groups) * spec.phases
    block = entries * cbytes
    taps = n_freq * spec.phases * math.prod(spec.k)
    nbytes = 2 * n_freq * block + taps * (2 * 16 + cbytes)
    if padded:
        nbytes += n_freq * (2 * block + 3 * entries * 16)
    cols = spec.c_in // spec.groups * spec.phases
    check_memory(
        nbytes,
        memory_limit,
        f"{n_freq} symbol blocks of {spec.c_out} x {cols}",
        "raise memory_limit, or ask for fewer frequencies (frequencies=...)",
        alternative="evaluate fewer frequencies at a time (frequencies=...), or use "
        "convsv.singular_values / operator_norm, which work in chunks",
    )
