r"""Singular values of periodic convolutions through the FFT (Sedghi et al.).

Sedghi, Gupta, Long, *The Singular Values of Convolutional Layers*, ICLR 2019,
Theorem 6 / Section 2.2: the doubly block-circulant matrix of a stride-1 periodic
convolution is block-diagonalised by the 2-D DFT, so its singular values are those of
the ``n^2`` blocks ``P(w) = sum_p K[:, :, p] e^{2 pi i w.p / n}``. For strides the same
holds for the polyphase kernel of :mod:`convsv.polyphase` on the coarse grid.

The paper's published NumPy line ``np.fft.fft2(kernel, input_shape, axes=[0, 1])``
*crops* a kernel larger than the input; the correct operator wraps it around the
torus. Here the kernel is first wrapped (summed modulo ``m``) and then transformed.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ._array_api import complex_dtype
from ._validation import ConvSpec
from .polyphase import grouped_polyphase

__all__ = ["fft_symbols", "polyphase_from_symbols", "polyphase_symbols"]


def fft_symbols(kg: Any, spec: ConvSpec, xp: ModuleType, *, half: bool) -> Any:
    """Grid symbols ``(*m, G, co, ci*s^d)`` of a grouped kernel via ``xp.fft``.

    With ``half`` (real kernels) the last frequency axis holds ``m_d // 2 + 1``
    entries (the others follow by conjugate symmetry). Same phase convention as
    :func:`convsv.lfa.grid_symbols`. C-contiguous.
    """
    pk = grouped_polyphase(kg, spec, xp)  # (G, co, ci*S, *m), wrapped onto the torus
    t = polyphase_symbols(pk, spec, xp, half=half)
    return xp.reshape(t, tuple(int(v) for v in t.shape))  # the frequency-major copy


def polyphase_symbols(pk: Any, spec: ConvSpec, xp: ModuleType, *, half: bool) -> Any:
    """Polyphase kernel ``(G, co, ciS, *m)`` -> symbols ``(*m, G, co, ciS)`` (a view).

    ``half``: real ``pk``, last frequency axis ``m_d // 2 + 1`` long (the rest is the
    conjugate). :func:`polyphase_from_symbols` inverts it.
    """
    axes = tuple(range(3, 3 + spec.d))
    if half:
        # For real data sum x e^{+i...} = conj(sum x e^{-i...}).
        t = xp.conj(xp.fft.rfftn(pk, axes=axes))
    else:
        # ifft with norm="forward" is the unscaled sum with e^{+i...}.
        t = xp.fft.ifftn(xp.astype(pk, complex_dtype(xp, pk.dtype)), axes=axes, norm="forward")
    return xp.permute_dims(t, (*axes, 0, 1, 2))


def polyphase_from_symbols(p: Any, spec: ConvSpec, xp: ModuleType, *, half: bool) -> Any:
    """Inverse of :func:`polyphase_symbols`: ``(*m, G, co, ciS)`` -> ``(G, co, ciS, *m)``.

    With ``half`` the result is real (the Hermitian-symmetric completion is implied).
    """
    d = spec.d
    axes = tuple(range(3, 3 + d))
    t = xp.permute_dims(p, (d, d + 1, d + 2, *range(d)))
    if half:
        return xp.fft.irfftn(xp.conj(t), s=spec.m, axes=axes)
    return xp.fft.fftn(t, axes=axes, norm="forward")
