r"""Projection of convolutional layers onto operator-norm balls (singular value clipping).

Sedghi, Gupta, Long (ICLR 2019), Section 3: the set of periodic convolutions with all
singular values in ``[min_sv, max_sv]`` is, in the Fourier basis, a product over
frequencies of "clip the block's singular values" sets, so the Frobenius-nearest
*full-support* convolution is obtained by clipping every symbol block
(``support="full"``, exact). Keeping the kernel's own ``k^d`` support is a second
constraint: a linear subspace ``B``. The paper alternates the two projections; its
published code does one "clip, inverse FFT, crop" round (:func:`clip_once`), which is not
a projection -- the cropped kernel's norm can stay well above ``max_sv``.

``support="kernel"`` solves ``min ||x - K||_F`` over kernels ``x`` of the original support
whose operator satisfies the bounds, by ADMM on the splitting ``x in B``, ``y in A``,
``x = y`` (Boyd et al. 2011; the ``A`` step is the exact per-frequency clip, the ``B`` step a
mask). With ``min_sv=None`` the clip set ``A`` is convex (an operator-norm ball) and the
iteration converges to the *nearest* such kernel -- the point Dykstra's method also
converges to, while plain alternating projections stop at some feasible point that is in
general farther away. ADMM was chosen over Dykstra's method because it gets there far
faster: on a random 16x16x3x3 kernel at n = 8, clipped to 1, Dykstra's iterates still had
``sigma_max = 1.060`` after 300 iterations, ADMM reached ``1.00017`` in 100. With ``min_sv``
the set is not convex; the same iteration is then a heuristic, and a warning says so if
it does not reach the bounds.

Each iteration costs one batched eigendecomposition of the symbol blocks (the clip) --
after the first ones, while at most half of a block's values need clipping, only a block
subspace-iteration and Rayleigh-Ritz step on the previous iteration's top Ritz vectors
(thin GEMMs, no ``c x c`` Gram; the exact decomposition is redone before every stopping
test, so the result does not depend on it); the rest runs on the blocks too, with
``P_B`` as small GEMMs with the support's phases (no grid FFTs), and the stopping test
bounds the iterate's singular values by Weyl's inequality, or a batched Cholesky of
``max_sv^2 I - G``, instead of an SVD. The returned
kernel's norm is then *certified* (:func:`convsv.norm.periodic_norm`, Rump's Cholesky
test: no spectrum) and rescaled only if the certificate says so. Training loops that clip
every few steps pass the last ``info`` as ``warm_start``: ADMM resumes from its state, and
a kernel that moved little is typically done without a new decomposition (measured: about
one ``singular_values`` of the layer, the certificate being most of it).

Distances are those of the operators (Frobenius); for kernels whose taps collide on
the torus (``k > n``) the returned kernel is the minimum-norm one among those giving
the same operator. Strided layers work through the polyphase blocks (Senderovich et
al. 2022, Theorem 2), grouped layers per group; see :func:`convsv.tt.clip` for TT layers.
"""

from __future__ import annotations

import math
import operator
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from types import ModuleType
from typing import Any

import array_api_compat.numpy
import numpy as np
from array_api_compat import is_array_api_obj

from ._array_api import as_result, complex_dtype, device_of, itemsize, real_dtype
from ._backends import (
    assign_inplace,
    batched_svdvals,
    cholesky_succeeds,
    default_memory_limit,
    detached,
    map_chunks,
    n_workers,
    single_threaded,
)
from ._progress import Progress, check_progress
from ._validation import (
    ConvSpec,
    check_choice,
    check_memory,
    conv_spec,
    grouped,
    parse_memory_limit,
    prepare_kernel,
)
from .fft import polyphase_from_symbols, polyphase_symbols
from .polyphase import (
    axis_phase_matrix,
    grouped_polyphase,
    merge_phases,
    split_phases,
    tap_phase_offset,
)

__all__ = ["ClipInfo", "ClipState", "ClipWarning", "clip", "clip_", "clip_once"]

#: columns a subspace step keeps beyond the clipped count (:meth:`_Layer.clip_above`)
_SUBSPACE_SPARE = 8


class ClipWarning(UserWarning):
    """The kernel-support projection stopped before the bound held to ``tol``."""


@dataclass(frozen=True)
class ClipInfo:
    """What :func:`clip` achieved.

    Attributes
    ----------
    converged : bool
        ``support="kernel"``: ADMM met its stopping rule -- its iterate was within ``tol``
        (relative) of the bounds and its dual residual below ``tol`` times the kernel's
        norm, so the result is within about ``tol`` of the nearest kernel -- *and* the
        returned kernel's smallest singular value is ``>= min_sv (1 - tol)`` (exactly
        ``>= min_sv`` to rounding wherever one rescaling fits both bounds).
        ``support="full"``: the same for the exact projection. ``False`` comes with a
        :class:`ClipWarning`. Either way ``max_sv`` holds: the returned kernel's norm is
        verified in its own precision (see :func:`clip`).
    iterations : int
        ADMM iterations run: projections onto the clip set, each one batched decomposition
        of the symbol blocks (0 when a ``warm_start`` already met the stopping rule; 1 for
        ``support="full"``).
    max_sv, min_sv : float
        Extreme singular values of the returned kernel's operator, as computed in its
        precision (``max_sv`` is below the requested bound by at least the error margin).
        ``support="kernel"`` without ``min_sv``: ``max_sv`` is the top singular value of
        the certificate's winning block (:func:`convsv.norm.periodic_norm`, float64), and
        ``min_sv`` is ``nan`` (not computed: no spectrum is needed to prove the bound).
    distance : float
        Frobenius distance between the original and the returned operators, relative
        to the original's.
    state : ClipState or None
        ``support="kernel"``: the ADMM's final state, for ``clip(..., warm_start=info)``
        (holds two arrays of the kernel's size on the coarse grid; drop the info to free
        them).
    """

    converged: bool
    iterations: int
    max_sv: float
    min_sv: float
    distance: float
    state: ClipState | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, eq=False)
class ClipState:
    """Where ``support="kernel"``'s ADMM stopped, to warm-start the next clip of the layer.

    Opaque; held by :attr:`ClipInfo.state` and used by ``clip(..., warm_start=info)``. On the
    kernel's device: the Douglas-Rachford variable ``s`` and its projection ``y`` onto the
    clip set (``None``: recompute), both as lists of chunks of symbol blocks (in all, the
    size of the kernel on the coarse grid), and the input's support taps ``z0``; then
    ``rho``, the bounds they were computed for and the layer they belong to; ``yt``, ``st``:
    ``P_B`` of ``y`` and ``s`` (small, cached).
    """

    s: Any
    y: Any
    rho: float
    hi: float
    lo: float | None
    z0: Any
    key: tuple = ()
    #: ``P_B`` of ``y`` and of ``s`` at the support taps (``None``: recompute): a warm
    #: start's first ``x`` then needs no pass over the blocks.
    yt: Any = None
    st: Any = None
    #: the last clip-set projection's top Ritz vectors per chunk (``None``: none yet), so
    #: that a resumed or warm-started run takes subspace steps at once
    basis: list | None = None


class _Layer:
    """Symbol <-> polyphase-kernel transforms of one layer on the coarse torus."""

    def __init__(self, kg: Any, spec: ConvSpec, xp: ModuleType) -> None:
        self.spec, self.xp = spec, xp
        self.real = not xp.isdtype(kg.dtype, "complex floating")
        self.cdt = complex_dtype(xp, kg.dtype)
        self.dtype = kg.dtype
        self.memory_limit: float | None = None  # the call's budget (None: the default)
        self.device = device_of(kg)
        dev = device_of(kg)
        self.q = [
            xp.asarray(axis_phase_matrix(k, s, dl, m), dtype=kg.dtype, device=dev)
            for k, s, dl, m in zip(spec.k, spec.stride, spec.dilation, spec.m)
        ]
        self.ci = int(kg.shape[2])
        # tap counts are real: comparing complex counts (complex kernels) fails on torch
        ones = xp.ones((1, 1, self.ci, *spec.k), dtype=real_dtype(xp, kg.dtype), device=dev)
        self.counts = grouped_polyphase(ones, spec, xp)  # (1, 1, ciS, *m): taps per position
        # 1 / count where a tap lands, 0 elsewhere: positions no tap uses drop out of
        # to_kernel (their symbols' content is not part of any kernel with this support)
        mask = xp.astype(self.counts > 0, kg.dtype)
        self.inv_counts = mask / xp.where(self.counts > 0, self.counts, 1.0)

    def symbols(self, z: Any) -> Any:
        """``(G, co, ciS, *m)`` polyphase kernel -> ``(*m, G, co, ciS)`` blocks.

        Real kernels keep only the half spectrum along the last axis (the rest is its
        conjugate, and clipping commutes with conjugation).
        """
        return polyphase_symbols(z, self.spec, self.xp, half=self.real)

    def symbols_shape(self) -> tuple[int, ...]:
        """Frequency axes of :meth:`symbols` (half spectrum on the last axis, real kernels)."""
        m = self.spec.m
        return (*m[:-1], m[-1] // 2 + 1) if self.real else tuple(m)

    def kernel_grid(self, p: Any) -> Any:
        """Inverse of :meth:`symbols`."""
        return polyphase_from_symbols(p, self.spec, self.xp, half=self.real)

    def _chunk_bounds(self, f0: int) -> list[tuple[int, int]]:
        """Where :meth:`_chunks` splits a leading axis of length ``f0``."""
        parts = max(1, min(f0, 4 * n_workers(self.xp, self.device)))
        step = -(-f0 // parts)
        return [(i, min(i + step, f0)) for i in range(0, f0, step)]

    def _chunks(self, blocks: Any) -> list[Any]:
        return [blocks[a:e, ...] for a, e in self._chunk_bounds(int(blocks.shape[0]))]

    def clip_symbols(self, z: Any, lo: float | None, hi: float) -> tuple[Any, float]:
        """Project every symbol block ``(..., co, ciS)`` onto ``{lo <= sigma <= hi}``.

        (Frobenius-nearest.) Returns the projected blocks and the largest singular value of
        ``z``'s blocks (a by-product of the decompositions).
        """
        xp = self.xp

        def svd_clip(b: Any) -> tuple[Any, float]:
            u, s, vh = xp.linalg.svd(b, full_matrices=False)
            top = float(xp.max(s))
            s = xp.clip(s, min=lo, max=hi)
            return (u * xp.astype(s, self.cdt)[..., None, :]) @ vh, top

        def gram_clip(b: Any) -> tuple[Any, float]:
            # Only an upper bound: B <- B - V_k (1 - hi/sigma)_+ V_k^H B (or B V_k ... V_k^H)
            # with (sigma^2, V) from the eigh of the smaller Gram matrix, V_k the eigenvectors
            # of the values above hi (ascending order: the last k columns; two GEMMs of width
            # k instead of c); those of the unclipped (small) values drop out, so the Gram's
            # loss of small-value accuracy is harmless.
            rows, cols = int(b.shape[-2]), int(b.shape[-1])
            bh = xp.conj(xp.matrix_transpose(b))
            left = rows <= cols
            lam, v = xp.linalg.eigh(b @ bh if left else bh @ b)
            sig = xp.sqrt(xp.clip(lam, min=0.0))
            top = float(xp.max(sig))
            above = int(xp.max(xp.sum(xp.astype(sig > hi, xp.int32), axis=-1)))
            if above == 0:
                return b, top
            side = int(sig.shape[-1])
            sig, v = sig[..., side - above :], v[..., side - above :]
            shrink = xp.where(sig > hi, 1.0 - hi / xp.where(sig > hi, sig, 1.0), 0.0)
            vs = v * xp.astype(shrink, self.cdt)[..., None, :]
            vh = xp.conj(xp.matrix_transpose(v))
            return (b - vs @ (vh @ b), top) if left else (b - (b @ vs) @ vh, top)

        one = gram_clip if not lo else svd_clip
        parts = map_chunks(one, self._chunks(z), xp, device=self.device)
        blocks = [p[0] for p in parts]
        top = max(p[1] for p in parts)
        return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0), top

    def clip_above(
        self, z: Any, hi: float, basis: list[Any] | None
    ) -> tuple[Any, float, list, bool]:
        """:meth:`clip_symbols` without ``min_sv``, by subspace steps where they pay.

        ``z``: the blocks, or a list of chunks of them (then the result is such a list).
        ``basis`` (per chunk of :meth:`_chunks`, or of the list: ``(F, r, p)`` orthonormal
        columns, or ``None``) holds the previous call's top Ritz vectors of each block's
        smaller Gram matrix ``G``. A chunk with a basis takes one block subspace-iteration
        step and a Rayleigh-Ritz projection (``Q = qr(G V)``, ``eigh(Q^H G Q)``): thin
        GEMMs of width ``p`` instead of the ``r x r`` Gram and its full ``eigh`` (clip4's
        measurements, docs/bench_clip.md: after the first ADMM iterations at most ~30% of a
        block's values are above ``max_sv``). Such a step is inexact: a value above
        ``max_sv`` outside the subspace is not clipped, and the Ritz pairs are only near the
        true ones. A chunk whose clipped count reaches into its subspace's spare columns
        (the set grew: values may hide outside) takes the full ``eigh``, and :func:`_admm`
        redoes the exact projection before any stopping test. Returns the blocks, the
        largest (Ritz) singular value, the next basis (``None`` per chunk where a subspace
        would not pay) and whether every
        chunk was decomposed in full (the result is then the exact projection).
        """
        xp, cdt = self.xp, self.cdt
        chunks = list(z) if isinstance(z, list) else self._chunks(z)
        if basis is None or len(basis) != len(chunks):  # none yet, or another split
            basis = [None] * len(chunks)
        basis = [
            v if v is None or int(v.shape[0]) == int(b.shape[0]) else None
            for b, v in zip(chunks, basis)
        ]

        def one(item: tuple[Any, Any]) -> tuple[Any, float, Any, bool]:
            b, v = item
            rows, cols = int(b.shape[-2]), int(b.shape[-1])
            left = rows <= cols
            r = min(rows, cols)
            bh = xp.conj(xp.matrix_transpose(b))
            if v is not None:
                # G V as two thin GEMMs, then the Rayleigh quotient of the orthonormalised
                # block: C^H C with C = B^H Q (or B Q)
                gv = b @ (bh @ v) if left else bh @ (b @ v)
                q, _ = xp.linalg.qr(gv)
                c = bh @ q if left else b @ q
                lam, w = xp.linalg.eigh(xp.conj(xp.matrix_transpose(c)) @ c)
                sig = xp.sqrt(xp.clip(lam, min=0.0))
                p = int(sig.shape[-1])
                above = int(xp.max(xp.sum(xp.astype(sig > hi, xp.int32), axis=-1)))
                if above + _SUBSPACE_SPARE // 2 <= p:
                    vecs = q @ w
                else:  # the clipped set grew into the subspace's margin
                    v = None
            if v is None:
                lam, vecs = xp.linalg.eigh(b @ bh if left else bh @ b)
                sig = xp.sqrt(xp.clip(lam, min=0.0))
                above = int(xp.max(xp.sum(xp.astype(sig > hi, xp.int32), axis=-1)))
            top = float(xp.max(sig))
            side = int(sig.shape[-1])
            # (a subspace step yields at most its own width: when the clipped count grew,
            # the next basis keeps all of it and the next step's check decides)
            p_next = above + max(_SUBSPACE_SPARE, above // 4)
            nxt = vecs[..., max(0, side - p_next) :] if 2 * p_next <= r else None
            if above == 0:
                return b, top, nxt, v is None
            sig, vk = sig[..., side - above :], vecs[..., side - above :]
            shrink = xp.where(sig > hi, 1.0 - hi / xp.where(sig > hi, sig, 1.0), 0.0)
            vs = vk * xp.astype(shrink, cdt)[..., None, :]
            vh = xp.conj(xp.matrix_transpose(vk))
            return (b - vs @ (vh @ b) if left else b - (b @ vs) @ vh), top, nxt, v is None

        parts = map_chunks(one, list(zip(chunks, basis)), xp, device=self.device)
        blocks = [p[0] for p in parts]
        top = max(p[1] for p in parts)
        if not isinstance(z, list):
            blocks = blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=0)
        return blocks, top, [p[2] for p in parts], all(p[3] for p in parts)

    def clip_blocks(self, z: Any, lo: float | None, hi: float) -> tuple[Any, float]:
        """:meth:`clip_symbols` of a polyphase kernel's symbols, back on the grid."""
        blocks, top = self.clip_symbols(self.symbols(z), lo, hi)
        return self.kernel_grid(blocks), top

    def norm_below(self, blocks: Any, bound: float) -> bool:
        """Whether every block's largest singular value is below ``bound``.

        A stopping test in the working precision, not a certificate: Cholesky of
        ``bound^2 I - G`` (``G`` the smaller Gram block) succeeds. A GEMM and a Cholesky per
        block instead of an SVD.
        """
        xp = self.xp

        def one(b: Any) -> bool:
            rows, cols = int(b.shape[-2]), int(b.shape[-1])
            bh = xp.conj(xp.matrix_transpose(b))
            gram = b @ bh if rows <= cols else bh @ b
            r = min(rows, cols)
            eye = xp.eye(r, dtype=gram.dtype, device=self.device)
            shifted = xp.reshape(bound**2 * eye - gram, (-1, r, r))
            return bool(xp.all(cholesky_succeeds(shifted, xp)))

        return all(map_chunks(one, self._chunks(blocks), xp, device=self.device))

    def extreme_block_svs(self, blocks: Any) -> tuple[float, float]:
        xp = self.xp
        parts = map_chunks(
            lambda b: batched_svdvals(b, xp), self._chunks(blocks), xp, device=self.device
        )
        return (max(float(xp.max(p)) for p in parts), min(float(xp.min(p)) for p in parts))

    def support_positions(self) -> np.ndarray:
        """Coarse-grid positions (flat, C order) that some polyphase channel's taps use."""
        ones = np.ones((1, 1, self.ci, *self.spec.k))
        counts = np.asarray(grouped_polyphase(ones, self.spec, array_api_compat.numpy))
        return np.flatnonzero((counts > 0).reshape(counts.shape[2], -1).any(axis=0))

    def kernel_from_taps(self, taps: Any) -> Any:
        """:meth:`to_kernel` of the grid kernel with these support taps ``(T, G, co, ciS)``.

        A gather instead of the grid: kernel tap ``p`` of input channel ``c`` reads column
        ``(c, phase(p))`` at its coarse position, divided by the number of taps colliding
        there (the minimum-norm split, as :meth:`to_kernel`).
        """
        xp, spec, d = self.xp, self.spec, self.spec.d
        n_t, g, co, cis = (int(v) for v in taps.shape)
        phases = spec.phases
        axes = [tap_phase_offset(k, s, dl) for k, s, dl in zip(spec.k, spec.stride, spec.dilation)]
        idx = np.meshgrid(*[np.arange(k) for k in spec.k], indexing="ij")
        phase = np.ravel_multi_index(
            tuple(axes[j][0][idx[j]] for j in range(d)), spec.stride
        ).ravel()
        where = np.ravel_multi_index(
            tuple(axes[j][1][idx[j]] % spec.m[j] for j in range(d)), spec.m
        ).ravel()
        row = np.searchsorted(self.support_positions(), where) * phases + phase
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        weight = 1.0 / counts[inverse.ravel()]
        t = xp.reshape(taps, (n_t, g, co, cis // phases, phases))
        t = xp.reshape(xp.permute_dims(t, (0, 4, 1, 2, 3)), (n_t * phases, -1))
        t = xp.take(t, xp.asarray(row, device=self.device), axis=0)
        if weight.min() < 1.0:
            t = t * xp.asarray(weight[:, None], dtype=t.dtype, device=self.device)
        t = xp.reshape(t, (*spec.k, g, co, cis // phases))
        return xp.permute_dims(t, (d, d + 1, d + 2, *range(d)))

    def tap_transforms(self) -> tuple[Any, Any, Any, Any]:
        """Symbols of the support's taps, and back, as small GEMMs instead of grid FFTs.

        ``B``'s kernels live on ``T`` coarse-grid positions (those any polyphase channel
        uses): ``E`` ``(F, T)`` maps taps ``(T, G co ciS)`` to the blocks :meth:`symbols`
        gives, ``Einv`` ``(T, F)`` maps blocks to the grid kernel's values at those
        positions (real part, conjugate frequencies weighted twice, for real kernels), so
        ``mask * Einv @ S`` is the support projection ``P_B`` of the kernel with symbols
        ``S``. Returns ``E, Einv``, the ``(T, 1, 1, ciS)`` mask and the one-hot ``(M, T)``
        grid placement.
        """
        xp, spec = self.xp, self.spec
        d, m = spec.d, spec.m
        ones = np.ones((1, 1, self.ci, *spec.k))
        counts = np.asarray(grouped_polyphase(ones, spec, array_api_compat.numpy))
        grid = (counts > 0).reshape(counts.shape[2], -1)  # (ciS, M), as self.mask
        pos = np.flatnonzero(grid.any(axis=0))  # union support, C order
        coords = np.stack(np.unravel_index(pos, m), axis=1)  # (T, d)
        last = m[-1] // 2 + 1 if self.real else m[-1]
        freqs = np.stack(
            np.meshgrid(*[np.arange(v) for v in m[:-1]], np.arange(last), indexing="ij"), axis=-1
        ).reshape(-1, d)  # (F, d)
        phase = 2 * np.pi * (freqs / np.asarray(m)) @ coords.T  # (F, T)
        e = np.exp(1j * phase)
        w = np.ones(len(freqs))
        if self.real:  # frequencies with a conjugate partner outside the half spectrum
            kd = freqs[:, -1]
            w = np.where((kd == 0) | (2 * kd == m[-1]), 1.0, 2.0)
        einv = (np.conj(e) * w[:, None]).T / math.prod(m)  # (T, F)
        onehot = np.zeros((math.prod(m), len(pos)))
        onehot[pos, np.arange(len(pos))] = 1.0
        tmask = grid[:, pos].T[:, None, None, :]  # (T, 1, 1, ciS)
        dev = self.device
        return (
            xp.asarray(e, dtype=self.cdt, device=dev),
            xp.asarray(einv, dtype=self.cdt, device=dev),
            xp.asarray(tmask, dtype=self.dtype, device=dev),
            xp.asarray(onehot, dtype=self.dtype, device=dev),
        )

    def extreme_svs(self, z: Any) -> tuple[float, float]:
        return self.extreme_block_svs(self.symbols(z))

    def to_kernel(self, z: Any) -> Any:
        """Minimum-norm support-``k`` kernel ``(G, co, ci, *k)`` of a polyphase kernel."""
        xp, spec, d = self.xp, self.spec, self.spec.d
        g, co, cis = (int(v) for v in z.shape[:3])
        t = xp.reshape(z * self.inv_counts, (g, co, cis // spec.phases, *spec.stride, *spec.m))
        for j, qj in enumerate(self.q):
            t = xp.tensordot(t, qj, axes=([3, 3 + (d - j)], [1, 2]))
        return t

    def full_kernel(self, z: Any) -> Any:
        """Full-support kernel ``(G, co, ci, *n)`` (dilation 1) of a polyphase kernel."""
        return merge_phases(z, self.spec, self.xp)

    def full_polyphase(self, kern: Any) -> Any:
        """Inverse of :meth:`full_kernel` (a permutation: no rounding)."""
        return split_phases(kern, self.spec, self.xp)


def _admm(
    layer: _Layer,
    z0: Any,
    lo: float | None,
    hi: float,
    iterations: int,
    tol: float,
    norm0: float,
    feasible: Any,
    bar: Progress,
    warm: ClipState | None,
    defer: bool,
) -> tuple[Any, bool | None, int, ClipState]:
    """Nearest kernel-support point of the clip set by ADMM (scaled form, Boyd et al. 2011).

    ``min 1/2 ||x - z0||^2`` over ``x`` in the support subspace ``B`` and ``y`` in the clip
    set ``A`` with ``x = y``, run in the order ``y <- P_A(s)``, ``u <- s - y``,
    ``x <- P_B((z0 + rho (y - u)) / (1 + rho))``, ``s <- s + alpha (x + u - s)`` (over-relaxed
    Douglas-Rachford form, Boyd et al. Sec. 3.4.3). In this order ``(y, rho u)`` satisfy
    their optimality conditions exactly, and the only residuals are ``x - y`` (primal) and
    the dual residual ``rho ||P_B(x - y)||`` of the ``x`` step. Stops when the latter is
    below ``tol ||z0||`` and ``x`` meets the bounds to ``tol``: by Weyl's inequality every
    block of ``x`` has its singular values within ``max_theta ||X(theta) - Y(theta)||_F`` of
    ``y``'s, which lie in ``[min_sv, max_sv]`` -- a GEMM, no SVD; only when that bound is too
    loose is the iterate checked directly (at most every few iterations): by a Cholesky of
    ``(max_sv (1 + tol))^2 I - G`` per block without ``min_sv``, else by its extreme
    singular values.

    ``warm`` (a previous run's state) starts from its ``(y, u, rho)``: for the same bounds the
    first ``x`` needs no decomposition (and, with the state's cached taps ``yt``, ``st``, no
    pass over the blocks), so a kernel that barely moved is done at once unless the
    residuals say otherwise. With ``defer``, the first check is left to the caller, whose
    certificate (or SVD) of the returned kernel decides (``None``: pending), and without it
    the first check waits ``check_every`` iterations (a resumed run: ``x`` was just checked).
    Returns ``x`` (support taps ``(T, G, co, ciS)``, see :meth:`_Layer.kernel_from_taps`),
    whether the rule was met, the number of clip-set projections (per-frequency
    decompositions) run, and the state.
    """
    xp = layer.xp
    # over-relaxation 1.6, rho in [3, 10] from how far the kernel is above max_sv, doubled
    # while only the bounds lag: on random 16..64-channel layers clipped from 1.3x..4x their
    # bound (tol=1e-2), 8-36 projections vs 20-45 (plus an SVD every 5) for the former
    # rho=30 x-first iteration, at the same distance to the exact projection (3e-3..1.3e-2
    # relative). min_sv makes the set non-convex: no relaxation there.
    alpha, check_every = (1.6 if lo is None else 1.0), 5
    last_full = -check_every if defer else 0
    # The iteration runs on the symbol blocks; only P_B needs the grid, and only at the
    # support's T taps: two (F x T) GEMMs instead of two FFTs of the whole grid per step.
    e_fwd, e_inv, tmask, onehot = layer.tap_transforms()
    d = layer.spec.d
    g, co, cis = (int(v) for v in z0.shape[:3])
    shape_b = (*[int(v) for v in layer.symbols_shape()], g, co, cis)
    n_t = int(e_fwd.shape[1])
    flat = xp.reshape(xp.permute_dims(z0, (*range(3, 3 + d), 0, 1, 2)), (-1, g * co * cis))
    taps0 = xp.reshape(xp.matrix_transpose(onehot) @ flat, (n_t, g, co, cis))

    # The blocks live as chunks (those of _Layer._chunks), each updated by a worker: the
    # per-iteration passes over them (P_B's GEMMs, the update of s) then run in parallel
    # and in cache, and s, y are joined only for the stopping tests and the state.
    bounds = layer._chunk_bounds(shape_b[0])
    sizes = [e - a for a, e in bounds]
    e_fwd = xp.reshape(e_fwd, (*shape_b[:d], n_t))
    e_inv = xp.reshape(e_inv, (n_t, *shape_b[:d]))
    # chunks split the leading frequency axis (the layout _chunks slices)
    flat_f = [
        (
            xp.reshape(e_fwd[a:e, ...], (-1, n_t)),
            xp.reshape(e_inv[:, a:e, ...], (n_t, -1)),
        )
        for a, e in bounds
    ]

    def parallel(fn: Any) -> list[Any]:
        return map_chunks(fn, range(len(bounds)), xp, device=layer.device)

    def split(blocks: Any) -> list[Any]:
        if isinstance(blocks, list):  # a state's chunks: this split, or another's
            if [int(b.shape[0]) for b in blocks] == sizes:
                return blocks
            blocks = join(blocks)
        return [blocks[a:e, ...] for a, e in bounds]

    def join(parts: list[Any]) -> Any:
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)

    def cplx(taps: Any) -> Any:
        return xp.astype(xp.reshape(taps, (n_t, g * co * cis)), layer.cdt)

    def blocks_of(taps: Any) -> list[Any]:
        t = cplx(taps)
        return parallel(lambda i: xp.reshape(flat_f[i][0] @ t, (sizes[i], *shape_b[1:])))

    def to_taps(parts: list[Any]) -> Any:  # P_B, at the support positions
        partial = parallel(lambda i: flat_f[i][1] @ xp.reshape(parts[i], (-1, g * co * cis)))
        t = partial[0]
        for q in partial[1:]:
            t = t + q
        t = xp.real(t) if layer.real else t
        return xp.reshape(t, (n_t, g, co, cis)) * tmask

    def advance(sp: list[Any], x: Any, yp: list[Any]) -> list[Any]:
        # s + alpha (x + u - s) with u = s - y, the blocks of x formed chunk by chunk
        t = cplx(x)
        return parallel(
            lambda i: (
                sp[i] + alpha * (xp.reshape(flat_f[i][0] @ t, (sizes[i], *shape_b[1:])) - yp[i])
            )
        )

    def state(sp: list[Any], yp: Any, yt: Any, st: Any) -> ClipState:
        return ClipState(sp, yp, rho, hi, lo, taps0, yt=yt, st=st, basis=basis)

    # P_B is linear and P_B(blocks_of(x)) = x on B, so the taps st = P_B(s) follow s's
    # updates without a pass over the blocks; with yt = P_B(y), P_B(y - u) = 2 yt - st.
    yp: Any = None
    yt: Any = None
    if warm is None:
        sp, st, rho = blocks_of(taps0), taps0, None
    else:
        sp, rho = split(warm.s), warm.rho
        st = to_taps(sp) if warm.st is None else warm.st
        if warm.y is not None and (warm.hi, warm.lo) == (hi, lo):  # y = P_A(s): reuse it
            yp = split(warm.y)
            yt = to_taps(yp) if warm.yt is None else warm.yt
            # Two ways to re-clip: the original kernel moved (its dual u still fits), or
            # the *clipped* kernel moved (clip_ every few training steps): then the new
            # input is near the old result, whose own projection has a small dual, and the
            # old one (of the size of the distance clipped off) would send ADMM far away.
            # Start from whichever old point the new input is nearer.
            x_old = (warm.z0 + rho * (2 * yt - st)) / (1.0 + rho)
            if _norm(xp, taps0 - x_old) < _norm(xp, taps0 - warm.z0):
                sp, st = yp, yt  # y in A: P_A(y) = y, normal vector 0
                # with no dual to carry over, the old run's rho (doubled while its bounds
                # lagged, up to 40-80) would only slow the new one: x moves 1 / (1 + rho)
                # of the way to the input per step (helper-31: 56-100 iterations where a
                # cold start took 3-4). A kernel that moved a little off the clip set is
                # barely above max_sv: the cold start's rule gives the low end, 3
                rho = 3.0
        elif _norm(xp, taps0 - warm.z0) > 0:
            # an unconverged run's state (it keeps no y = P_A(s)) for another kernel: its
            # dual and its doubled rho belong to the old problem (helper-33: 100 iterations
            # where a cold start took 3). Start as a cold run; the subspace bases still help
            sp, st, rho = blocks_of(taps0), taps0, None
    x, its = taps0, 0
    # the previous projection's top Ritz vectors per chunk (lo is None: convex case only);
    # ``inexact``: y came from a subspace step (see _Layer.clip_above)
    basis: list[Any] | None = None if warm is None else warm.basis
    inexact = False
    while True:
        if yp is None:
            if its == iterations:
                break
            its += 1
            if lo is None:
                yp, top, basis, exact = layer.clip_above(sp, hi, basis)
                inexact = not exact
            else:
                y, top = layer.clip_symbols(join(sp), lo, hi)
                yp = split(y)
            yt = to_taps(yp)
            if rho is None:
                rho = min(10.0, max(3.0, 6.0 * (top / hi - 1.0)))
        x = (taps0 + rho * (2 * yt - st)) / (1.0 + rho)
        # grid norms are tap norms; the dual residual rho ||P_B(x - y)||
        dual = rho * _norm(xp, x - yt)
        if dual <= tol * norm0 and inexact and its < iterations:
            # every stopping test below assumes y = P_A(s) exactly: redo it with full
            # decompositions (counted as a projection) before trusting the residual
            its += 1
            bar.update(1)
            yp, top, basis, _ = layer.clip_above(sp, hi, None)
            inexact = False
            yt = to_taps(yp)
            x = (taps0 + rho * (2 * yt - st)) / (1.0 + rho)
            dual = rho * _norm(xp, x - yt)
        bar.update(1 if its else 0, residual=dual / norm0)
        if dual <= tol * norm0 and not inexact:
            if defer and lo is None:
                # the caller certifies the returned kernel's norm anyway, and that decides
                return x, None, its, state(sp, yp, yt, st)
            sx = blocks_of(x)
            f = math.sqrt(max(parallel(partial(_largest_sq_distance, xp, sx, yp))))
            ok = f <= hi * tol and (not lo or f <= lo * tol)
            if not ok and its - last_full >= check_every:
                if defer:  # the caller computes the returned kernel's SVD anyway
                    return x, None, its, state(sp, yp, yt, st)
                last_full = its
                ok = (
                    layer.norm_below(join(sx), hi * (1 + tol))
                    if lo is None
                    else feasible(*layer.extreme_block_svs(join(sx)))
                )
            if ok:
                return x, True, its, state(sp, yp, yt, st)
            if tol > 0:
                # the dual residual is met but x is still outside the bounds: weight x = y
                # more (never less: a smaller rho shrinks the dual residual without progress
                # and stops early). u = s - y scales with 1/rho, and y = P_A(y + u) still
                # holds.
                rho = rho * 2
                sp = [(a + b) / 2 for a, b in zip(sp, yp)]
                st = (st + yt) / 2
                x = (taps0 + rho * (2 * yt - st)) / (1.0 + rho)
        sp, st = advance(sp, x, yp), st + alpha * (x - yt)
        yp = None
    return x, False, its, state(sp, None, None, st)


def _largest_sq_distance(xp: ModuleType, a: list[Any], b: list[Any], i: int) -> float:
    """Largest squared Frobenius distance of the blocks of chunk ``i`` of ``a`` and ``b``."""
    return float(xp.max(xp.sum(xp.abs(a[i] - b[i]) ** 2, axis=(-2, -1))))


def _norm(xp: ModuleType, a: Any) -> float:
    return math.sqrt(float(xp.sum(xp.abs(a) ** 2)))


def _ungroup(kg: Any, layout: str, xp: ModuleType) -> Any:
    g, co = int(kg.shape[0]), int(kg.shape[1])
    k = xp.reshape(kg, (g * co, *kg.shape[2:]))
    if layout == "hwio":
        d = k.ndim - 2
        k = xp.permute_dims(k, (*range(2, 2 + d), 1, 0))
    return k


def _number(value: Any, name: str) -> float:
    """A real number from a Python/NumPy scalar or a 0-d array or tensor."""
    if isinstance(value, (bool, str, bytes)) or tuple(getattr(value, "shape", ())) != ():
        msg = f"{name} must be a real number (or a 0-d array), got {value!r}"
        raise TypeError(msg)
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"{name} must be a real number (or a 0-d array), got {value!r}"
        raise TypeError(msg) from None


def _huge_exponent(kernel: Any, hi: float) -> int:
    """``e > 0`` when ``kernel``'s entries are so large (>= 2^400) that squares overflow and
    ``kernel * 2^-e`` (entries below 1) and ``max_sv * 2^-e`` are both normal floats; else 0."""
    if not is_array_api_obj(kernel):
        return 0
    try:
        from array_api_compat import array_namespace

        peak = float(array_namespace(kernel).max(abs(kernel)))
    except (TypeError, ValueError):
        return 0
    if not (math.isfinite(peak) and peak >= 2.0**400):
        return 0
    expo = math.frexp(peak)[1]
    return expo if math.ldexp(hi, -expo) > 2.0**-900 else 0


def _check_bounds(max_sv: Any, min_sv: Any) -> tuple[float, float | None]:
    hi = _number(max_sv, "max_sv")
    if not hi > 0:
        msg = f"max_sv must be a positive number, got {max_sv!r}"
        raise ValueError(msg)
    if min_sv is None:
        return hi, None
    lo = _number(min_sv, "min_sv")
    if not 0 <= lo <= hi:
        msg = f"min_sv must be None or a number in [0, max_sv={hi}], got {min_sv!r}"
        raise ValueError(msg)
    return hi, lo


def _check_iterations(iterations: Any) -> int:
    try:
        if isinstance(iterations, bool):
            raise TypeError
        its = operator.index(iterations)
    except TypeError:
        msg = f"iterations must be a positive int, got {iterations!r}"
        raise TypeError(msg) from None
    if its < 1:
        msg = f"iterations must be a positive int, got {iterations!r}"
        raise ValueError(msg)
    return its


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside convsv (clip, clip_ and tt.clip warn)."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == pkg:
        frame, level = frame.f_back, level + 1
    return level


# Allowance, in units of eps * s_max * sqrt(block size), for the rounding of the computed
# extreme singular values (symbol FFT + backward-stable SVD: measured <= 1.1 eps s_max in
# float32 and <= 40 eps s_max in float64 against a dense SVD; this covers both with room).
_MARGIN = 8.0


def _enforce_bounds(
    out: Any, polyphase: Any, layer: _Layer, lo: float | None, hi: float
) -> tuple[Any, float, float, bool, tuple[float, float]]:
    """Scale ``out`` (if needed) so that its operator provably meets ``max_sv``.

    The extreme singular values of the kernel *as returned* (its own precision) are
    computed, and ``err = margin * s_max`` with ``margin = _MARGIN * eps * sqrt(max block
    side)`` bounds their rounding. ``max_sv`` is accepted only if ``s_max + err <= max_sv``;
    otherwise the kernel is scaled down: without ``min_sv`` once, with room for the
    rounding of the scaling (the extremes returned are then the computed ones, scaled);
    with ``min_sv`` it is checked again.
    ``min_sv`` is met to within that rounding (``s_min + 4 err >= min_sv``): it cannot be
    certified strictly when ``min_sv`` is (nearly) ``max_sv``; if it fails, the kernel is
    scaled up as far as ``max_sv`` allows. Returns the kernel, its computed extremes,
    whether ``min_sv`` holds, and the computed extremes of ``out`` as given.
    """
    eps = float(layer.xp.finfo(layer.dtype).eps)
    z = polyphase(out)
    margin = _MARGIN * eps * math.sqrt(max(int(z.shape[1]), int(z.shape[2])))
    extra, scaled_up, first = 1.0, False, None
    for _ in range(8):
        smax, smin = layer.extreme_svs(z)
        first = first or (smax, smin)
        err = margin * smax
        hi_ok = smax + err <= hi
        lo_ok = lo is None or smin + 4 * err >= lo
        if (hi_ok and (lo_ok or scaled_up)) or smax == 0:  # a zero kernel cannot be scaled up
            return out, smax, smin, lo_ok, first
        if hi_ok:  # raise s_min as far as max_sv allows
            t = min(
                lo * (1 + margin) / smin if smin > 0 else math.inf,
                hi / ((smax + err) * (1 + 2 * margin)),
            )
            if not t > 1:
                return out, smax, smin, False, first
            scaled_up = True
        elif lo is None and math.isfinite(smax):
            # One rescaling, no second SVD: the rounding of t * out is entrywise at most
            # eps/2 |t out|, and a convolution dominated entrywise by a nonnegative one has
            # no larger norm, so it adds at most eps/2 t ||sum_p |K'_p| ||_F (K' = the
            # polyphase taps of |out|, colliding ones summed) to t (s_max + err).
            xp = layer.xp
            taps = xp.sum(polyphase(xp.abs(out)), axis=tuple(range(3, z.ndim)))
            a = math.sqrt(float(xp.sum(taps**2)))  # 4 eps a: rounding of a itself covered
            t = hi / ((smax + err) * (1 + 2 * margin) + 4 * eps * a)
            return out * t, smax * t, smin * t, True, first
        else:
            t = hi / ((smax + err) * (1 + 2 * margin * extra))
            extra *= 4
        out = out * t
        z = polyphase(out)
    msg = "clip: could not verify max_sv after rescaling (non-finite kernel?)"
    raise FloatingPointError(msg)


#: Relative width asked of the certificate (:func:`convsv.norm.periodic_norm`): the returned
#: kernel's norm lands in ``[max_sv (1 - ~2 _CERT_RTOL), max_sv]`` when it has to be rescaled.
_CERT_RTOL = 1e-9


def _certify_max(
    out: Any, polyphase: Any, layer: _Layer, hi: float
) -> tuple[Any, float, float, bool, tuple[float, float]]:
    """Scale ``out`` (if needed) so that its operator provably has norm ``<= max_sv``.

    :func:`_enforce_bounds` for ``min_sv=None`` without the spectrum: the certified
    Gram-Cholesky norm of :mod:`convsv.norm` (Rump 2006, Theorem 2.3; a batched Cholesky per
    block instead of an SVD, every rounding bounded a priori) gives ``lower <= ||out|| <=
    upper`` for the kernel as returned (its own precision, evaluated exactly in float64) and
    the top singular value ``value`` of the winning block. ``upper <= max_sv`` is accepted;
    otherwise the kernel is scaled by ``t = max_sv / (upper (1 + 4 eps) + 4 eps a)``, where the
    ``a`` term covers the rounding of ``t * out`` as in :func:`_enforce_bounds`. The smallest
    singular value is not computed (``nan``). Same returns as :func:`_enforce_bounds`.
    """
    from .norm import periodic_norm

    xp = layer.xp
    if not bool(xp.all(xp.isfinite(out))):
        msg = "clip: could not verify max_sv (non-finite kernel)"
        raise FloatingPointError(msg)
    value, cert = periodic_norm(
        out, layer.spec, xp, rtol=_CERT_RTOL, memory_limit=layer.memory_limit
    )
    smax, upper = float(value), float(cert.upper)
    first = (smax, math.nan)
    if upper <= hi:
        return out, smax, math.nan, True, first
    eps = float(xp.finfo(layer.dtype).eps)
    taps = xp.sum(polyphase(xp.abs(out)), axis=tuple(range(3, out.ndim)))
    a = math.sqrt(float(xp.sum(taps**2)))  # 4 eps a: rounding of a itself covered
    t = hi / (upper * (1 + 4 * eps) + 4 * eps * a)
    return out * t, smax * t, math.nan, True, first


def _verify(
    out: Any, polyphase: Any, layer: _Layer, lo: float | None, hi: float
) -> tuple[Any, float, float, bool, tuple[float, float]]:
    """Bounds check of a support-k kernel: a certificate, or the spectrum with ``min_sv``."""
    if lo is None:
        return _certify_max(out, polyphase, layer, hi)
    return _enforce_bounds(out, polyphase, layer, lo, hi)


def _setup(
    kernel: Any,
    n: Any,
    stride: Any,
    dilation: Any,
    groups: Any,
    layout: str,
    xp: Any,
    memory_limit: float | None,
) -> tuple[Any, ConvSpec, ModuleType, _Layer, Any]:
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    memory_limit = default_memory_limit(k, memory_limit)
    spec = conv_spec(k, n, stride, dilation, groups)
    if not spec.divisible:
        msg = (
            f"clip needs n divisible by stride on every axis (the polyphase blocks), got "
            f"n={spec.n}, stride={spec.stride}; choose n a multiple of the stride"
        )
        raise ValueError(msg)
    blocks = math.prod(spec.m) * spec.groups
    co, cis = spec.c_out // spec.groups, spec.c_in // spec.groups * spec.phases
    cb = itemsize(xp, complex_dtype(xp, k.dtype))
    # symbols, U, Vh and the rebuilt blocks
    check_memory(
        2 * blocks * (co * cis + co * co + cis * cis) * cb,
        memory_limit,
        "the per-frequency SVDs of the clip",
        "raise memory_limit",
    )
    kg = grouped(k, spec, xp)
    layer = _Layer(kg, spec, xp)
    layer.memory_limit = memory_limit
    return k, spec, xp, layer, grouped_polyphase(kg, spec, xp)


@single_threaded
def clip(
    kernel: Any,
    n: Any,
    max_sv: float,
    stride: Any = 1,
    *,
    min_sv: float | None = None,
    support: str = "kernel",
    iterations: int = 100,
    tol: float = 1e-2,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    full_output: bool = False,
    memory_limit: float | None = None,
    progress: bool = False,
    warm_start: ClipInfo | None = None,
    xp: Any = None,
) -> Any:
    """Project a convolutional layer onto ``{singular values in [min_sv, max_sv]}``.

    Sedghi et al. 2019, Section 3 (clipping, alternating projections), done as an exact
    per-frequency projection (``support="full"``) or ADMM on the kernel's
    support (``support="kernel"``); strides via Senderovich et al. 2022, Theorem 2.

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` (``"oihw"``) or ``(*k, c_in/groups, c_out)`` (``"hwio"``).
    n : int or tuple of int
        Input size (divisible by ``stride``).
    max_sv : float
        Upper bound for the singular values.
    stride, dilation : int or tuple of int
    min_sv : float, optional
        Lower bound (the constraint set is then not convex).
    support : {"kernel", "full"}
        ``"full"``: exact nearest periodic convolution with the bounds, returned as a
        kernel of spatial size ``n`` (for ``dilation=1``). ``"kernel"``: nearest kernel of
        the original size (and dilation) by ADMM (see the module docstring).
    iterations : int
        Maximum ADMM iterations (``support="kernel"``).
    tol : float
        Accuracy of the ADMM (``support="kernel"``): it stops once its iterate's singular
        values are within ``[min_sv (1 - tol), max_sv (1 + tol)]`` and its dual residual is
        below ``tol`` relative, i.e. ``tol`` governs the distance to the nearest kernel,
        not the bound: ``max_sv`` always holds (see Returns).
    groups : int
    layout : {"oihw", "hwio"}
    full_output : bool
        Also return a :class:`ClipInfo`.
    memory_limit : float, optional
        Byte budget for the per-frequency SVDs. Default: 1 GiB on the host, half the free
        memory of the kernel's GPU on CUDA (torch, CuPy).
    progress : bool, optional
        Show a progress bar over the ADMM iterations on stderr (tqdm if installed), with
        the current dual residual (relative).
    warm_start : ClipInfo, optional
        The ``info`` of an earlier ``support="kernel"`` clip of this layer (same shape,
        dtype, namespace, ``n``, stride, dilation and groups), e.g. before the last few
        training steps: ADMM resumes from its state. With the same bounds, a kernel that
        moved little since is done without a new decomposition when the residuals allow
        (``info.iterations == 0``); the result is the same problem's solution either way.
    xp : namespace, optional

    Returns
    -------
    kernel : array
        A new kernel in the input's layout, dtype and namespace (the input is untouched).
        Its operator norm is ``<= max_sv``, converged or not. ``support="kernel"`` without
        ``min_sv``: the norm of the kernel *as returned* is certified by the Gram-Cholesky
        test of :func:`convsv.norm.periodic_norm` (``lower <= norm <= upper``, every
        rounding bounded; relative width ~1e-9), and unless ``upper <= max_sv`` the kernel
        is scaled by ``max_sv / upper``, with room for the rounding of the scaling itself.
        Otherwise the extreme singular values are computed in the kernel's precision, and
        unless ``s_max`` plus a bound on their rounding (``8 eps sqrt(block side) s_max``) is
        at most ``max_sv``, the kernel is scaled down likewise.
    info : ClipInfo
        Only with ``full_output=True``.

    Warns
    -----
    ClipWarning
        When ``support="kernel"`` stops after ``iterations`` without meeting ``tol``.
    """
    check_choice(support, "support", ("kernel", "full"))
    hi, lo = _check_bounds(max_sv, min_sv)
    check_progress(progress)
    iterations = _check_iterations(iterations)
    if not isinstance(full_output, (bool, np.bool_)):
        msg = f"full_output must be True or False, got {full_output!r}"
        raise TypeError(msg)
    # (None keeps its device-aware default; anything else is parsed here, strings too)
    memory_limit = None if memory_limit is None else parse_memory_limit(memory_limit)
    tol_ = _number(tol, "tol")
    if not tol_ >= 0:
        msg = f"tol must be a non-negative number, got {tol!r}"
        raise ValueError(msg)
    expo = _huge_exponent(kernel, hi) if warm_start is None else 0
    if expo:
        # entries from ~1e154 overflow the Gram blocks' squares (support="full" returned a
        # zero kernel, "kernel" an OverflowError): clip the layer scaled by 2^-expo (exact)
        # to the bounds scaled alike, and scale the result back (exact: it is no larger)
        down = math.ldexp(1.0, -(expo // 2)), math.ldexp(1.0, -(expo - expo // 2))
        got = clip(
            kernel * down[0] * down[1],
            n,
            hi * down[0] * down[1],
            stride,
            min_sv=None if lo is None else lo * down[0] * down[1],
            support=support,
            iterations=iterations,
            tol=tol,
            dilation=dilation,
            groups=groups,
            layout=layout,
            full_output=full_output,
            memory_limit=memory_limit,
            progress=progress,
            xp=xp,
        )
        out, info = got if full_output else (got, None)
        up = math.ldexp(1.0, expo // 2), math.ldexp(1.0, expo - expo // 2)
        out = out * up[0] * up[1]
        if not full_output:
            return out
        return out, replace(
            info,
            max_sv=info.max_sv * up[0] * up[1],
            min_sv=info.min_sv * up[0] * up[1],
            state=None,
        )
    k, spec, xp, layer, z0 = _setup(kernel, n, stride, dilation, groups, layout, xp, memory_limit)
    key = (
        tuple(z0.shape),
        str(z0.dtype),
        type(z0).__module__,
        str(device_of(z0)),
        spec.n,
        spec.stride,
        spec.dilation,
        spec.groups,
    )
    if warm_start is not None:
        state = getattr(warm_start, "state", None)
        if not isinstance(warm_start, ClipInfo) or support != "kernel" or state is None:
            msg = (
                f"warm_start must be the ClipInfo of an earlier clip(support='kernel', "
                f"full_output=True), with support='kernel'; got {type(warm_start).__name__} "
                f"and support={support!r}"
            )
            raise TypeError(msg)
        if state.key != key:
            msg = (
                f"warm_start comes from another layer or setting: it was computed for "
                f"(shape, dtype, namespace, device, n, stride, dilation, groups) = "
                f"{state.key}, this call has {key}"
            )
            raise ValueError(msg)
    if support == "full" and any(dl != 1 for dl in spec.dilation):
        msg = f"support='full' returns a dilation-1 kernel of size n; got dilation={dilation!r}"
        raise ValueError(msg)
    norm0 = math.sqrt(float(xp.sum(xp.abs(z0) ** 2))) or 1.0

    def feasible(smax: float, smin: float) -> bool:
        return smax <= hi * (1 + tol_) and (lo is None or smin >= lo * (1 - tol_))

    verified = None
    if support == "full":
        out = layer.full_kernel(layer.clip_blocks(z0, lo, hi)[0])
        its, ok, state = 1, True, None
        polyphase = layer.full_polyphase
    else:

        def polyphase(kern: Any) -> Any:
            return grouped_polyphase(kern, spec, xp)

        state = None if warm_start is None else warm_start.state
        its, first = 0, True
        with Progress(iterations, "convsv.clip: ADMM iterations", progress) as bar:
            while True:
                z, ok, run, state = _admm(
                    layer, z0, lo, hi, iterations - its, tol_, norm0, feasible, bar, state, first
                )
                its, first = its + run, False
                out = layer.kernel_from_taps(z)
                verified = None
                if ok is not None:
                    break
                # the check that verifies the returned kernel decides ADMM's pending one
                verified = _verify(out, polyphase, layer, lo, hi)
                ok = feasible(*verified[4])
                if ok or its == iterations:
                    break
        state = replace(state, key=key)
    # ADMM's iterate meets the bounds only to tol, and rounding can push any result over:
    # verify the kernel as returned and rescale it where needed (a promised bound holds)
    if verified is None:
        verified = (
            _enforce_bounds(out, polyphase, layer, lo, hi)
            if support == "full"
            else _verify(out, polyphase, layer, lo, hi)
        )
    out, smax, smin, lo_ok, _ = verified
    # min_sv can be met exactly only where one rescaling fits both bounds; otherwise
    # (a non-convex problem) to tol, like ADMM's own stopping rule
    lo_ok = lo_ok or smin >= lo * (1 - tol_) - 4 * _MARGIN * float(xp.finfo(k.dtype).eps) * smax
    ok = ok and lo_ok
    if not ok:
        what = (
            f"ADMM stopped after {its} iterations before reaching tol={tol_}"
            if support == "kernel"
            else "the per-frequency clip"
        )
        values = (
            f"norm {smax:.6g} (max_sv {hi:.6g})"
            if math.isnan(smin)
            else f"singular values in [{smin:.6g}, {smax:.6g}] (bounds [{lo or 0:.6g}, {hi:.6g}])"
        )
        warnings.warn(
            f"clip(support={support!r}): {what}; the returned kernel has {values}, "
            f"rescaled to meet max_sv"
            + ("" if lo_ok else ", and min_sv could not be met by rescaling")
            + ". Raise iterations, loosen tol, or use "
            "support='full'" + ("; with min_sv the problem is not convex" if lo else ""),
            ClipWarning,
            stacklevel=_caller_stacklevel(),
        )
    # the operator's Frobenius norm is sqrt(prod(m)) times the polyphase grid kernel's
    dist = math.sqrt(float(xp.sum(xp.abs(polyphase(out) - z0) ** 2))) / norm0
    result = as_result(xp.astype(_ungroup(out, layout, xp), k.dtype))
    if full_output:
        return result, ClipInfo(ok, its, smax, smin, dist, state)
    return result


@single_threaded
def clip_once(
    kernel: Any,
    n: Any,
    max_sv: float,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    memory_limit: float | None = None,
    xp: Any = None,
) -> Any:
    """One "clip the singular values, inverse FFT, crop to the kernel" step.

    Sedghi et al. 2019, Section 3, ``Clip_OperatorNorm`` -- the published behaviour, for
    users who want it: fast, but *not* a projection (the result's largest singular value
    may remain above ``max_sv``). Equal to the published function for stride 1 and
    ``k <= n``; also handles strides, groups, dilation and (with the minimum-norm crop)
    kernels larger than the input.

    Parameters
    ----------
    kernel, n, max_sv, stride, dilation, groups, layout, xp
        As in :func:`clip`.

    Returns
    -------
    array
        A new kernel of the input's shape and layout.
    """
    hi, _ = _check_bounds(max_sv, None)
    k, _spec, xp, layer, z0 = _setup(kernel, n, stride, dilation, groups, layout, xp, memory_limit)
    z = layer.clip_blocks(z0, None, hi)[0]
    return as_result(xp.astype(_ungroup(layer.to_kernel(z), layout, xp), k.dtype))


def clip_(kernel: Any, n: Any, max_sv: float, stride: Any = 1, **kwargs: Any) -> Any:
    """In-place :func:`clip` (``support="kernel"``): writes the result into ``kernel``.

    For training loops that clip parameters (e.g. ``torch.nn.Parameter``) every few
    steps, as Senderovich et al. 2022 (Sec. 5.2) do every 100 iterations. No autograd
    history is recorded. Returns ``kernel``, or ``(kernel, info)`` with ``full_output=True``
    (pass ``warm_start=info`` at the next clip to resume from its state).
    """
    if not is_array_api_obj(kernel) or isinstance(kernel, (int, float, complex)):
        msg = (
            f"clip_ writes into kernel, so it must be an array or tensor, got "
            f"{type(kernel).__name__}; use convsv.clip for other inputs"
        )
        raise TypeError(msg)
    if kwargs.get("support", "kernel") != "kernel":
        msg = "clip_ keeps the kernel's shape, so support must be 'kernel'"
        raise ValueError(msg)
    new = clip(detached(kernel), n, max_sv, stride, **kwargs)
    if isinstance(new, tuple):
        assign_inplace(kernel, new[0])
        return kernel, new[1]
    assign_inplace(kernel, new)
    return kernel
