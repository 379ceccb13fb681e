r"""Certified operator norm of a periodic layer, without its full spectrum.

The norm of a periodic (strided) layer is the largest singular value over its symbol
blocks ``P_f`` (Sedghi et al. 2019, Theorem 6; Senderovich et al. 2022, Theorem 2). Most
blocks need not be solved: it suffices to *prove* ``lambda_max(G_f) < tau`` for the Gram
block ``G_f = P_f^H P_f`` (the smaller side), and a floating-point Cholesky factorisation
of ``tau I - G_f`` that runs to completion proves it (S. M. Rump, *Verification of
positive definiteness*, BIT 46, 2006, Theorem 2.3; its proof rests on Demmel's backward
error bound ``R^H R = A + dA``, ``|dA| <= gamma_{n+1} |R^H| |R|``). The steps:

1. the Gram blocks of every frequency from the tap autocorrelation (:mod:`convsv.gram`,
   one GEMM), with a few batched Lanczos steps each to rank them;
2. exact top singular values (``svdvals`` of the symbol block) for the best ranked
   blocks: the candidate value ``L``;
3. one batched Cholesky test of every remaining block at ``tau ~ L^2 (1 + rtol)``, after
   a free Frobenius / row-sum prefilter; blocks that fail are solved exactly (best
   ranked first) and ``L`` raised until every block is either certified or solved.

Every rounding error is bounded a priori (:func:`_error_bounds`): the computed Gram
blocks differ from the exact ``P_f^H P_f`` by at most ``gamma |K'| |K'|^T`` entrywise
(``|K'|`` summed over taps), the evaluated symbols from the exact ones likewise, and
Rump's shift covers the Cholesky itself. The lower bound is a Rayleigh quotient
``||P v|| / ||v||`` of the winning block with its computed top right singular vector,
rounded down. Certificates are computed in float64 whatever the kernel's precision (a
float32 kernel is exact in float64), so ``lower <= ||layer|| <= upper`` holds for the
layer the kernel's values define. Those worst-case bounds set a floor on the interval
width, ``info.floor``: ``2 r^2 eps`` for the Cholesky of side ``r`` plus the Gram
rounding ``~ 2 (c k) eps ||M||_1 ||M||_inf / ||P||^2``; measured certified widths
2e-10 (c = 128) and 9e-10 (c = 256) relative, 3x3 random kernels, while the returned
value itself agrees with the full spectrum's maximum to an ulp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import device_of, real_dtype, small_to_host
from ._backends import cholesky_succeeds, detached, map_chunks, n_workers, one_thread_math
from ._progress import Progress
from ._validation import DEFAULT_MEMORY_LIMIT, ConvSpec, check_memory
from .gram import gram_autocorrelation
from .lfa import point_symbols
from .polyphase import axis_phase_matrix, contract_axes

__all__ = ["NormInfo", "periodic_norm"]

_EPS = 2.0**-52  # float64 machine epsilon (twice the unit roundoff: a safety factor of 2)
_TINY = 2.0**-1022
#: Lanczos steps per block for the ranking (not part of any certificate).
_LANCZOS_STEPS = 6
#: Blocks solved exactly before the first Cholesky sweep, and per escalation round.
_FIRST_EXACT = 2
#: Blocks whose ranking is within this of the winner's are solved too (at most _MAX_TIES).
_TIE = 1e-4
_MAX_TIES = 4


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
        Blocks whose top singular value was computed (``svdvals``).
    blocks_cholesky : int
        Blocks that needed a Cholesky test (the rest passed the free prefilter).
    floor : float
        Relative width below which rounding does not let this certificate go; the
        interval satisfies ``upper - lower <= max(rtol, floor) * value`` (up to the
        few-ulp rounding of ``lower``).
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


def _frequency_plan(spec: ConvSpec, real: bool) -> list[np.ndarray]:
    freqs = [np.arange(m) for m in spec.m]
    if real:  # conjugate symmetry: P(-theta) = conj(P(theta)) has the same values
        freqs[-1] = np.arange(spec.m[-1] // 2 + 1)
    return freqs


def _abs_tap_sum(k64: Any, spec: ConvSpec, xp: ModuleType) -> tuple[float, float]:
    """``(||M||_1, ||M||_inf)`` maximised over groups, ``M = sum_a |K'_a|`` (upper bounds).

    ``M[o, (c, r)]`` sums the magnitudes of the taps that the symbol block's entry
    ``(o, (c, r))`` collects; every rounding bound below is a multiple of ``M`` or
    ``M M^T``, and ``||M||_2^2 <= ||M||_1 ||M||_inf``.
    """
    dev = device_of(k64)
    mats = [
        xp.asarray(axis_phase_matrix(k, s, dl, None), dtype=xp.float64, device=dev)
        for k, s, dl in zip(spec.k, spec.stride, spec.dilation)
    ]
    g, co, ci = (int(v) for v in k64.shape[:3])
    t = contract_axes(xp.abs(k64), mats, xp)  # (G, co, ci, s.., A..): one-hot, exact
    t = xp.reshape(t, (g, co, ci * spec.phases, -1))
    m = xp.sum(t, axis=-1)
    norm1 = float(xp.max(xp.sum(m, axis=-2)))
    norminf = float(xp.max(xp.sum(m, axis=-1)))
    # the sums above round; so did M: inflate by far more than their gamma
    grow = 1.0 + _gamma(4 * (math.prod(spec.k) + co + ci * spec.phases) + 16)
    return norm1 * grow, norminf * grow


def _error_bounds(k64: Any, spec: ConvSpec, xp: ModuleType) -> tuple[float, float, float]:
    """A priori bounds ``(eps_g, eps_p, eps_g32)`` on ``||G_hat - P^H P||_2``, ``||P_hat - P||_2``.

    ``eps_g32`` bounds the Gram blocks evaluated in single precision from the float64
    ``R`` (rounded to complex64, entrywise ``eps32 |R|``) with complex64 phases and GEMM.

    ``G_hat`` from :func:`convsv.gram.gram_symbols`: the autocorrelation ``R`` is a sum
    of ``len <= width * prod(taps)`` products (``gamma_{2 len + 2}`` entrywise, complex
    arithmetic counted twice), the lag sum another ``2 L + 2`` with phases good to
    ``(4 pi + 2) eps``; every tap pair appears in exactly one lag, so the entrywise error
    is at most ``u_G (M M^T)``. ``P_hat`` from :func:`convsv.lfa.point_symbols`: phases
    ``cos/sin(theta a)`` with ``|theta| <= 2 pi`` good to ``(6 pi a + 3) eps`` per axis,
    ``prod(k)`` terms summed: at most ``u_P M`` entrywise.
    """
    co, ci = (int(v) for v in k64.shape[1:3])
    width = max(co, ci * spec.phases)
    taps = math.prod(spec.taps)
    lags = math.prod(2 * a - 1 for a in spec.taps)
    g_len = _gamma(2 * width * taps + 2)
    u_g = g_len + ((4 * math.pi + 2) * _EPS + _gamma(2 * lags + 2)) * (1 + g_len)
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
    u_g32 = g_len + (e32 + (4 * math.pi + 4) * e32 + g_lag32) * (1 + g_len) * (1 + g_lag32)
    norm1, norminf = _abs_tap_sum(k64, spec, xp)
    safety = 1.01
    return (
        safety * u_g * norm1 * norminf,
        safety * u_p * math.sqrt(norm1 * norminf),
        safety * u_g32 * norm1 * norminf,
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


def _lanczos_top(gram: Any, steps: int, xp: ModuleType) -> Any:
    """Largest Ritz value of ``steps`` Lanczos steps on each block (ranking only)."""
    b, r = int(gram.shape[0]), int(gram.shape[1])
    steps = min(steps, r)
    dev = device_of(gram)
    rng = np.random.default_rng(12345)
    x0 = rng.standard_normal(r) + 0.5  # a shared start with no symmetric bias
    q = xp.asarray(
        np.broadcast_to(x0 / np.linalg.norm(x0), (b, r)).copy(), dtype=gram.dtype, device=dev
    )
    basis, alphas, betas = [q], [], []
    for j in range(steps):
        w = (gram @ q[..., None])[..., 0]
        alphas.append(xp.real(xp.sum(xp.conj(q) * w, axis=-1)))
        for _ in range(2):  # full reorthogonalisation, twice is enough
            for v in basis:
                w = w - v * xp.sum(xp.conj(v) * w, axis=-1)[:, None]
        beta = xp.sqrt(xp.sum(xp.real(w) ** 2 + xp.imag(w) ** 2, axis=-1))
        if j == steps - 1:
            break
        betas.append(beta)
        safe = xp.where(beta > 0, beta, xp.ones_like(beta))
        q = w / xp.astype(safe, gram.dtype)[:, None]
        basis.append(q)
    k = len(alphas)
    t = xp.zeros((b, k, k), dtype=xp.float64, device=dev)
    eye = xp.eye(k, dtype=xp.float64, device=dev)
    sup = xp.eye(k, k=1, dtype=xp.float64, device=dev)
    t = xp.stack(alphas, axis=-1)[:, :, None] * eye
    if betas:
        bvec = xp.concat(
            [xp.stack(betas, axis=-1), xp.zeros((b, 1), dtype=xp.float64, device=dev)], axis=-1
        )
        off = bvec[:, :, None] * sup
        t = t + off + xp.matrix_transpose(off)
    return xp.linalg.eigvalsh(t)[:, -1]


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
        (differentiable on torch through :func:`convsv.lfa.point_symbols`).
    info : NormInfo
    """
    # small batched LAPACK calls: threaded BLAS only spins (see one_thread_math)
    with one_thread_math():
        return _periodic_norm(kg, spec, xp, rtol=rtol, memory_limit=memory_limit, progress=progress)


def _periodic_norm(
    kg: Any,
    spec: ConvSpec,
    xp: ModuleType,
    *,
    rtol: float | None,
    memory_limit: float | None,
    progress: bool,
) -> tuple[Any, NormInfo]:
    rdt = real_dtype(xp, kg.dtype)
    real = not xp.isdtype(kg.dtype, "complex floating")
    if rtol is None:
        rtol = 1e-12 if rdt == xp.float64 else 1e-6
    dev = device_of(kg)
    k64 = xp.astype(detached(kg), xp.float64 if real else xp.complex128)
    # scale by a power of two (exact) so that the Gram blocks neither overflow nor
    # underflow; every bound below is for the scaled layer, multiplied back at the end
    peak = float(xp.max(xp.abs(k64)))
    if peak == 0.0:  # the zero operator: nothing to bound
        zero = (
            xp.sum(kg * 0)
            if getattr(kg, "requires_grad", False)
            else xp.asarray(0.0, dtype=rdt, device=dev)
        )
        return xp.astype(zero, rdt), NormInfo(
            lower=0.0,
            upper=0.0,
            method="gram-cholesky",
            blocks=math.prod(f.size for f in _frequency_plan(spec, real)) * spec.groups,
            blocks_exact=0,
            blocks_cholesky=0,
            floor=0.0,
            frequency=(0,) * spec.d,
            group=0,
        )
    expo = -math.frexp(peak)[1]
    k64 = k64 * math.ldexp(1.0, expo)
    g_count = spec.groups
    co, cw = spec.c_out // g_count, spec.c_in // g_count * spec.phases
    r = min(co, cw)
    input_side = co > cw  # the Gram block is P^H P at -theta (see gram_autocorrelation)
    freqs = _frequency_plan(spec, real)
    fshape = tuple(int(f.size) for f in freqs)
    n_blocks = math.prod(fshape) * g_count

    eps_g, eps_p, eps_g32 = _error_bounds(k64, spec, xp)
    budget = DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit
    block_bytes = 16 * r * r
    rest = math.prod(fshape[1:]) * g_count
    per_row = 4 * block_bytes * rest  # the blocks, the shifted copy, its factor, slack
    check_memory(per_row, budget, "one frequency slice of the Gram blocks", "raise memory_limit")
    chunk = max(1, int(budget // per_row))
    if n_workers(xp) > 1:  # a few chunks per worker keep the pool busy
        chunk = min(chunk, max(1, -(-fshape[0] // (2 * n_workers(xp)))))
    starts = list(range(0, fshape[0], chunk))
    keep = 4 * block_bytes * n_blocks <= budget  # keep every Gram block between the sweeps

    corr = gram_autocorrelation(k64, spec, xp)

    # single precision for the bulk (ranking and first test): R rounded once
    corr32 = xp.astype(corr, xp.complex64)

    def grams(start: int) -> Any:
        stop = min(start + chunk, fshape[0])
        w = _grid_points([freqs[0][start:stop], *freqs[1:]])
        return xp.reshape(_gram_points(corr32, spec, w, xp), (-1, r, r))

    def survey(start: int) -> tuple[Any, Any]:
        g32 = grams(start)
        return _lanczos_top(g32, _LANCZOS_STEPS, xp), (g32 if keep else None)

    with Progress(len(starts), "convsv: Gram blocks", progress) as bar:
        parts = map_chunks(survey, starts, xp, progress=bar)
    rank = xp.concat([p[0] for p in parts])
    cache = xp.concat([p[1] for p in parts]) if keep else None
    # tr(G) >= lambda_max(G) for the PSD exact block, a free prefilter: the traces are the
    # symbol of the lags' traces (float64); |G_hat_ii - G_ii| <= eps_g, the sums round too
    lag_tr = xp.sum(xp.real(xp.linalg.diagonal(corr)), axis=-1) if real else None
    e_all = _lag_phases(spec, _grid_points(freqs))
    if real:
        tr = xp.asarray(e_all.real.copy(), dtype=xp.float64, device=dev) @ lag_tr
    else:
        tr = xp.real(
            xp.asarray(e_all, dtype=xp.complex128, device=dev)
            @ xp.sum(xp.linalg.diagonal(corr), axis=-1)
        )
    cheap = (
        xp.abs(xp.reshape(tr, (-1,))) * (1.0 + _gamma(2 * r + 2 * e_all.shape[1] + 8)) + r * eps_g
    )
    cheap_host = _to_host(cheap)
    eps32 = float(np.finfo(np.float32).eps)
    del parts

    rows_per_chunk = chunk * rest

    def gram32(idx: np.ndarray) -> Any:
        if cache is not None:
            return xp.take(cache, xp.asarray(idx, device=dev), axis=0)
        out = []
        for c, start in enumerate(starts):
            sel = idx[(idx >= c * rows_per_chunk) & (idx < (c + 1) * rows_per_chunk)]
            if sel.size:
                out.append(
                    xp.take(grams(start), xp.asarray(sel - c * rows_per_chunk, device=dev), axis=0)
                )
        return xp.concat(out) if len(out) > 1 else out[0]

    def gram64(idx: np.ndarray) -> Any:
        w, grp = thetas(idx)
        gr = _gram_points(corr, spec, w, xp)  # (F, G, r, r)
        flat = xp.reshape(gr, (-1, r, r))
        return xp.take(flat, xp.asarray(np.arange(idx.size) * g_count + grp, device=dev), axis=0)

    def cholesky_pass(todo: np.ndarray, thr: Any, single: bool) -> np.ndarray:
        # pieces small enough for the budget, and enough of them to feed the workers
        step = max(1, min(rows_per_chunk, -(-todo.size // n_workers(xp))))

        def test(s: int) -> Any:
            sel = todo[s : s + step]
            gb = gram32(sel) if single else gram64(sel)
            ok = np.zeros(sel.size, dtype=bool)
            if not single:  # an O(r^2) bound first: it settles near-isometric blocks
                ok = _shifted_frobenius_bound(gb, xp) + eps_g <= tau * (1 - 8 * _EPS)
                if ok.all():
                    return ok
                gb = xp.take(gb, xp.asarray(np.nonzero(~ok)[0], device=dev), axis=0)
            eye = xp.eye(r, dtype=gb.dtype, device=dev)
            shifted = xp.asarray(thr, dtype=gb.dtype, device=dev) * eye - gb
            ok[~ok] = _to_host(cholesky_succeeds(shifted, xp))
            return ok

        return np.concatenate(map_chunks(test, range(0, todo.size, step), xp))

    def thetas(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fidx, grp = np.divmod(idx, g_count)
        w = np.stack([f[i] for f, i in zip(freqs, np.unravel_index(fidx, fshape))], axis=-1)
        return w, grp

    def symbols_at(idx: np.ndarray, kernel: Any) -> Any:
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

    rank_host = _to_host(rank)  # one float per block: the only bulk sync
    order = np.argsort(-rank_host, kind="stable")
    solve(order[:_FIRST_EXACT])

    floor_tau = 0.0
    certified = np.zeros(n_blocks, dtype=bool)
    tested = np.zeros(n_blocks, dtype=bool)
    tried32 = np.zeros(n_blocks, dtype=bool)
    tau = 0.0
    for _ in range(64):
        best = max(exact.values())
        # tau: room for the rounding margins above the best value so far, or rtol's
        lam = (best * (1 + 8 * _EPS * r) + eps_p) ** 2
        t_min = lam + 2 * eps_g
        t_min = t_min + 2 * (t_min - _cholesky_threshold(t_min, r, eps_g))
        tau = max(tau, t_min, (best * (1 + 0.5 * rtol)) ** 2)
        floor_tau = max(floor_tau, t_min)
        thr = _cholesky_threshold(tau, r, eps_g)
        todo = np.nonzero(~certified)[0]
        cheap_ok = cheap_host[todo] < tau
        certified[todo[cheap_ok]] = True
        todo = todo[~cheap_ok]
        if not todo.size:
            break
        tested[todo] = True
        # single precision first: its rounding margin (~ 2 r^2 eps32) certifies the
        # blocks clearly below tau at half the cost; the rest are tested in double
        thr32 = _cholesky_threshold(tau, r, eps_g32, eps32, float(np.finfo(np.float32).tiny))
        # blocks whose Ritz value already exceeds the single-precision threshold would
        # fail that test for sure (orthogonal layers: all of them); they go to double
        first = todo[~tried32[todo] & (rank_host[todo] < thr32 * (1 - 1e-3))]
        tried32[todo] = True
        if first.size and thr32 > 0:
            ok32 = cholesky_pass(first, thr32, single=True)
            certified[first[ok32]] = True
            todo = todo[~certified[todo]]
        if not todo.size:
            break
        ok = cholesky_pass(todo, thr, single=False)
        certified[todo[ok]] = True
        failed = todo[~ok]
        if not failed.size:
            break
        fresh = failed[[int(i) not in exact for i in failed]]
        if fresh.size:  # solve the best ranked failures, then test the rest again
            pri = fresh[np.argsort(-rank_host[fresh], kind="stable")]
            solve(pri[: max(_FIRST_EXACT, fresh.size // 4)])
        else:  # solved blocks that still fail: the margins need room
            tau = tau + 2 * (tau - thr)
    else:  # pragma: no cover - never seen; the bound below still holds
        left = np.nonzero(~certified)[0]
        tau = max(tau, float(np.max(cheap_host[left])))

    # blocks the ranking cannot tell from the best (ties such as twin groups, or an
    # orthogonal layer): a certificate holds either way, but solving a few more makes the
    # value the best block's and not merely within the certified width of it
    win = max(exact, key=exact.__getitem__)
    ties = np.nonzero(rank_host >= rank_host[win] * (1 - _TIE))[0]
    solve(ties[np.argsort(-rank_host[ties], kind="stable")][:_MAX_TIES])
    win = max(exact, key=exact.__getitem__)
    lower = math.ldexp(
        _rayleigh_lower(symbols_at(np.asarray([win]), k64)[0, ...], eps_p, xp), -expo
    )
    upper = math.ldexp(math.sqrt(tau) * (1 + 4 * _EPS), -expo)
    w, grp = thetas(np.asarray([win]))
    # the symbol block's own frequency (the input-side Gram block sits at -theta)
    freq = tuple(int((-v if input_side else v) % m) for v, m in zip(w[0], spec.m))
    value_hi = math.ldexp(exact[win], -expo)
    if getattr(kg, "requires_grad", False):
        # the derivative of sigma_max is u v^H of the winning block, pulled back
        value = xp.linalg.svdvals(symbols_at(np.asarray([win]), kg)[0, ...])[0]
        value = xp.astype(value, rdt, copy=False)
    else:
        value = xp.asarray(value_hi, dtype=rdt, device=dev)
    floor = (math.ldexp(math.sqrt(floor_tau), -expo) - lower) / max(lower, _TINY)
    if upper - lower > rtol * value_hi:  # the rounding margins, not rtol, set the width
        floor = max(floor, (upper - lower) / max(value_hi, _TINY) * (1 + 4 * _EPS))
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


def _shifted_frobenius_bound(gram: Any, xp: ModuleType) -> np.ndarray:
    """``mu + ||G_hat - mu I||_F >= lambda_max`` of (the Hermitian part of) each block, rounded up.

    Any ``mu`` works; the mean eigenvalue ``tr / r`` makes it tight for near-isometric
    blocks (an orthogonal layer's are ``I``), where a Cholesky test would cost ``r^3``.
    ``||A||_2 <= ||A||_F``; the diagonal shift rounds by ``eps (|G_ii| + |mu|)`` and the
    sum of ``r^2`` squares by ``gamma_{2 r^2 + 8}``.
    """
    r = int(gram.shape[-1])
    diag = xp.real(xp.linalg.diagonal(gram))
    mu = xp.sum(diag, axis=-1) / r
    dev = device_of(gram)
    shifted = gram - xp.astype(mu, gram.dtype)[:, None, None] * xp.eye(
        r, dtype=gram.dtype, device=dev
    )
    fro = xp.sqrt(xp.sum(xp.real(shifted) ** 2 + xp.imag(shifted) ** 2, axis=(-2, -1)))
    slack = _EPS * math.sqrt(r) * (xp.max(xp.abs(diag), axis=-1) + xp.abs(mu))
    bound = (mu + fro * (1 + _gamma(2 * r * r + 8)) + slack) * (1 + 4 * _EPS)
    return _to_host(bound)


def _rayleigh_lower(p: Any, eps_p: float, xp: ModuleType) -> float:
    """Proven ``sigma_max(P) >= ||P_hat v|| / ||v|| - eps_p``, rounded down.

    ``v`` is the computed top right singular vector of ``P_hat``; the matrix-vector
    product errs by at most ``gamma_{2n+4} |P_hat| |v|``, whose norm is at most
    ``gamma ||P_hat||_F ||v||``, and each 2-norm by ``gamma_{2n+4}`` relatively.
    """
    a, b = int(p.shape[-2]), int(p.shape[-1])
    _, _, vh = xp.linalg.svd(p, full_matrices=False)
    v = xp.conj(vh[0, :])
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
