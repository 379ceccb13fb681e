r"""Certified operator norm of a periodic layer, without its full spectrum.

The norm of a periodic (strided) layer is the largest singular value over its symbol
blocks ``P_f`` (Sedghi et al. 2019, Theorem 6; Senderovich et al. 2022, Theorem 2). Most
blocks need not be solved: it suffices to *prove* ``lambda_max(G_f) < tau`` for the Gram
block ``G_f = P_f^H P_f`` (the smaller side), and a floating-point Cholesky factorisation
of ``tau I - G_f`` that runs to completion proves it (S. M. Rump, *Verification of
positive definiteness*, BIT 46, 2006, Theorem 2.3; its proof rests on Demmel's backward
error bound ``R^H R = A + dA``, ``|dA| <= gamma_{n+1} |R^H| |R|``). The steps:

1. the Gram blocks of one frequency of each conjugate pair, from the tap autocorrelation
   (:mod:`convsv.gram`; a real kernel's in single precision by one real GEMM over half
   the lags), ranked roughly by a few batched Lanczos steps while still in cache;
2. more Lanczos steps for the few leaders, and the exact top singular value (``svdvals``
   of the symbol block) of the best of them: the candidate value ``L``;
3. a single-precision Cholesky test of every block at ``tau ~ L^2 (1 + rtol)``, after a
   free trace prefilter, with a per-block shift that makes success a proof (Rump's term
   ``gamma (r t - tr H)`` plus the evaluation's rounding; :func:`_cholesky_shifts`);
   the few failures are ranked by more Lanczos steps, one above ``L`` is solved first
   (raising ``L``), the rest tested in double precision, and so on until every block is
   certified below ``tau``.

A caller who knows the level to check (a previous certificate's upper end, for a
weight that has moved a little since: :func:`convsv.torch.spectral_norm` in training)
asks :func:`periodic_norm_below` instead: step 3 alone at ``tau = level^2``, without the
ranking and the SVDs of steps 1-2 (1.6-2x cheaper on ResNet-18's layer shapes).

Every rounding error is bounded a priori (:func:`_error_bounds`): the computed lags
differ from the exact ones by at most ``gamma |K'| |K'|^T`` entrywise (``|K'|`` summed
over taps), their phase sums add ``gamma`` times ``T = sum |R_Delta|`` (whose norm is
computed), the evaluated symbols differ from the exact ones by ``gamma |K'|``, and
Rump's shift covers the Cholesky itself. The lower bound is a Rayleigh quotient
``||P v|| / ||v||`` of the winning block with a top singular vector from two steps of
inverse iteration on its Gram block, rounded down. Certificates are computed in float64
whatever the kernel's precision (a float32 kernel is exact in float64), so
``lower <= ||layer|| <= upper`` holds for the layer the kernel's values define. Those
worst-case bounds set a floor on the interval width, ``info.floor``: ``r^2 eps`` for the
Cholesky of side ``r`` plus the lags' rounding ``~ (c k) eps ||M||_1 ||M||_inf / ||P||^2``
(real kernels); measured certified widths 1.2e-10 (c = 128) and 4.4e-10 (c = 256)
relative, 3x3 random kernels, while the returned value itself agrees with the full
spectrum's maximum to an ulp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import device_of, real_dtype, small_to_host
from ._backends import (
    cholesky_succeeds,
    complex_view,
    detached,
    host_numpy_twin,
    map_chunks,
    n_workers,
    one_thread_math,
)
from ._progress import Progress
from ._validation import DEFAULT_MEMORY_LIMIT, ConvSpec, check_memory
from .gram import _polyphase_taps, gram_autocorrelation, gram_half_lags
from .lfa import point_symbols

__all__ = ["NormInfo", "periodic_norm", "periodic_norm_below"]

_EPS = 2.0**-52  # float64 machine epsilon (twice the unit roundoff: a safety factor of 2)
_TINY = 2.0**-1022
#: Lanczos steps per block for the rough ranking (not part of any certificate). The top
#: eigenvalues of a random layer's blocks differ by ~1%, below what 4-8 steps resolve
#: (the largest block ranked anywhere in the top 80%), so the ranking only picks leaders;
#: smooth (trained-like) kernels are ranked right from 4 steps on.
_LANCZOS_STEPS = 6
#: Blocks solved exactly before the first Cholesky sweep, and per escalation round.
_FIRST_EXACT = 1
#: Bytes of Gram blocks per chunk: evaluated, ranked and later factored while in cache.
_CHUNK_BYTES = 16 * 2**20
#: Blocks the double-precision test cannot tell from the winner are solved too (at most).
_MAX_TIES = 4
#: Leading blocks whose ranking is refined (at least; one per 32 rows of the Gram block,
#: at most 16), and the Lanczos steps that refine it.
_REFINE = 4
_REFINE_STEPS = 24
#: At most this many single-precision failures are refined per round.
_MAX_REFINE = 64
#: Lanczos steps for those (12 steps bring a random block's Ritz value within 1e-3).
_RETRY_STEPS = 16
#: From this rtol on, the leader's refined Ritz value stands in for its SVD (the value
#: returned is then the certificate's proven lower end).
_LOOSE_RTOL = 5e-4


@dataclass(frozen=True)
class NormInfo:
    """Certificate of :func:`convsv.operator_norm` (``full_output=True``).

    Attributes
    ----------
    lower, upper : float
        Proven bounds ``lower <= ||layer||_2 <= upper`` (Python floats, rounded outward).
    method : str
        ``"gram-cholesky"`` (the certified periodic path).
    blocks : int
        Symbol blocks the layer has (after conjugate symmetry, times groups).
    blocks_exact : int
        Blocks whose top singular value was computed (``svdvals``; from ``rtol = 5e-4`` on
        the leader's refined Lanczos value may stand in for it, see
        :func:`periodic_norm`).
    blocks_cholesky : int
        Blocks tested beyond the free trace bound: by the ``O(r^2)`` shifted-Frobenius
        bound, and where that is not enough by a Cholesky factorisation.
    floor : float
        Relative width below which rounding does not let this certificate go: the
        rounding margins above the best value (Cholesky shift, Gram and symbol
        rounding) plus the lower bound's gap below it, or the larger ``tau`` that solved
        blocks needed. The interval satisfies
        ``upper - lower <= max(rtol, floor + rtol / 2) * value`` (up to the few-ulp
        rounding of ``lower``): ``rtol`` spends half its width above the best value,
        and the lower bound, a Rayleigh quotient, can sit up to ``floor`` below it on
        clustered blocks (a near-orthogonal layer: ~1e-12).
    frequency : tuple of int
        Integer grid frequency (coarse grid ``m``) of the winning block.
    group : int
        Group of the winning block.
    """

    lower: float
    upper: float
    method: str
    blocks: int
    blocks_exact: int
    blocks_cholesky: int
    floor: float
    frequency: tuple[int, ...]
    group: int


def _gamma(n: float, eps: float = _EPS) -> float:
    """Higham's ``gamma_n = n eps / (1 - n eps)`` (with ``eps`` = machine epsilon)."""
    t = n * eps
    if t >= 0.5:  # pragma: no cover - blocks of ~10^15 entries
        msg = f"a contraction of length {n} is too long for a float64 certificate"
        raise ValueError(msg)
    return t / (1.0 - t)


def _block_points(spec: ConvSpec, real: bool) -> np.ndarray:
    """Integer grid frequencies ``(F, d)`` (C order) whose blocks hold every singular value.

    For a real kernel ``P(-theta) = conj(P(theta))`` has the same singular values, so of
    each pair ``{w, -w mod m}`` only the first in C order is kept: ``(prod(m) + s) / 2``
    points, ``s`` the self-conjugate ones (10% fewer than halving one axis at m = 16).
    """
    grid = _grid_points([np.arange(m) for m in spec.m])
    if not real:
        return grid
    lin = np.ravel_multi_index(tuple(grid.T), spec.m)
    neg = np.ravel_multi_index(tuple(((-grid) % np.asarray(spec.m)).T), spec.m)
    return grid[lin <= neg]


def _abs_tap_sum(k64: Any, spec: ConvSpec, xp: ModuleType) -> tuple[float, float]:
    """``(||M||_1, ||M||_inf)`` maximised over groups, ``M = sum_a |K'_a|`` (upper bounds).

    ``M[o, (c, r)]`` sums the magnitudes of the taps that the symbol block's entry
    ``(o, (c, r))`` collects; every rounding bound below is a multiple of ``M`` or
    ``M M^T``, and ``||M||_2^2 <= ||M||_1 ||M||_inf``.
    """
    g, co, ci = (int(v) for v in k64.shape[:3])
    t = _polyphase_taps(xp.abs(k64), spec, xp)  # (G, co, ci s^d, A..): one-hot, exact
    t = xp.reshape(t, (g, co, ci * spec.phases, -1))
    m = xp.sum(t, axis=-1)
    norm1 = float(xp.max(xp.sum(m, axis=-2)))
    norminf = float(xp.max(xp.sum(m, axis=-1)))
    # the sums above round; so did M: inflate by far more than their gamma
    grow = 1.0 + _gamma(4 * (math.prod(spec.k) + co + ci * spec.phases) + 16)
    return norm1 * grow, norminf * grow


def _error_bounds(
    k64: Any, t_abs: Any, spec: ConvSpec, xp: ModuleType
) -> tuple[float, float, float]:
    """A priori bounds ``(eps_g, eps_p, eps_g32)`` on ``||G_hat - P^H P||_2``, ``||P_hat - P||_2``.

    ``eps_g`` bounds the Gram blocks evaluated in double precision from the float64 lags
    ``R``, ``eps_g32`` those evaluated in single precision from ``R`` rounded to complex64
    (entrywise ``eps32 |R|``) with complex64 phases and GEMM.

    ``R`` (:func:`convsv.gram.gram_autocorrelation`) is a sum of
    ``len <= width * prod(taps)`` products (``gamma_{len + 2}`` entrywise for a real
    kernel's real GEMM, ``gamma_{2 len + 2}`` for complex arithmetic); every tap pair
    appears in exactly one lag, so ``R``'s error summed over the lags is at most
    ``g_len (M M^T)`` (:func:`_abs_tap_sum`). The lag sum of a block adds
    ``gamma_{2 L + 2}`` plus the phases' rounding, ``(4 pi + 2) eps`` in double, one
    more ``eps32`` each for the phases and ``R`` in single, entrywise times
    ``T = sum_Delta |R_Delta|``: a nonnegative symmetric matrix (``|R_{-Delta}| =
    |R_Delta|^T``), the same for every frequency, whose 2-norm is at most its largest row
    sum (computed here, rounded up; 15-25x below ``||M||_1 ||M||_inf`` for random
    kernels, whose ``M`` is nearly rank one). The Hermitian matrix LAPACK reads from one
    triangle obeys the same entrywise bound. ``P_hat`` from
    :func:`convsv.lfa.point_symbols`: phases ``cos/sin(theta a)`` with ``|theta| <= 2 pi``
    good to ``(6 pi a + 3) eps`` per axis, ``prod(k)`` terms summed: at most ``u_P M``
    entrywise.
    """
    real = not xp.isdtype(k64.dtype, "complex floating")
    co, ci = (int(v) for v in k64.shape[1:3])
    width = max(co, ci * spec.phases)
    taps = math.prod(spec.taps)
    lags = math.prod(2 * a - 1 for a in spec.taps)
    g_len = _gamma((1 if real else 2) * width * taps + 2)
    # twice for the lag sums: real kernels' blocks are evaluated part by part (_Lags),
    # |z| <= |Re z| + |Im z|
    u_lag = 2 * ((4 * math.pi + 2) * _EPS + _gamma(2 * lags + 2))
    phase = (
        sum(
            (6 * math.pi * ((k - 1) * dl // s + 1) + 3) * _EPS
            for k, s, dl in zip(spec.k, spec.stride, spec.dilation)
        )
        + 4 * spec.d * _EPS
    )
    g_p = _gamma(2 * math.prod(spec.k) + 2)
    u_p = g_p + phase * (1 + g_p)
    e32 = float(np.finfo(np.float32).eps)
    g_lag32 = _gamma(2 * lags + 2, e32)
    u_lag32 = 2 * (e32 + (4 * math.pi + 4) * e32 + g_lag32) * (1 + g_lag32) * (1 + e32)
    norm1, norminf = _abs_tap_sum(k64, spec, xp)
    # T (G, r, r) summed in float64 from the float64 lags; the row sums rounded up
    t_rows = max(float(xp.max(xp.sum(t_abs, axis=-1))), float(xp.max(xp.sum(t_abs, axis=-2))))
    t_norm = t_rows * (1 + _gamma(2 * lags + 2 * int(t_abs.shape[-1]) + 8))
    safety = 1.01
    base = g_len * norm1 * norminf
    return (
        safety * (base + u_lag * (1 + g_len) * t_norm),
        safety * u_p * math.sqrt(norm1 * norminf),
        safety * (base + u_lag32 * (1 + g_len) * t_norm),
    )


def _cholesky_threshold(
    tau: Any, r: int, eps_g: Any, eps: float = _EPS, tiny: float = _TINY
) -> Any:
    """Shift ``t``: Cholesky of ``fl(t I - G_hat)`` succeeding proves ``lambda_max(G) < tau``.

    Success gives ``R^H R = B + dB`` with ``||dB||_2 <= g/(1-g) tr(B)`` (Demmel; Rump
    2006, Lemma 2.1 and Theorem 2.3, with ``g = gamma_{2r+4}`` for complex arithmetic),
    so ``lambda_min(B) >= -g/(1-g) tr(B)``; ``B`` differs from ``t I - H`` (``H`` the
    Hermitian matrix of ``G_hat``'s lower triangle, which LAPACK reads) by the rounding of
    the diagonal, ``eps (t + |H_ii|)``, and ``||H - G||_2 <= eps_g``. Passing blocks have
    ``H_ii < t``, so ``tr(B) <= r (tau + eps_g + delta)``. Underflow adds Rump's
    ``n (2n + 2 + max B_ii) eta`` term (bounded generously here).
    """
    g = _gamma(2 * r + 4, eps)
    c = g / (1.0 - g)
    delta = eps * (2.0 * tau + eps_g)
    shift = eps_g + delta + c * r * (tau + eps_g + delta) + 16.0 * r * (2 * r + 2 + tau) * tiny
    # the float64 arithmetic here rounds too; eps >= float64's keeps the factor honest
    return (tau - shift) * (1.0 - 4 * eps)


def _cholesky_shifts(
    tau: float, r: int, eps_g: float, tr_lo: np.ndarray, eps: float, tiny: float
) -> np.ndarray:
    """Per-block shifts ``t``: a Cholesky of ``fl(t I - H)`` that succeeds proves ``G <= tau``.

    As :func:`_cholesky_threshold`, with Rump's ``tr(B)`` taken per block: success gives
    ``lambda_min(B) >= -c tr(B)`` (``c = g / (1 - g)``, ``g = gamma_{2r+4}``) and forces
    every ``H_ii < t``, so ``tr(B) <= (1 + eps) (r t - tr(H))`` with ``tr(H) >= tr_lo``;
    the diagonal's rounding adds ``eps (t + eps_g)``. Hence
    ``lambda_max(G) <= t (1 + c (1 + eps) r + eps) - c (1 + eps) tr_lo + (1 + eps) eps_g
    + under``, and ``t`` is that bound solved for ``tau``, rounded down (float64
    arithmetic) and then down to the working precision (``eps``: float32 or float64).
    The trace term is what lets single precision certify a block 1% below ``tau`` at
    r = 256: Rump's margin is ``c (r t - tr(H))``, not ``c r t``.
    Non-positive entries mean the block cannot be certified at this ``tau``.
    """
    # unit roundoff here: gamma_{2r+4}(u) is still twice the complex Cholesky's textbook
    # gamma_{r+2}(u) (Higham, Sec. 3.6 and Thm. 10.3); in single precision this halves
    # the margin that decides which blocks need a double-precision test
    g = _gamma(2 * r + 4, eps / 2)
    c = g / (1.0 - g)
    under = 16.0 * r * (2 * r + 2 + tau) * tiny
    num = tau - (1 + eps) * eps_g - under + c * (1 + eps) * np.asarray(tr_lo, dtype=np.float64)
    t = num / (1.0 + c * (1 + eps) * r + eps) * (1 - 16 * _EPS) - _TINY
    if eps > _EPS:  # to the working precision, rounding down
        t32 = t.astype(np.float32)
        up = t32.astype(np.float64) > t
        t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
        t = t32.astype(np.float64)
    return t


def _trace_lower(gram: Any, xp: ModuleType) -> Any:
    """``<= tr(H)`` per block, ``H`` the Hermitian matrix of the real diagonal (float64).

    The diagonal entries are exact in float64; their sum rounds by at most
    ``gamma_{r} sum |H_ii|``.
    """
    r = int(gram.shape[-1])
    diag = xp.astype(xp.real(xp.linalg.diagonal(gram)), xp.float64)
    s = xp.sum(diag, axis=-1)
    return s - xp.sum(xp.abs(diag), axis=-1) * (_gamma(r + 4) * 2)


def _lanczos_top(gram: Any, steps: int, xp: ModuleType) -> Any:
    """Largest Ritz value of ``steps`` Lanczos steps on each block (ranking only).

    Batched over the blocks: one matrix-vector product per step (the blocks are still in
    cache from their evaluation) and a full reorthogonalisation as batched products
    against the basis, done twice ("twice is enough": Giraud, Langou, Rozloznik and van
    den Eshof, Numer. Math. 101, 2005). One pass is not: its loss of orthogonality grows
    by ``||G q|| / beta`` per step, and the blocks of a clipped or near-orthogonal layer
    (``G ~ c I`` plus a small spread) lose it within a few steps; the Ritz values then
    left the spectrum, up to 18x above ``lambda_max`` (float32, r = 16), and misranked
    every block. The recurrence runs on ``G - mu I`` (``mu`` the mean diagonal, exact in
    exact arithmetic) so that the cancellation in ``G q - alpha q`` is ``||G - mu I||``'s,
    not ``||G||``'s.
    """
    b, r = int(gram.shape[0]), int(gram.shape[1])
    steps = min(steps, r)
    dev = device_of(gram)
    rdt = real_dtype(xp, gram.dtype)
    rng = np.random.default_rng(12345)
    x0 = rng.standard_normal(r) + 0.5  # a shared start with no symmetric bias
    q = xp.asarray(
        np.broadcast_to(x0 / np.linalg.norm(x0), (b, r)).copy(), dtype=gram.dtype, device=dev
    )
    diag = xp.real(xp.linalg.diagonal(gram))
    mu = xp.sum(diag, axis=-1) / r  # (b,) real
    mu_c = xp.astype(mu, gram.dtype)[:, None]
    # the size of G, for the breakdown test (the shifted residuals can be rounding noise)
    scale = xp.max(xp.abs(diag), axis=-1)
    basis, alphas, betas = [q], [], []
    tol = 64 * float(xp.finfo(rdt).eps)

    def norm(v: Any) -> Any:
        return xp.sqrt(xp.sum(xp.real(v) ** 2 + xp.imag(v) ** 2, axis=-1))

    for j in range(steps):
        w = (gram @ q[..., None])[..., 0] - mu_c * q
        alphas.append(xp.real(xp.sum(xp.conj(q) * w, axis=-1)))
        if j == steps - 1:
            break
        qs = xp.stack(basis, axis=-1)  # (b, r, j + 1)
        qh = xp.conj(xp.matrix_transpose(qs))
        for _ in range(2):
            w = w - (qs @ (qh @ w[..., None]))[..., 0]
        beta = norm(w)
        # breakdown (an invariant subspace, e.g. every block of an orthogonal layer is I):
        # the rest would be rounding noise, with spurious Ritz values; the block's
        # recurrence stops (q = 0, so its later alphas and betas are 0)
        live = beta > tol * scale
        beta = xp.where(live, beta, xp.zeros_like(beta))
        betas.append(beta)
        safe = xp.where(live, beta, xp.full_like(beta, math.inf))
        q = w / xp.astype(safe, gram.dtype)[:, None]
        basis.append(q)
    k = len(alphas)
    eye = xp.eye(k, dtype=xp.float64, device=dev)
    sup = xp.eye(k, k=1, dtype=xp.float64, device=dev)
    t = xp.astype(xp.stack(alphas, axis=-1), xp.float64)[:, :, None] * eye
    if betas:
        bvec = xp.concat(
            [
                xp.astype(xp.stack(betas, axis=-1), xp.float64),
                xp.zeros((b, 1), dtype=xp.float64, device=dev),
            ],
            axis=-1,
        )
        off = bvec[:, :, None] * sup
        t = t + off + xp.matrix_transpose(off)
    return xp.linalg.eigvalsh(t)[:, -1] + xp.astype(mu, xp.float64)


def periodic_norm(
    kg: Any,
    spec: ConvSpec,
    xp: ModuleType,
    *,
    rtol: float | None = None,
    memory_limit: float | None = None,
    progress: bool = False,
) -> tuple[Any, NormInfo]:
    """Certified spectral norm of the periodic layer of the grouped kernel ``kg``.

    Parameters
    ----------
    kg : array
        Grouped kernel ``(G, c_out/G, c_in/G, *k)`` (float32/64, complex64/128).
    spec : ConvSpec
        Geometry; ``n`` divisible by the stride.
    xp : namespace
    rtol : float, optional
        Target relative width of the certified interval; default ``1e-12`` (float64) or
        ``1e-6`` (float32). Below ``info.floor`` the floor applies.
    memory_limit : float, optional
        Byte budget for one chunk of Gram blocks (default 1 GiB).
    progress : bool, optional
        Progress bar over the Gram chunks.

    Returns
    -------
    value : array
        0-d, the kernel's real dtype: the exact top singular value of the winning block
        (differentiable on torch through :func:`convsv.lfa.point_symbols`). From
        ``rtol = 5e-4`` on (no SVD unless a test needs one) the proven lower end of the
        interval, the winning block's Rayleigh quotient; its top singular value when
        the kernel requires grad.
    info : NormInfo
    """
    # small batched LAPACK calls: threaded BLAS only spins (see one_thread_math)
    with one_thread_math():
        return _periodic_norm(kg, spec, xp, rtol=rtol, memory_limit=memory_limit, progress=progress)


def periodic_norm_below(
    kg: Any,
    spec: ConvSpec,
    xp: ModuleType,
    bound: float,
    *,
    memory_limit: float | None = None,
) -> bool:
    """Whether the periodic layer of ``kg`` provably has norm ``<= bound``.

    The check of :func:`periodic_norm` at a level the caller knows -- e.g. the last
    certificate's upper end, for a weight that has moved since but whose norm has barely
    changed (a layer inside training): one Cholesky test of ``tau I - G`` per block at
    ``tau = bound^2`` (after the free trace bound; single precision, then double for the
    blocks the single-precision margin cannot settle), with the same a priori rounding
    bounds and Rump's shifts. No ranking, no SVD: about the cost of the Gram blocks plus
    one factorisation each, against several times that for :func:`periodic_norm`.

    Returns
    -------
    bool
        True: ``||layer||_2 <= bound`` is proven. False: not proven (the norm may be
        above ``bound``, or within the rounding margins below it).
    """
    try:
        level = float(bound)
    except (TypeError, ValueError):
        level = math.nan
    if not (level >= 0.0 and math.isfinite(level)):
        msg = f"bound must be a finite non-negative number, got {bound!r}"
        raise ValueError(msg)
    if not bool(xp.all(xp.isfinite(detached(kg)))):
        msg = "kg must be finite (no nan or inf entries) for a proof of its norm"
        raise ValueError(msg)
    with one_thread_math():
        _, proven = _periodic_norm(
            kg, spec, xp, rtol=None, memory_limit=memory_limit, progress=False, level=level
        )
    return bool(proven)


def _periodic_norm(
    kg: Any,
    spec: ConvSpec,
    xp: ModuleType,
    *,
    rtol: float | None,
    memory_limit: float | None,
    progress: bool,
    level: float | None = None,
    loose_ok: bool = True,
) -> tuple[Any, Any]:
    """:func:`periodic_norm`; with ``level``, :func:`periodic_norm_below`'s test alone,
    returning ``(None, proven)``."""
    rdt = real_dtype(xp, kg.dtype)
    real = not xp.isdtype(kg.dtype, "complex floating")
    if rtol is None:
        rtol = 1e-12 if rdt == xp.float64 else 1e-6
    dev = device_of(kg)
    # the result in the caller's namespace; the certificate where it is cheapest (torch
    # CPU tensors: NumPy, zero-copy; see host_numpy_twin)
    out_xp, out_dev = xp, dev
    k_cert, xp = host_numpy_twin(detached(kg), xp)
    dev = device_of(k_cert)
    k64 = xp.astype(k_cert, xp.float64 if real else xp.complex128)
    g_count = spec.groups
    pts = _block_points(spec, real)
    n_points = int(pts.shape[0])
    n_blocks = n_points * g_count
    # scale by a power of two (exact) so that the Gram blocks neither overflow nor
    # underflow; every bound below is for the scaled layer, multiplied back at the end
    peak = float(xp.max(xp.abs(k64)))
    if peak == 0.0 and level is not None:
        return None, True
    if peak == 0.0:  # the zero operator: nothing to bound
        zero = (
            out_xp.sum(kg * 0)
            if getattr(kg, "requires_grad", False)
            else out_xp.asarray(0.0, dtype=rdt, device=out_dev)
        )
        return out_xp.astype(zero, rdt), NormInfo(
            lower=0.0,
            upper=0.0,
            method="gram-cholesky",
            blocks=n_blocks,
            blocks_exact=0,
            blocks_cholesky=0,
            floor=0.0,
            frequency=(0,) * spec.d,
            group=0,
        )
    expo = -math.frexp(peak)[1]
    # in two exact steps: 2^expo alone overflows for a subnormal peak (expo > 1023)
    k64 = k64 * math.ldexp(1.0, expo // 2) * math.ldexp(1.0, expo - expo // 2)
    co, cw = spec.c_out // g_count, spec.c_in // g_count * spec.phases
    r = min(co, cw)
    input_side = co > cw  # the Gram block is P^H P at -theta (see gram_autocorrelation)

    budget = DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit
    block_bytes = 16 * r * r
    per_point = 4 * block_bytes * g_count  # the blocks, the shifted copy, its factor, slack
    check_memory(per_point, budget, "one frequency of the Gram blocks", "raise memory_limit")
    # chunks of a few MB: each is evaluated, ranked and later factored while it sits in
    # the cache; enough of them to keep every worker busy
    chunk = max(1, min(int(budget // per_point), _CHUNK_BYTES // (block_bytes * g_count)))
    chunk = min(chunk, max(1, -(-n_points // (2 * n_workers(xp)))))
    starts = list(range(0, n_points, chunk))
    keep = 4 * block_bytes * n_blocks <= budget  # keep every Gram block between the sweeps

    # single precision for the bulk (ranking and first test), double for the few blocks
    # near the top
    lags = _Lags(k64, spec, xp, real)
    eps_g, eps_p, eps_g32 = _error_bounds(k64, lags.t_abs, spec, xp)

    def grams(start: int) -> Any:
        return xp.reshape(lags.grams(pts[start : start + chunk], single=True), (-1, r, r))

    def survey(start: int) -> tuple[Any, Any, Any]:
        g32 = grams(start)
        # a test at a given level needs no ranking
        rough = None if level is not None else _lanczos_top(g32, _LANCZOS_STEPS, xp)
        return rough, _trace_lower(g32, xp), (g32 if keep else None)

    with Progress(len(starts), "convsv: Gram blocks", progress) as bar:
        parts = map_chunks(survey, starts, xp, progress=bar)
    rank = None if level is not None else xp.concat([p[0] for p in parts])
    tr32 = xp.concat([p[1] for p in parts])
    cache = [p[2] for p in parts] if keep else None
    del parts
    # tr(G) >= lambda_max(G) for the PSD exact block, a free prefilter: the traces are the
    # symbol of the lags' traces (float64); |G_hat_ii - G_ii| <= eps_g, the sums round too
    e_all = _lag_phases(spec, pts)
    if real:
        tr = xp.asarray(e_all.real.copy(), dtype=xp.float64, device=dev) @ lags.lag_trace
    else:
        tr = xp.real(xp.asarray(e_all, dtype=xp.complex128, device=dev) @ lags.lag_trace)
    cheap = (
        xp.abs(xp.reshape(tr, (-1,))) * (1.0 + _gamma(2 * r + 2 * e_all.shape[1] + 8)) + r * eps_g
    )
    cheap_host = _to_host(cheap)
    eps32 = float(np.finfo(np.float32).eps)
    tiny32 = float(np.finfo(np.float32).tiny)
    rows_per_chunk = chunk * g_count

    def gram32(idx: np.ndarray) -> Any:
        # blocks of one chunk at a time (callers pass sorted indices of one chunk)
        c = int(idx[0]) // rows_per_chunk
        local = idx - c * rows_per_chunk
        src = cache[c] if cache is not None else grams(starts[c])
        if local.size == int(src.shape[0]):
            return src
        return xp.take(src, xp.asarray(local, device=dev), axis=0)

    def gram32_any(idx: np.ndarray) -> Any:
        parts = [
            gram32(idx[(idx >= c * rows_per_chunk) & (idx < (c + 1) * rows_per_chunk)])
            for c in sorted({int(i) // rows_per_chunk for i in idx})
        ]
        return xp.concat(parts) if len(parts) > 1 else parts[0]

    def gram64(idx: np.ndarray) -> Any:
        w, grp = thetas(idx)
        gr = lags.grams(w, single=False)  # (F, G, r, r)
        flat = xp.reshape(gr, (-1, r, r))
        return xp.take(flat, xp.asarray(np.arange(idx.size) * g_count + grp, device=dev), axis=0)

    def cholesky_pass(todo: np.ndarray, single: bool, level: float) -> np.ndarray:
        if single:  # by cache chunk, so that each piece is one slice of the cache
            pieces = [
                todo[(todo >= c * rows_per_chunk) & (todo < (c + 1) * rows_per_chunk)]
                for c in range(len(starts))
            ]
        else:  # pieces small enough for the budget, and enough of them for the workers
            step = max(1, min(rows_per_chunk, -(-todo.size // n_workers(xp))))
            pieces = [todo[s : s + step] for s in range(0, todo.size, step)]
        pieces = [p for p in pieces if p.size]

        def test(sel: np.ndarray) -> np.ndarray:
            if single:
                gb = gram32(sel)
                shift = _cholesky_shifts(level, r, eps_g32, tr32_host[sel], eps32, tiny32)
                ok = np.zeros(sel.size, dtype=bool)
            else:
                gb = gram64(sel)
                # an O(r^2) bound first: it settles near-isometric blocks
                ok = _shifted_frobenius_bound(gb, xp) + eps_g <= level * (1 - 8 * _EPS)
                if ok.all():
                    return ok
                gb = xp.take(gb, xp.asarray(np.nonzero(~ok)[0], device=dev), axis=0)
                shift = _cholesky_shifts(
                    level, r, eps_g, _to_host(_trace_lower(gb, xp)), _EPS, _TINY
                )
            usable = shift > 0
            t = xp.asarray(np.where(usable, shift, 0.0), dtype=real_dtype(xp, gb.dtype), device=dev)
            eye = xp.eye(r, dtype=gb.dtype, device=dev)
            shifted = xp.astype(t, gb.dtype)[:, None, None] * eye - gb
            res = _to_host(cholesky_succeeds(shifted, xp)) & usable
            ok[~ok] = res
            return ok

        out = map_chunks(test, pieces, xp)
        flags = np.zeros(n_blocks, dtype=bool)
        for sel, f in zip(pieces, out):
            flags[sel] = f
        return flags[todo]

    def thetas(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pidx, grp = np.divmod(idx, g_count)
        return pts[pidx], grp

    def symbols_at(idx: np.ndarray, kernel: Any, xp: ModuleType = xp, dev: Any = dev) -> Any:
        w, grp = thetas(idx)
        th = 2.0 * np.pi * w / np.asarray(spec.m, dtype=np.float64)
        if input_side:
            th = -th
        rd = xp.float64 if kernel.dtype in (xp.float64, xp.complex128) else xp.float32
        p = point_symbols(kernel, spec, xp.asarray(th, dtype=rd, device=dev), xp)
        flat = xp.reshape(p, (-1, co, cw))
        return xp.take(flat, xp.asarray(np.arange(idx.size) * g_count + grp, device=dev), axis=0)

    exact: dict[int, float] = {}

    def solve(idx: np.ndarray) -> None:
        idx = np.asarray([i for i in idx if int(i) not in exact], dtype=np.int64)
        if idx.size:
            top = xp.linalg.svdvals(symbols_at(idx, k64))[:, 0]
            for i, v in zip(idx.tolist(), np.asarray([float(t) for t in top])):
                exact[i] = float(v)

    tr32_host = _to_host(tr32)
    if level is not None:
        # the scaled level squared, rounded down: a block certified below it has
        # sigma <= sqrt(tau) (1 + 4 eps) 2^-expo <= level
        # (a level far above any norm of the scaled layer, whose entries are < 1, is
        # capped at 2^500: a proof of that is one of the level)
        big = level > 0 and math.frexp(level)[1] + expo > 500
        scaled = 2.0**500 if big else math.ldexp(level, expo)
        tau = (scaled * (1 - 16 * _EPS)) ** 2 * (1 - 16 * _EPS)
        todo = np.nonzero(~(cheap_host < tau))[0]
        if todo.size:
            todo = todo[~cholesky_pass(todo, single=True, level=tau)]
        if todo.size:
            todo = todo[~cholesky_pass(todo, single=False, level=tau)]
        return None, not todo.size
    rank_host = _to_host(rank)  # one float per block: the only bulk sync
    order = np.argsort(-rank_host, kind="stable")
    # a few Lanczos steps rank the blocks only roughly (their top eigenvalues differ by
    # ~1% for random kernels): more steps for the leaders pick the one worth an SVD
    # a wrong first pick costs one more exact solve (an SVD, ~r^3), refining a block
    # _REFINE_STEPS r^2: the larger the blocks, the more leaders are worth refining (the
    # top blocks of a random 512-channel layer lie within 0.5% of each other)
    lead = np.sort(order[: max(_REFINE, min(16, r // 32))])
    refined = rank_host.copy()
    refined[lead] = _to_host(_lanczos_top(gram32_any(lead), _REFINE_STEPS, xp))
    first_pick = lead[np.argsort(-refined[lead], kind="stable")][:_FIRST_EXACT]
    approx: set[int] = set()  # values in ``exact`` that are Ritz values (loose rtol)

    def _best_solved() -> float:
        return max([v for i, v in exact.items() if i not in approx], default=0.0)

    loose = rtol >= _LOOSE_RTOL and level is None and loose_ok
    if loose:
        # the leader's refined Ritz value (good to ~1e-4) instead of its SVD: only tau
        # depends on it, and a leader it underestimates by more than rtol / 2 fails its
        # test and is solved below like any other failure; the lower bound comes from
        # the winner's vector at the end either way
        for i in first_pick.tolist():
            exact[i] = math.sqrt(max(float(refined[i]), 0.0))
            approx.add(i)
    else:
        solve(first_pick)

    def margin_level(best: float) -> float:
        # the smallest tau whose Cholesky test can pass above a block of norm ``best``:
        # the symbol and Gram rounding of ``best^2``, then room for Rump's shift
        t_min = (best * (1 + 8 * _EPS * r) + eps_p) ** 2 + 2 * eps_g
        return t_min + 2 * (t_min - _cholesky_threshold(t_min, r, eps_g))

    floor_tau = 0.0
    certified = np.zeros(n_blocks, dtype=bool)
    tested = np.zeros(n_blocks, dtype=bool)
    double = np.zeros(n_blocks, dtype=bool)
    tried_at = np.zeros(n_blocks)  # the level of each block's last single-precision test
    is_refined = np.zeros(n_blocks, dtype=bool)
    is_refined[lead] = True
    tau = 0.0
    for _ in range(64):
        best = max(exact.values())
        # tau: room for the rounding margins above the best value so far, or rtol's
        t_min = margin_level(best)
        tau = max(tau, t_min, (best * (1 + 0.5 * rtol)) ** 2)
        # (the floor from solved values only: a Ritz value is no rounding margin)
        floor_tau = max(floor_tau, t_min if not approx else margin_level(_best_solved()))
        todo = np.nonzero(~certified)[0]
        cheap_ok = cheap_host[todo] < tau
        certified[todo[cheap_ok]] = True
        todo = todo[~cheap_ok]
        if not todo.size:
            break
        tested[todo] = True
        # single precision first: its rounding margin (Rump's c (r t - tr H), and the Gram
        # rounding) certifies the blocks clearly below tau at a third of the cost of
        # double; a block that failed is tried again once tau has grown
        thr32 = _cholesky_shifts(tau, r, eps_g32, tr32_host[todo], eps32, tiny32)
        # blocks whose Ritz value already exceeds the single-precision threshold would
        # fail that test for sure (orthogonal layers: all of them); they go to double
        first = todo[(tau > tried_at[todo] * (1 + 1e-3)) & (refined[todo] < thr32 * (1 - 1e-3))]
        tried_at[first] = tau
        if first.size:
            ok32 = cholesky_pass(first, single=True, level=tau)
            certified[first[ok32]] = True
            # the failures lie within the single-precision margin of tau or above it: the
            # rough ranking cannot order them (their top eigenvalues differ by ~1%), more
            # Lanczos steps can; one above the best value so far is solved before any
            # double test, which it would fail
            fresh = np.sort(first[~ok32 & ~is_refined[first]])
            fresh = fresh[np.argsort(-rank_host[fresh], kind="stable")][:_MAX_REFINE]
            if fresh.size:
                fresh = np.sort(fresh)
                refined[fresh] = _to_host(_lanczos_top(gram32_any(fresh), _RETRY_STEPS, xp))
                is_refined[fresh] = True
            todo = todo[~certified[todo]]
        if not todo.size:
            break
        # (a rough Ritz value only when it is clearly above)
        above = todo[
            np.asarray([int(i) not in exact for i in todo], dtype=bool)
            & (refined[todo] > best * best * np.where(is_refined[todo], 1 + 1e-4, 1 + 1e-3))
        ]
        if above.size:
            solve(above[np.argsort(-refined[above], kind="stable")][:_FIRST_EXACT])
            continue
        double[todo] = True
        ok = cholesky_pass(todo, single=False, level=tau)
        certified[todo[ok]] = True
        failed = todo[~ok]
        if not failed.size:
            break
        for i in approx.intersection(failed.tolist()):  # its Ritz value was too low
            del exact[i]
        approx.difference_update(failed.tolist())
        fresh = failed[np.asarray([int(i) not in exact for i in failed], dtype=bool)]
        if fresh.size:  # solve the best ranked failures, then test the rest again
            pri = fresh[np.argsort(-refined[fresh], kind="stable")]
            solve(pri[: max(_FIRST_EXACT, fresh.size // 4)])
        else:  # solved blocks that still fail: the margins need room
            tau = tau + 2 * (tau - _cholesky_threshold(tau, r, eps_g))
            floor_tau = max(floor_tau, tau)
    else:
        # the rounds ran out (a misleading ranking solved one block per round: how a
        # one-pass Lanczos once returned a clipped layer's second-best block with the
        # trace bound as its upper end). The value must not depend on the ranking: every
        # block left is solved, then tested in double precision at the margins' tau
        left = np.nonzero(~certified)[0]
        for s in range(0, left.size, 64):
            solve(left[s : s + 64])
        best = max(exact.values())
        t_min = margin_level(best)
        tau = max(tau, t_min, (best * (1 + 0.5 * rtol)) ** 2)
        floor_tau = max(floor_tau, t_min)
        for _ in range(8):
            tested[left] = double[left] = True
            ok = cholesky_pass(left, single=False, level=tau)
            certified[left[ok]] = True
            left = left[~ok]
            if not left.size:
                break
            tau = tau + 2 * (tau - _cholesky_threshold(tau, r, eps_g))
            floor_tau = max(floor_tau, tau)
        else:  # pragma: no cover - never seen; the trace bound still holds
            tau = max(tau, float(np.max(cheap_host[left])))
            floor_tau = max(floor_tau, tau)

    # blocks the ranking cannot tell from the best (ties such as twin groups, or an
    # orthogonal layer): a certificate holds either way, but solving a few more makes the
    # value the best block's and not merely within the certified width of it
    # only blocks tested in double can be that close (single precision certified the rest
    # a margin below tau); a double test at the winner's own value clears most of them
    win = max(exact, key=exact.__getitem__)
    near = np.nonzero(double)[0]
    # refined Ritz values (good to ~1e-4) clear the rest; unrefined ones stay candidates
    near = near[
        np.asarray([int(i) not in exact for i in near], dtype=bool)
        & ((refined[near] >= exact[win] ** 2 * (1 - 1e-3)) | ~is_refined[near])
    ]
    if loose:  # the value need only lie within the width: ties do not matter
        near = near[:0]
    if 0 < near.size <= 4 * _MAX_TIES:  # more: a plateau (an orthogonal layer)
        near = near[~cholesky_pass(near, single=False, level=exact[win] ** 2)]
    if near.size <= _MAX_TIES:  # more: a plateau (an orthogonal layer), all within the width
        solve(near[np.argsort(-refined[near], kind="stable")])
    win = max(exact, key=exact.__getitem__)
    p_win = symbols_at(np.asarray([win]), k64)[0, ...]
    g_win = gram64(np.asarray([win]))[0, ...]
    low = _winner_lower(
        p_win, g_win, exact[win], eps_p, input_side, xp, accept=rtol / 4 if loose else 1e-9
    )
    if win in approx and math.sqrt(tau) - low > 0.75 * rtol * low:
        # inverse iteration from a Ritz value found another eigenvector (a second
        # eigenvalue nearly as close), or the Ritz value overshot and set tau too high:
        # the exact path restores the width (rare: it starts over)
        return _periodic_norm(
            kg,
            spec,
            out_xp,
            rtol=rtol,
            memory_limit=memory_limit,
            progress=progress,
            loose_ok=False,
        )
    floor_tau = max(floor_tau, margin_level(low))
    lower = math.ldexp(low, -expo)
    upper = math.ldexp(math.sqrt(tau) * (1 + 4 * _EPS), -expo)
    w, grp = thetas(np.asarray([win]))
    # the symbol block's own frequency (the input-side Gram block sits at -theta)
    freq = tuple(int((-v if input_side else v) % m) for v, m in zip(w[0], spec.m))
    # under a loose rtol the winner's value may be a Ritz value: report the proven lower
    # end (its Rayleigh quotient), which lies within the certified width of the norm
    value_hi = lower if loose else math.ldexp(exact[win], -expo)
    if getattr(kg, "requires_grad", False):
        # the derivative of sigma_max is u v^H of the winning block, pulled back
        p_kg = symbols_at(np.asarray([win]), kg, out_xp, out_dev)
        value = out_xp.linalg.svdvals(p_kg[0, ...])[0]
        value = out_xp.astype(value, rdt, copy=False)
    else:
        value = out_xp.asarray(value_hi, dtype=rdt, device=out_dev)
    # the width the rounding margins allow (they, not rtol, set it when above rtol):
    # t_min of the best value, or the tau that solved blocks needed (never the width
    # itself, which would make the promise empty)
    floor = (math.ldexp(math.sqrt(floor_tau) * (1 + 4 * _EPS), -expo) - lower) / max(
        value_hi, _TINY
    )
    info = NormInfo(
        lower=lower,
        upper=upper,
        method="gram-cholesky",
        blocks=n_blocks,
        blocks_exact=len(exact),
        blocks_cholesky=int(tested.sum()),
        floor=float(floor),
        frequency=freq,
        group=int(grp[0]),
    )
    return value, info


def _to_host(x: Any) -> np.ndarray:
    """Small control arrays (flags, ranks) to the host; the blocks never leave the device."""
    return small_to_host(x)


def _grid_points(freqs: list[np.ndarray]) -> np.ndarray:
    """The tensor grid of ``freqs`` as a C-ordered list of points ``(F, d)``."""
    mesh = np.meshgrid(*freqs, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=-1)


def _lag_phases(spec: ConvSpec, w: np.ndarray) -> np.ndarray:
    """``e^{2 pi i <w / m, Delta>}`` for every point ``w`` ``(F, d)`` and lag (C order)."""
    e = np.ones((w.shape[0], 1), dtype=np.complex128)
    for j, (a, m) in enumerate(zip(spec.taps, spec.m)):
        p = np.arange(2 * a - 1) - (a - 1)
        ph = np.exp(2j * np.pi * ((w[:, j : j + 1] * p[None, :]) % m) / m)  # (F, span)
        e = (e[:, :, None] * ph[:, None, :]).reshape(w.shape[0], -1)
    return e


def _gram_points(corr: Any, spec: ConvSpec, w: np.ndarray, xp: ModuleType) -> Any:
    """Gram blocks at a list of integer grid frequencies ``w`` ``(F, d)``: ``(F, G, r, r)``.

    The phases are those of :func:`convsv.gram.gram_symbols` (same rounding bound); the
    GEMM runs in ``corr``'s precision.
    """
    g, r = int(corr.shape[1]), int(corr.shape[2])
    e = _lag_phases(spec, w)
    flat = xp.reshape(corr, (int(corr.shape[0]), g * r * r))
    t = xp.asarray(e, dtype=corr.dtype, device=device_of(corr)) @ flat
    return xp.reshape(t, (int(w.shape[0]), g, r, r))


class _Lags:
    """The Gram lags of a layer, laid out for the evaluations :func:`periodic_norm` makes.

    Real kernel: ``R_{-Delta} = R_Delta^T`` makes ``Re G = R_0 + sum cos(theta Delta)
    (R_Delta + R_Delta^T)`` and ``Im G = sum sin(theta Delta) (R_Delta - R_Delta^T)``
    over the half lags: two real GEMMs of ``L`` terms in all, half the flops of the complex
    GEMM, and in single precision one real GEMM ``[cos | sin] @ W`` that writes the
    complex64 blocks directly (``W`` holds the sums in the real slots and the differences
    in the imaginary ones; :func:`convsv._backends.complex_view`). Rounding: the sums and
    differences in float64, then once to float32, and a real GEMM of at most ``L`` terms
    per part: within the complex path's bound per part (:func:`_error_bounds` counts both).
    Complex kernel: the complex lags and one complex GEMM (:func:`_gram_points`).
    """

    def __init__(self, k64: Any, spec: ConvSpec, xp: ModuleType, real: bool) -> None:
        self.spec, self.xp, self.real = spec, xp, real
        if not real:
            corr = gram_autocorrelation(k64, spec, xp)
            self.corr, self.corr32 = corr, xp.astype(corr, xp.complex64)
            self.n_lags, self.shape = int(corr.shape[0]), tuple(int(v) for v in corr.shape[1:])
            self.t_abs = xp.sum(xp.abs(corr), axis=0)
            self.lag_trace = xp.sum(xp.linalg.diagonal(corr), axis=-1)
            return
        half = gram_half_lags(k64, spec, xp)  # (h + 1, G, r, r) float64
        h = int(half.shape[0]) - 1
        self.n_lags, self.shape = 2 * h + 1, tuple(int(v) for v in half.shape[1:])
        after = half[1:, ...]
        mirror = xp.matrix_transpose(after)
        self.sums = xp.concat([half[:1, ...], after + mirror])
        self.diffs = after - mirror
        a = xp.abs(half)
        # |R_{-D}| = |R_D|^T: one transpose of the sum (its rounding: _error_bounds)
        a_sum = xp.sum(a[1:, ...], axis=0)
        self.t_abs = a[0, ...] + a_sum + xp.matrix_transpose(a_sum)
        tr = xp.sum(xp.linalg.diagonal(half), axis=-1)  # (h + 1, G)
        self.lag_trace = xp.concat([xp.flip(tr[1:, ...], axis=0), tr])
        size = math.prod(self.shape)
        flat_s = xp.reshape(self.sums, (h + 1, size))
        flat_d = xp.reshape(self.diffs, (h, size))
        self.sums32 = xp.astype(flat_s, xp.float32)
        self.diffs32 = xp.astype(flat_d, xp.float32)
        w = xp.zeros((2 * h + 1, size, 2), dtype=xp.float32, device=device_of(half))
        self.w32 = w if complex_view(w[:1, :1, :]) is not None else None
        if self.w32 is not None:  # else two GEMMs and a complex sum
            w[: h + 1, :, 0] = self.sums32
            w[h + 1 :, :, 1] = self.diffs32

    def grams(self, w: np.ndarray, single: bool) -> Any:
        """Gram blocks at the integer frequencies ``w`` ``(F, d)``: ``(F, G, r, r)``."""
        xp, n = self.xp, int(w.shape[0])
        if not self.real:
            return _gram_points(self.corr32 if single else self.corr, self.spec, w, xp)
        h = self.n_lags // 2
        e = _lag_phases(self.spec, w)
        ph = np.concatenate([e.real[:, h:], e.imag[:, h + 1 :]], axis=1)
        rdt = xp.float32 if single else xp.float64
        dev = device_of(self.sums)
        ph = xp.asarray(ph, dtype=rdt, device=dev)
        if single and self.w32 is not None:
            out = ph @ xp.reshape(self.w32, (self.n_lags, 2 * math.prod(self.shape)))
            view = complex_view(xp.reshape(out, (n, math.prod(self.shape), 2)))
            return xp.reshape(view, (n, *self.shape))
        if single:
            re, im = ph[:, : h + 1] @ self.sums32, ph[:, h + 1 :] @ self.diffs32
        else:
            size = math.prod(self.shape)
            re = ph[:, : h + 1] @ xp.reshape(self.sums, (h + 1, size))
            im = ph[:, h + 1 :] @ xp.reshape(self.diffs, (h, size))
        out = complex_view(xp.stack([re, im], axis=-1))  # one pass (orthogonal layers
        if out is None:  # test every block in double)
            cdt = xp.complex64 if single else xp.complex128
            unit = xp.asarray(1j, dtype=cdt, device=dev)
            out = xp.astype(re, cdt) + xp.astype(im, cdt) * unit
        return xp.reshape(out, (n, *self.shape))


def _shifted_frobenius_bound(gram: Any, xp: ModuleType) -> np.ndarray:
    """``mu + ||G_hat - mu I||_F >= lambda_max`` of (the Hermitian part of) each block, rounded up.

    Any ``mu`` works; the mean eigenvalue ``tr / r`` makes it tight for near-isometric
    blocks (an orthogonal layer's are ``I``), where a Cholesky test would cost ``r^3``.
    ``||A||_2 <= ||A||_F``; the diagonal shift rounds by ``eps (|G_ii| + |mu|)`` and the
    sum of ``r^2`` squares by ``gamma_{2 r^2 + 8}``.
    """
    r = int(gram.shape[-1])
    b = int(gram.shape[0])
    diag = xp.real(xp.linalg.diagonal(gram))
    mu = xp.sum(diag, axis=-1) / r
    dev = device_of(gram)
    # the off-diagonal part masked (exact) and summed in one pass, the diagonal apart: no
    # cancellation against the diagonal's O(1) squares, two passes over the blocks
    mask = 1.0 - xp.eye(r, dtype=real_dtype(xp, gram.dtype), device=dev)
    off = xp.reshape(gram * mask, (b, r * r))
    off2 = xp.real(xp.vecdot(off, off))
    fro = xp.sqrt(off2 + xp.sum((diag - mu[:, None]) ** 2, axis=-1))
    slack = _EPS * math.sqrt(r) * (xp.max(xp.abs(diag), axis=-1) + xp.abs(mu))
    bound = (mu + fro * (1 + _gamma(2 * r * r + 8)) + slack) * (1 + 4 * _EPS)
    return _to_host(bound)


def _winner_lower(
    p: Any,
    gram: Any,
    sigma: float,
    eps_p: float,
    input_side: bool,
    xp: ModuleType,
    accept: float = 1e-9,
) -> float:
    """Proven lower bound on ``sigma_max(P)`` from a vector of the winning block's Gram.

    Two steps of inverse iteration on ``G`` (``r x r``, float64) shifted just above the
    computed ``sigma^2``: the top eigenvector's share grows by ``(mu - lambda_2) / (mu -
    lambda_1) ~ 1e9`` per step, so the Rayleigh quotient below is exact to rounding for
    the price of two LU solves (a full SVD with vectors costs ~10x more at r = 256). ``G``
    is ``P P^H`` (left vectors) or ``P^H P`` (right). Should the solve fail (an exactly
    singular shift), or the bound fall more than ``accept`` (relative) below ``sigma``, the
    SVD's vector is used (``sigma`` a Ritz value under a loose rtol: it may sit a float32
    rounding above the block's value, so the caller passes a wider ``accept``).
    """
    r = int(gram.shape[-1])
    dev = device_of(gram)
    rng = np.random.default_rng(2024)
    x = xp.asarray(rng.standard_normal(r) + 0.25, dtype=gram.dtype, device=dev)
    mu = sigma * sigma * (1 + 2.0**-30)
    shifted = xp.asarray(mu, dtype=gram.dtype, device=dev) * xp.eye(r, dtype=gram.dtype, device=dev)
    shifted = shifted - gram
    mat = p if input_side else xp.conj(xp.matrix_transpose(p))
    try:
        for _ in range(2):
            x = xp.linalg.solve(shifted, x[:, None])[:, 0]
            x = x / xp.max(xp.abs(x))
        good = bool(xp.all(xp.isfinite(xp.abs(x))))
    except (ValueError, RuntimeError, ArithmeticError):  # LinAlgError is a ValueError
        good = False
    low = _rayleigh_lower(mat, x, eps_p, xp) if good else 0.0
    if low < sigma * (1 - accept):  # pragma: no cover - never seen; the SVD's vector
        low = max(low, _rayleigh_lower(p, _svd_top_vector(p, xp), eps_p, xp))
    return low


def _svd_top_vector(p: Any, xp: ModuleType) -> Any:
    """The top right singular vector of ``p`` (a full SVD: :func:`_winner_lower`'s fallback)."""
    _, _, vh = xp.linalg.svd(p, full_matrices=False)
    return xp.conj(vh[0, :])


def _rayleigh_lower(p: Any, v: Any, eps_p: float, xp: ModuleType) -> float:
    """Proven ``sigma_max(P) >= ||P_hat v|| / ||v|| - eps_p``, rounded down.

    ``v`` is any nonzero vector (the winner's computed top singular vector); the
    matrix-vector product errs by at most ``gamma_{2n+4} |P_hat| |v|``, whose norm is at
    most ``gamma ||P_hat||_F ||v||``, and each 2-norm by ``gamma_{2n+4}`` relatively.
    """
    a, b = int(p.shape[-2]), int(p.shape[-1])
    y = p @ v
    sq = (
        (lambda z: xp.sum(xp.real(z) ** 2 + xp.imag(z) ** 2))
        if xp.isdtype(p.dtype, "complex floating")
        else (lambda z: xp.sum(z * z))
    )
    ny, nv, fro = (math.sqrt(float(sq(z))) for z in (y, v, p))
    g = _gamma(2 * max(a, b) + 4)
    est = (ny * (1 - g) - g * fro * (1 + g) * nv * (1 + g)) / (nv * (1 + g))
    return max(0.0, (est - eps_p) * (1 - 4 * _EPS))
