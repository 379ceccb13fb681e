r"""Certified upper bounds on the norm of a layer from its kernel alone (no input size).

Used by :func:`convsv.torch.spectral_norm` to carry a certified bound from the weight
``W0`` where the layer's norm was certified to the current weight ``W``:
``||A(W)|| <= ||A(W0)|| + ||A(W - W0)||`` (the layer is linear in its weight), with the
second term bounded here, cheaply, from the change ``D = W - W0``.

The bound (Singla & Feizi, "Fantastic Four: Differentiable bounds on singular values of
convolution layers", ICLR 2021, Theorem 1, generalised to every padding, stride, dilation,
group count and dimension): the conv view of the layer is ``y = sum_p Q_p W_p x`` with
``Q_p = S_p P``: the padding map ``P`` followed by the tap's selection ``S_p``. Padding is
separable, so ``Q_p`` is the Kronecker product of per-axis maps ``Q^a_{p_a}``. Split the
spatial axes into a set ``T`` and the rest; ``Q_p = A_{p_T} B_{p_rest}`` (the ``T`` axes'
factors and the others'), hence

    ``y = [A_{p_T}]_{p_T} (R_T (x) I) [B_{p_rest} x]_{p_rest}``

where ``R_T`` is the kernel reshaped to ``(c_out * k_T, c_in * k_rest)`` (block
``(p_T, p_rest)`` = ``W_p``). With ``q >= ||Q_p||`` for all taps (the product over axes of
the worst tap, :meth:`~convsv.torch._layers.Layer.selection_norm`: 1 for zero padding),
a row of ``K_T`` blocks ``A`` has norm <= ``sqrt(K_T) q_T``, a column of ``K_rest``
blocks ``B`` <= ``sqrt(K_rest) q_rest``, so

    ``||A|| <= q * sqrt(prod k) * min_T ||R_T||_2``,

per group (a grouped layer is the direct sum of its groups: the max over groups). Measured
on ResNet-18 (CIFAR) weight changes during SGD: 1.1-1.5x the periodic-torus norm of ``D``,
where the per-tap Frobenius sum ``sum_p ||D_p||_F`` is 4-8x.

Each ``||R_T||_2`` is bounded from above in float64 through the smaller Gram matrix
``G = R R^T``: ``||R||^2 = lambda_max(G)``, and the computed ``G`` and its computed top
eigenvalue are off by at most the a-priori error terms added in :func:`matrix_norm_upper`
(rounded outward).
"""

from __future__ import annotations

import itertools
import math

import torch

__all__ = ["matrix_norm_upper", "reshape_bound", "tap_frobenius_bound"]

_EPS64 = float(torch.finfo(torch.float64).eps)
_TINY64 = float(torch.finfo(torch.float64).tiny)


def _gamma(n: int, eps: float) -> float:
    """Higham's ``gamma_n = n eps / (1 - n eps)``: relative error of an n-term dot product."""
    return n * eps / (1 - n * eps)


def matrix_norm_upper(m: torch.Tensor, rtol: float | None = None) -> float:
    """Certified upper bound on ``||m||_2`` of a real matrix (``m`` cast to float64).

    ``||m||^2 = lambda_max(G)``, ``G = m m^T`` for the smaller side ``r``. The computed
    Gram matrix differs from the exact one by at most ``gamma_c |m| |m|^T`` entrywise
    (``c`` the longer side), whose 2-norm is <= ``gamma_c ||m||_F^2``; ``||G|| <=
    ||m||_F^2``, which also caps the result.

    ``rtol=None``: a backward-stable symmetric eigensolver returns ``lambda_max`` of ``G +
    E`` with ``||E|| <= p(r) eps ||G||`` (taken as ``p(r) = 8 r``, generous for LAPACK's
    ``syevd``). ``rtol > 0``: no eigensolver -- a Lanczos estimate ``lam`` (a lower bound),
    then a Cholesky factorisation of ``t I - G`` at ``t = lam (1 + rtol)`` that completes
    proves ``lambda_max(G) <= t`` up to Rump's shift (:func:`_cholesky_upper`); about
    ``r^3 / 3`` flops instead of the eigensolver's ``~ 9 r^3``, and within ``rtol`` of
    ``||m||^2`` (``t`` is raised if the factorisation fails).
    """
    m = m.detach().to(torch.float64)
    if m.ndim != 2:
        msg = f"m must be a matrix, got shape {tuple(m.shape)}"
        raise ValueError(msg)
    r, c = m.shape
    if r > c:
        m, r, c = m.T, c, r
    top = float(torch.linalg.vector_norm(m, math.inf)) if m.numel() else 0.0
    if top == 0.0:
        return 0.0
    if not math.isfinite(top):
        return math.inf
    exp, lost = 0, 0.0
    if not 2.0**-400 < top < 2.0**400:
        # scale by a power of two so that the squares neither underflow nor overflow;
        # entries scaled below the subnormal range are lost, each by < 2^-1074, in norm
        # by < sqrt(r c) 2^-1074 (added back below)
        exp = math.frexp(top)[1]
        for part in (-exp // 2, -exp - (-exp // 2)):  # two factors, each a normal float
            m = m * 2.0**part
        lost = math.sqrt(r * c) * 2.0**-1074
    if r == 1:
        fro2 = float(torch.sum(m * m)) * (1 + _gamma(r * c + 1, _EPS64))
        norm = math.sqrt(fro2) * (1 + 2 * _EPS64)
    else:
        gram = m @ m.T
        # each diagonal entry is a c-term sum of squares, their sum r more terms
        fro2 = float(torch.sum(torch.diagonal(gram))) * (1 + _gamma(r + c + 1, _EPS64))
        eps_g = _gamma(c + 1, _EPS64) * fro2  # ||fl(G) - G||_2
        if rtol is None:
            lam = float(torch.linalg.eigvalsh(gram)[-1]) + 8 * r * _EPS64 * fro2
        else:
            lam = _cholesky_upper(gram, eps_g, fro2, rtol)
        norm = math.sqrt(min(fro2, lam + eps_g)) * (1 + 2 * _EPS64)
    try:
        return math.ldexp((norm + lost) * (1 + 2 * _EPS64), exp)
    except OverflowError:
        return math.inf


def _lanczos_top(gram: torch.Tensor, steps: int = 24) -> float:
    """Largest Ritz value of a few Lanczos steps on a symmetric matrix (an estimate only)."""
    r = gram.shape[0]
    steps = min(steps, r)
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(r, generator=g, dtype=gram.dtype).to(gram.device)
    q = q / torch.linalg.vector_norm(q)
    basis = torch.empty((steps, r), dtype=gram.dtype, device=gram.device)
    alphas, betas = [], []
    for j in range(steps):
        basis[j] = q
        w = gram @ q
        alphas.append(torch.dot(q, w))
        b = basis[: j + 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - b.T @ (b @ w)
        beta = torch.linalg.vector_norm(w)
        if j == steps - 1 or float(beta) == 0.0:
            break
        betas.append(beta)
        q = w / beta
    t = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.diag(torch.stack(betas), 1)
        t = t + off + off.T
    if not bool(torch.all(torch.isfinite(t))):
        return 0.0  # an estimate only: the Cholesky test then starts low and is raised
    return float(torch.linalg.eigvalsh(t.cpu())[-1])


def _cholesky_upper(gram: torch.Tensor, eps_g: float, fro2: float, rtol: float) -> float:
    """Proven ``lambda_max(fl(G)) <=`` the returned value, by Cholesky of ``t I - fl(G)``.

    Success gives ``R^T R = B + dB`` with ``||dB||_2 <= g/(1-g) tr(B)``, ``g =
    gamma_{r+1}`` (Demmel; Rump, *Verification of positive definiteness*, BIT 46, 2006,
    Lemma 2.1, Theorem 2.3), so ``lambda_min(B) >= -g/(1-g) tr(B)``; ``B`` is ``t I -
    fl(G)`` up to the rounding of its diagonal, ``eps (t + |G_ii|)`` per entry. Hence
    ``lambda_max(fl(G)) <= t + eps (t + max G_ii) + g/(1-g) tr(B)``, ``tr(B) <= r t``
    (``G_ii >= 0``), plus a generous underflow term. Falls back to the eigensolver's bound
    when no ``t`` below ``||m||_F^2`` passes.
    """
    r = gram.shape[0]
    lam = max(_lanczos_top(gram), 0.0)
    g = _gamma(2 * r + 4, _EPS64)  # the complex constant: generous for the real case
    c = g / (1 - g)
    diag_max = float(torch.max(torch.diagonal(gram)))
    for grow in (1.0, 4.0, 32.0):
        t = lam * (1 + grow * rtol) + eps_g
        if t >= fro2:
            break
        b = -gram
        b.diagonal().add_(t)
        if int(torch.linalg.cholesky_ex(b).info) == 0:
            shift = _EPS64 * (t + diag_max) + c * r * t + 64.0 * r * r * (1 + t) * _TINY64
            return (t + shift) * (1 + 4 * _EPS64)
    return float(torch.linalg.eigvalsh(gram)[-1]) + 8 * r * _EPS64 * fro2


def _reshapes(d_g: torch.Tensor, cheap_factor: float = 2.0) -> list[tuple[int, ...]]:
    """Spatial-axis subsets ``T`` whose Gram cost is within ``cheap_factor`` of the least."""
    _, o, i, *k = d_g.shape
    subsets = [t for r in range(len(k) + 1) for t in itertools.combinations(range(len(k)), r)]

    def cost(t: tuple[int, ...]) -> float:
        rows = o * math.prod(k[a] for a in t)
        cols = i * math.prod(k[a] for a in range(len(k)) if a not in t)
        return min(rows, cols) ** 2 * max(rows, cols)

    best = min(cost(t) for t in subsets)
    return sorted((t for t in subsets if cost(t) <= cheap_factor * best), key=cost)


def reshape_bound(
    weight: torch.Tensor,
    groups: int = 1,
    selection_norm: float = 1.0,
    *,
    rtol: float | None = None,
    reshapes: int | None = None,
) -> float:
    """Certified upper bound on a convolution's norm from its kernel: see the module doc.

    Parameters
    ----------
    weight : torch.Tensor
        ``(c_out, c_in/groups, *k)`` of the conv view (a transposed layer's own weight
        ``(c_in, c_out/groups, *k)`` is exactly that: it is the adjoint of that conv).
        A 2-D tensor is a Linear layer's matrix.
    groups : int
    selection_norm : float
        A bound on every tap's ``||S_p P||`` (:meth:`~convsv.torch._layers.Layer.
        selection_norm`; at most ``||P||``, the padding map's norm; 1 for zero padding).
    rtol : float, optional
        Passed to :func:`matrix_norm_upper` (None: eigensolver, tightest; ``rtol``: a
        Cholesky certificate within about ``rtol / 2`` of each matrix norm, much cheaper).
    reshapes : int, optional
        Try only this many of the cheapest reshapings ``T`` (None: every one within 2x
        of the cheapest Gram cost; the bound is their minimum).

    Returns
    -------
    float
        ``selection_norm * sqrt(prod k) * min_T max_g ||R_T(W_g)||_2``, rounded up.
    """
    w = weight.detach()
    if w.ndim == 2:
        return matrix_norm_upper(w, rtol) * selection_norm * (1 + 2 * _EPS64)
    w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    d = w.ndim - 3
    k = tuple(w.shape[3:])
    best = math.inf
    for t in _reshapes(w)[:reshapes]:
        if not t:  # (c_out, c_in * k): the weight's own layout, no copy
            mats = w.reshape(groups, w.shape[1], -1)
        else:  # rows (c_out, k_T), columns (k_rest, c_in): any order has the same norm
            rest = tuple(a for a in range(d) if a not in t)
            perm = (0, *(3 + a for a in t), 1, *(3 + a for a in rest), 2)
            rows = w.shape[1] * math.prod(k[a] for a in t)
            mats = w.permute(perm).reshape(groups, rows, -1)
        best = min(best, max(matrix_norm_upper(mats[g], rtol) for g in range(groups)))
    return best * math.sqrt(math.prod(k)) * selection_norm * (1 + 4 * _EPS64)


def tap_frobenius_bound(weight: torch.Tensor, selection_norm: float = 1.0) -> float:
    """``max_p ||S_p P|| sum_p ||W_p||_F``: a cruder, O(size) certified bound.

    Computed in the weight's own precision (no float64 copy: this runs every training
    step) and rounded up by ``gamma`` of the summation lengths, which bounds the rounding
    error of any summation order.
    """
    w = weight.detach()
    eps = float(torch.finfo(w.dtype).eps)
    if w.ndim == 2:
        return (
            float(torch.linalg.vector_norm(w)) * selection_norm * (1 + _gamma(w.numel() + 2, eps))
        )
    per_tap = torch.linalg.vector_norm(w, dim=(0, 1))
    total = float(torch.sum(per_tap))
    n = w.shape[0] * w.shape[1] + per_tap.numel() + 2
    return total * selection_norm * (1 + _gamma(n, eps))
