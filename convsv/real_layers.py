r"""Real (non-periodic) layers through the matrix-free Krylov solver.

Glue between :mod:`convsv.geometry` (the layer as ``A = R A_per E``, applied in the tap
domain by :func:`~convsv.geometry.layer_apply` / :func:`~convsv.geometry.layer_adjoint`)
and :func:`convsv.krylov.svds` (Golub-Kahan-Lanczos on flat vectors). Used by
:func:`convsv.operator_norm` and :func:`convsv.svd` for layers that are not a periodic
layer up to a permutation (zero / reflect / replicate padding, strides with ``n % s != 0``,
transposed layers with output padding, ...).

Certificates (``operator_norm(..., full_output=True)``):

* ``lower = ||A v|| / ||v||`` for the top Ritz vector ``v`` (Cauchy interlacing makes every
  Ritz value a lower bound; this one is re-evaluated with one matvec in double precision
  and rounded down by a proven bound on that matvec's error, :func:`matvec_error_bound`);
* ``upper = ||E||_2 ||A_per||_2`` from the periodic embedding
  (:func:`convsv.bounds.norm_upper_bound`, rounded up).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import device_of, itemsize, real_dtype
from ._backends import detached, single_products_exact
from ._validation import check_memory
from .geometry import Geometry, layer_adjoint, layer_apply
from .krylov import KrylovInfo, _count, _positive, default_tol, svds

__all__ = ["KrylovNormInfo", "KrylovWarning", "krylov_norm", "krylov_svd", "matvec_error_bound"]


class KrylovWarning(UserWarning):
    """The Krylov solver stopped at ``maxiter`` before reaching ``tol``."""


@dataclass(frozen=True)
class KrylovNormInfo:
    """Certificate of :func:`convsv.operator_norm` for a non-periodic layer.

    Attributes
    ----------
    lower, upper : float
        Proven ``lower <= ||layer||_2 <= upper`` (rounded outward; ``upper`` is ``nan``
        unless requested).
    method : str
        ``"krylov"``.
    converged : bool
        The residual reached ``tol * value``.
    iterations, matvecs, restarts : int
        Lanczos steps, products with the layer or its adjoint, thick restarts.
    residual : float
        ``||A^H u - s v||`` of the returned top triplet (``s`` is within it of a singular
        value, and within about ``residual**2 / gap`` of the norm).
    tol : float
        The relative tolerance used.
    single_steps : int
        Lanczos steps of the single-precision warm-up that chose the start vector of a
        double-precision run (0 when there was none); ``iterations`` and ``matvecs``
        count the double-precision run only.
    """

    lower: float
    upper: float
    method: str
    converged: bool
    iterations: int
    matvecs: int
    restarts: int
    residual: float
    tol: float
    single_steps: int = 0


def _flat_ops(kern: Any, geom: Geometry, xp: ModuleType) -> tuple[Any, Any]:
    ins, outs = geom.in_shape, geom.out_shape

    def matvec(x: Any) -> Any:
        return xp.reshape(layer_apply(kern, geom, xp.reshape(x, ins), xp), (-1,))

    def rmatvec(y: Any) -> Any:
        return xp.reshape(layer_adjoint(kern, geom, xp.reshape(y, outs), xp), (-1,))

    return matvec, rmatvec


def matvec_error_bound(kern: Any, geom: Geometry, xp: ModuleType, *, unit: float) -> float:
    r"""Proven ``e`` with ``||fl(A x) - A x|| <= e ||x||`` for the tap-domain matvec.

    Every output entry of :func:`~convsv.geometry.conv_apply` (and of the adjoint, which
    also folds the padded copies back) is a sum of at most ``T = max(c_in, c_out) / g *
    prod(k) * m + m`` products, ``m`` the largest number of padded positions that copy one
    input entry (1 for zero padding); padding itself is exact (copies). Hence
    ``|fl(Ax) - Ax| <= gamma_T |A| |x|`` entrywise (Higham 2002, eq. 3.5; doubled for
    complex arithmetic), and by Schur's test ``|| |A| ||_2 <= sqrt(r c)`` with ``r`` the
    largest row sum and ``c`` the largest column sum of ``|A|``: ``r <= max_o sum |K[o]|``,
    ``c <= m max_i sum |K[:, i]|`` (each tap reads a padded position for at most one output).
    ``unit`` is the unit roundoff of the arithmetic (``2**-53`` for double).
    """
    spec = geom.conv
    g = spec.groups
    k_np = xp.abs(kern)  # reductions stay on the device; two scalars come back
    row = float(xp.max(xp.sum(xp.reshape(k_np, (spec.c_out, -1)), axis=1)))
    per_in = xp.sum(xp.reshape(k_np, (g, spec.c_out // g, spec.c_in // g, -1)), axis=(1, 3))
    col = float(xp.max(per_in))
    mult = math.prod(
        int(max(1, np.bincount(src[src >= 0]).max(initial=1))) if np.any(src >= 0) else 1
        for src in geom.pad_src
    )
    terms = max(spec.c_in, spec.c_out) // g * math.prod(spec.k) * mult + mult
    cplx = xp.isdtype(kern.dtype, "complex floating")
    gamma = (terms + 2) * unit / (1 - (terms + 2) * unit) * (2.0 if cplx else 1.0)
    return gamma * math.sqrt(row * col * mult)


#: Residual (relative) that the single-precision warm-up of a double-precision norm aims at:
#: well above float32's rounding floor of the tap-domain products (~1e-6 relative).
WARMUP_TOL = 1e-4


def _warmup(
    kern: Any, geom: Geometry, xp: ModuleType, *, tol: float, maxiter: int | None, progress: bool
) -> tuple[Any | None, int]:
    """Top right Ritz vector of the layer in single precision, and the steps it took.

    A double-precision norm spends most of its Lanczos steps resolving the top of the
    spectrum (clustered for zero padding: the periodic symbol's supremum is approached by
    many values); single-precision products are 1.5-2x cheaper on CPUs and far more on
    GPUs, and their Ritz vector, residual ``WARMUP_TOL``, starts the double-precision run
    close enough that it needs a few steps for ``tol >= WARMUP_TOL`` and about half of
    its steps otherwise (measured: c=64 and 256, n=32, zero padding).
    """
    single = xp.complex64 if xp.isdtype(kern.dtype, "complex floating") else xp.float32
    k32 = xp.astype(kern, single)
    rows, cols = geom.shape
    matvec, rmatvec = _flat_ops(k32, geom, xp)
    try:
        _, _, vh, info = svds(
            matvec,
            rmatvec,
            (rows, cols),
            k=1,
            which="largest",
            tol=max(tol, WARMUP_TOL),
            maxiter=maxiter,
            ncv=min(rows, cols, 20),
            dtype=single,
            device=device_of(kern),
            progress=progress,
            xp=xp,
        )
    except (ValueError, ArithmeticError):  # e.g. LAPACK on non-finite Ritz values
        return None, 0
    v = xp.conj(vh[0, :]) if xp.isdtype(single, "complex floating") else vh[0, :]
    if not bool(xp.all(xp.isfinite(v))):  # a useless start: the double run starts afresh
        return None, info.iterations
    return xp.astype(v, kern.dtype), info.iterations


def _check_bases(
    geom: Geometry, k: int, ncv: int, dtype: Any, xp: ModuleType, memory_limit: float | None
) -> None:
    """The Krylov bases, the vectors returned and a few work vectors of the matvec."""
    rows, cols = geom.shape
    check_memory(
        ((ncv + 1 + k + 4) * cols + (ncv + k + 4) * rows) * itemsize(xp, dtype),
        memory_limit,
        f"the Krylov bases ({ncv} vectors of {rows} + {cols} entries)",
        "raise memory_limit or ask for fewer triplets (k=...)",
    )


def _solve(
    kern: Any,
    geom: Geometry,
    xp: ModuleType,
    *,
    k: int,
    which: str,
    tol: float | None,
    maxiter: int | None,
    v0: Any,
    memory_limit: float | None,
    progress: bool,
    ncv: int | None = None,
) -> tuple[Any, Any, Any, KrylovInfo]:
    rows, cols = geom.shape
    dtype = kern.dtype
    ncv = min(rows, cols, max(20, 2 * k + 8) if ncv is None else ncv)
    _check_bases(geom, k, ncv, dtype, xp, memory_limit)
    matvec, rmatvec = _flat_ops(kern, geom, xp)
    wide = xp.complex128 if xp.isdtype(dtype, "complex floating") else xp.float64
    kern64 = xp.astype(kern, wide)

    def matvec64(x: Any) -> Any:  # the certificate's matvec, in double precision
        return xp.reshape(
            layer_apply(kern64, geom, xp.reshape(xp.astype(x, wide), geom.in_shape), xp), (-1,)
        )

    err = matvec_error_bound(kern64, geom, xp, unit=2.0**-53)
    return svds(
        matvec,
        rmatvec,
        (rows, cols),
        k=k,
        which=which,
        tol=tol,
        maxiter=maxiter,
        ncv=ncv,
        v0=v0,
        matvec_error=err,
        certify_matvec=matvec64,
        dtype=dtype,
        device=device_of(kern),
        progress=progress,
        xp=xp,
    )


def krylov_norm(
    kern: Any,
    geom: Geometry,
    xp: ModuleType,
    *,
    tol: float | None = None,
    maxiter: int | None = None,
    upper: bool = False,
    memory_limit: float | None = None,
    progress: bool = False,
) -> tuple[Any, KrylovNormInfo]:
    """Operator norm of the layer ``geom`` by Golub-Kahan-Lanczos, with its certificate.

    Parameters
    ----------
    kern : array
        The conv-form kernel (``(c_out, c_in/groups, *k)``; ConvTranspose's weight as is).
    geom : Geometry
    xp : namespace
    tol : float, optional
        Relative residual tolerance (default ``sqrt(eps)`` of the kernel's precision):
        the value is then within ``tol`` (relative) of a singular value, in practice of
        the norm to about ``tol**2``.
    maxiter : int, optional
        Lanczos steps (each one product with the layer and one with its adjoint).
    upper : bool
        Also compute the proven upper bound (the periodic embedding's spectrum: a full
        periodic spectral pass, often more work than the Krylov run itself).
    memory_limit : float, optional
    progress : bool

    Returns
    -------
    value : array
        0-d, the kernel's real dtype, namespace and device.
    info : KrylovNormInfo
    """
    tol = default_tol(xp, kern.dtype) if tol is None else _positive(tol, "tol")
    maxiter = None if maxiter is None else _count(maxiter, "maxiter")
    # the solver runs on the kernel's values (no autograd graph through its bases); a
    # grad-requiring kernel gets its derivative from the converged pair below
    graph, kern = kern, detached(kern)
    # scaled by a power of two (exact) to entries of size ~1: the products, squares and
    # residuals of the run neither overflow nor underflow (a 1e-200 kernel's residuals
    # vanished and its value came out 55% low, "converged"); values are scaled back
    kern, expo = _unit_scaled(kern, xp)
    v0, steps32, ncv = None, 0, None
    # before any work: the double-precision run's bases (the warm-up's are half as large)
    _check_bases(geom, 1, min(*geom.shape, 20), kern.dtype, xp, memory_limit)
    peak = float(xp.max(xp.abs(kern))) if xp.finfo(kern.dtype).bits == 64 else 0.0
    # single precision only where its products neither overflow nor lose most digits
    if (
        2.0**-60 < peak < 2.0**60
        and min(geom.shape) > 40
        and (maxiter is None or maxiter >= 60)
        and single_products_exact(kern)
    ):
        # single-precision warm-up (see _warmup); the value and its certificate come from
        # the double-precision run that follows, and both share maxiter
        v0, steps32 = _warmup(
            kern,
            geom,
            xp,
            tol=tol,
            maxiter=None if maxiter is None else maxiter - 20,
            progress=progress,
        )
        if v0 is not None and tol >= WARMUP_TOL:
            ncv = 10  # the start already has the wanted residual: verify and polish it
        if maxiter is not None:
            maxiter = max(20, maxiter - steps32)
    u, s, vh, kinfo = _solve(
        kern,
        geom,
        xp,
        k=1,
        which="largest",
        tol=tol,
        maxiter=maxiter,
        v0=v0,
        memory_limit=memory_limit,
        progress=progress,
        ncv=ncv,
    )
    if not kinfo.converged:
        msg = (
            f"operator_norm: the Krylov solver stopped after {kinfo.iterations} steps with "
            f"relative residual {kinfo.residuals[0] / max(float(s[0]), 1e-300):.2e} > "
            f"tol={tol:g}; the value is a lower bound, pass a larger maxiter=... to go on"
        )
        warnings.warn(msg, KrylovWarning, stacklevel=3)
    hi = float("nan")
    if upper:
        from .bounds import norm_upper_bound

        hi = norm_upper_bound(kern, geom, xp, memory_limit=memory_limit, progress=progress)
    info = KrylovNormInfo(
        lower=math.ldexp(float(kinfo.lower), -expo),
        upper=math.ldexp(hi, -expo) if math.isfinite(hi) else hi,
        method="krylov",
        converged=kinfo.converged,
        iterations=kinfo.iterations,
        matvecs=kinfo.matvecs,
        restarts=kinfo.restarts,
        residual=math.ldexp(float(kinfo.residuals[0]), -expo),
        tol=float(tol),
        single_steps=steps32,
    )
    value = xp.reshape(xp.astype(_unscaled(s[:1], expo, xp), real_dtype(xp, kern.dtype)), ())
    if getattr(graph, "requires_grad", False):
        value = _differentiable_values(graph, geom, u, vh, xp)[0]
    return value, info


def _unit_scaled(kern: Any, xp: ModuleType) -> tuple[Any, int]:
    """``(kern * 2^e, e)`` with the largest entry in ``[1/2, 1)``: exact (two power-of-two
    steps, as 2^e alone overflows for subnormal peaks); ``e = 0`` for a zero kernel."""
    peak = float(xp.max(xp.abs(kern))) if kern.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return kern, 0
    expo = -math.frexp(peak)[1]
    if expo == 0:
        return kern, 0
    return kern * math.ldexp(1.0, expo // 2) * math.ldexp(1.0, expo - expo // 2), expo


def _unscaled(values: Any, expo: int, xp: ModuleType) -> Any:
    """``values * 2^-expo`` (singular values of the scaled layer, back to the layer's)."""
    if expo == 0:
        return values
    return values * math.ldexp(1.0, -(expo // 2)) * math.ldexp(1.0, -(expo - expo // 2))


def _differentiable_values(graph: Any, geom: Geometry, u: Any, vh: Any, xp: ModuleType) -> Any:
    """``Re u_i^H A(K) v_i`` for each converged triplet, on ``graph``'s autograd graph.

    The derivative of a simple singular value is ``u v^H`` (pulled back to the kernel), and
    with the vectors held fixed that is exactly this expression's derivative; its value
    is the singular value to the solver's tolerance (a Rayleigh quotient: to ``tol^2``).
    """
    cplx = xp.isdtype(vh.dtype, "complex floating")
    v = xp.conj(vh) if cplx else vh  # (k, cols)
    k = int(v.shape[0])
    x = xp.reshape(xp.astype(v, graph.dtype), (k, *geom.in_shape))
    y = xp.reshape(layer_apply(graph, geom, x, xp), (k, -1))  # (k, rows)
    uu = xp.astype(xp.permute_dims(u, (1, 0)), y.dtype)  # (k, rows)
    vals = xp.sum((xp.conj(uu) if cplx else uu) * y, axis=-1)
    vals = xp.real(vals) if cplx else vals
    # (the pair's sign is the solver's: u^H A v = s >= 0; a flipped pair flips back)
    return xp.astype(xp.abs(vals), real_dtype(xp, graph.dtype))


def krylov_svd(
    kern: Any,
    geom: Geometry,
    xp: ModuleType,
    *,
    k: int,
    which: str,
    tol: float | None = None,
    maxiter: int | None = None,
    memory_limit: float | None = None,
    progress: bool = False,
) -> tuple[Any, Any, Any]:
    """``k`` singular triplets of the public layer, in :func:`convsv.svd`'s shapes.

    Returns ``U (k, *out_shape)``, ``S (k,)`` descending and ``V (k, *in_shape)`` with
    ``layer(V[i]) = S[i] U[i]`` (``V`` holds the right singular vectors themselves, as
    :func:`convsv.svd` does for periodic layers).
    """
    scaled, expo = _unit_scaled(detached(kern), xp)  # (see krylov_norm)
    u, s, vh, info = _solve(
        scaled,
        geom,
        xp,
        k=k,
        which=which,
        tol=tol,
        maxiter=maxiter,
        v0=None,
        memory_limit=memory_limit,
        progress=progress,
    )
    s = _unscaled(s, expo, xp)
    if getattr(kern, "requires_grad", False):  # as krylov_norm's value
        s = _differentiable_values(kern, geom, u, vh, xp)
    if not info.converged:
        msg = (
            f"svd: the Krylov solver stopped after {info.iterations} steps with residuals "
            f"up to {max(info.residuals):.2e} (tol={tol}); pass a larger maxiter=... to go on"
        )
        warnings.warn(msg, KrylovWarning, stacklevel=3)
    v = xp.conj(vh) if xp.isdtype(vh.dtype, "complex floating") else vh
    uu = xp.reshape(xp.permute_dims(u, (1, 0)), (k, *geom.out_shape))
    return uu, s, xp.reshape(v, (k, *geom.in_shape))
