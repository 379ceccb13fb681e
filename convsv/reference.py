"""The papers' published reference code, verbatim, for comparisons and benchmarks.

These are *not* convsv's implementation; they are kept to show where they are right
and where they are not (tests) and to measure convsv against them (benchmarks).
Kernels are in the papers' ``(k, k, c_in, c_out)`` layout, NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lfa_singular_values", "sedghi_clip_operator_norm", "sedghi_singular_values"]


def sedghi_singular_values(kernel: np.ndarray, input_shape: tuple[int, int]) -> np.ndarray:
    """Sedghi, Gupta, Long (ICLR 2019), Section 1: the two NumPy lines.

    Returns the ``(n, n, min(c_in, c_out))`` array of per-frequency singular values.
    Correct for stride 1 and ``k <= n``; for ``k > n`` ``fft2`` crops the kernel
    instead of wrapping it around the torus.
    """
    transform_coefficients = np.fft.fft2(kernel, input_shape, axes=[0, 1])
    return np.linalg.svd(transform_coefficients, compute_uv=False)


def sedghi_clip_operator_norm(
    kernel: np.ndarray, input_shape: tuple[int, int], clip_to: float
) -> np.ndarray:
    """Sedghi et al. (ICLR 2019), Section 3: ``Clip_OperatorNorm``, verbatim.

    One clip of the per-frequency singular values followed by a crop to the kernel's
    support; *not* a projection onto the operator-norm ball.
    """
    transform_coefficients = np.fft.fft2(kernel, input_shape, axes=[0, 1])
    U, D, V = np.linalg.svd(transform_coefficients, compute_uv=True, full_matrices=False)
    D_clipped = np.minimum(D, clip_to)
    if kernel.shape[2] > kernel.shape[3]:
        clipped_transform_coefficients = np.matmul(U, D_clipped[..., None] * V)
    else:
        clipped_transform_coefficients = np.matmul(U * D_clipped[..., None, :], V)
    clipped_kernel = np.fft.ifft2(clipped_transform_coefficients, axes=[0, 1]).real
    return clipped_kernel[np.ix_(*[range(d) for d in kernel.shape])]


def lfa_singular_values(kernel: np.ndarray, n: int) -> np.ndarray:
    """van Betteray, Rottmann, Kahl, Algorithm 1 (LFA), re-implemented from the paper.

    Stride 1, PyTorch layout ``(c_out, c_in, k, k)``: the symbol
    ``sum_p K[:, :, p] e^{i theta . p}`` at every frequency of the ``n x n`` grid (all of
    them, no conjugate symmetry), kept in row-major (frequency-major) layout, then one
    batched ``np.linalg.svd(..., compute_uv=False)``.
    """
    k1, k2 = kernel.shape[2:]
    theta = 2 * np.pi * np.arange(n) / n
    e1 = np.exp(1j * np.outer(theta, np.arange(k1)))  # (n, k1)
    e2 = np.exp(1j * np.outer(theta, np.arange(k2)))  # (n, k2)
    symbols = np.ascontiguousarray(np.einsum("ocpq,ap,bq->aboc", kernel, e1, e2))
    return np.linalg.svd(symbols, compute_uv=False)
