r"""TT (Tucker-2) convolution kernels and their exact singular values.

Senderovich, Bulatova, Obukhov, Rakhuba, NeurIPS 2022, Section 3. A kernel in the
TT format (eq. 4)

.. math:: K[o, i, p] = \sum_{\alpha, \beta} K^{(1)}[i, \alpha]\,
          K^{(2)}[\beta, \alpha, p]\, K^{(3)}[\beta, o]

is a 1x1 convolution ``c_in -> r1``, a ``k^d`` convolution ``r1 -> r2`` and a 1x1
convolution ``r2 -> c_out`` (eq. 5). With orthonormal outer cores (eq. 7; always
reachable by QR, Lemma 1) the nonzero singular values of the layer are those of the
small middle layer (Theorem 1), for any stride, since the outer maps are a coisometry
on the right and an isometry on the left. :func:`singular_values` follows Algorithm 1:
QR of ``K1`` and ``K3^T``, absorb the ``R`` factors into the middle core, spectrum of
the ``r1 -> r2`` layer, padded with the zeros that make the multiset equal to the
full layer's.

Layout: ``K1`` is ``(c_in, r1)``, the middle core ``K2`` is a convolution kernel in
convsv's default (PyTorch) layout ``(r2, r1, *k)``, ``K3`` is ``(r2, c_out)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._array_api import array_namespace, as_result, device_of, resolve, to_namespace
from ._backends import worker_blas
from ._tensor import mode_product, rank_for_tolerance, unfold_svd
from ._validation import as_float, check_choice, conv_spec, normalize_tuple, prepare_kernel
from .spectrum import singular_values as _full_singular_values

__all__ = [
    "TTKernel",
    "clip",
    "decompose",
    "orthogonality_loss",
    "orthonormalize",
    "singular_values",
]


@dataclass(frozen=True)
class TTKernel:
    """A convolution kernel in TT / Tucker-2 form (Senderovich et al. eq. 4).

    Attributes
    ----------
    k1 : array ``(c_in, r1)``
    k2 : array ``(r2, r1, *k)``, the middle core as an oihw kernel
    k3 : array ``(r2, c_out)``
    """

    k1: Any
    k2: Any
    k3: Any

    def __post_init__(self) -> None:
        xp = array_namespace(self.k1, self.k2, self.k3)
        if self.k1.ndim != 2 or self.k3.ndim != 2 or self.k2.ndim not in (3, 4, 5):
            msg = (
                f"TTKernel needs k1 (c_in, r1), k2 (r2, r1, *k) with 1-3 spatial axes and "
                f"k3 (r2, c_out); got shapes {tuple(self.k1.shape)}, {tuple(self.k2.shape)}, "
                f"{tuple(self.k3.shape)}"
            )
            raise ValueError(msg)
        r2, r1 = int(self.k2.shape[0]), int(self.k2.shape[1])
        if int(self.k1.shape[1]) != r1 or int(self.k3.shape[0]) != r2:
            msg = (
                f"TT ranks disagree: k1 has r1={int(self.k1.shape[1])}, k2 has (r2, r1)="
                f"({r2}, {r1}), k3 has r2={int(self.k3.shape[0])}"
            )
            raise ValueError(msg)
        del xp

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.k2.shape[1]), int(self.k2.shape[0])

    @property
    def c_in(self) -> int:
        return int(self.k1.shape[0])

    @property
    def c_out(self) -> int:
        return int(self.k3.shape[1])

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.k2.shape[2:])

    @property
    def n_params(self) -> int:
        """Parameters of the three cores: ``c_in r1 + r1 r2 k^d + r2 c_out``."""
        r1, r2 = self.ranks
        return self.c_in * r1 + r1 * r2 * math.prod(self.kernel_size) + r2 * self.c_out

    @property
    def compression_ratio(self) -> float:
        """Full kernel parameters / TT parameters (TDLRT's "c.r." is ``1 - 1/ratio``)."""
        return self.c_out * self.c_in * math.prod(self.kernel_size) / self.n_params

    def to_full(self, layout: str = "oihw") -> Any:
        """The full kernel ``(c_out, c_in, *k)`` (or ``(*k, c_in, c_out)`` for ``"hwio"``)."""
        check_choice(layout, "layout", ("oihw", "hwio"))
        xp = array_namespace(self.k1, self.k2, self.k3)
        full = mode_product(
            mode_product(self.k2, xp.matrix_transpose(self.k3), 0, xp), self.k1, 1, xp
        )
        if layout == "hwio":
            d = full.ndim - 2
            full = xp.permute_dims(full, (*range(2, 2 + d), 1, 0))
        return full


def decompose(
    kernel: Any,
    *,
    ranks: tuple[int, int] | None = None,
    tol: float | None = None,
    layout: str = "oihw",
    xp: Any = None,
) -> TTKernel:
    """TT / Tucker-2 decomposition of a kernel by HOSVD of its two channel unfoldings.

    Senderovich et al. 2022, eq. (4); the outer cores come out orthonormal (eq. 7).

    Parameters
    ----------
    kernel : array
        Real kernel, ``(c_out, c_in, *k)`` or ``(*k, c_in, c_out)`` with ``layout="hwio"``.
    ranks : (r1, r2), optional
        Input- and output-channel ranks.
    tol : float, optional
        Relative Frobenius tolerance: each channel mode keeps the smallest rank whose
        discarded singular values have norm ``<= tol * ||K|| / sqrt(2)``, so that
        ``||K - to_full()|| <= tol * ||K||`` (HOSVD bound). Exactly one of ``ranks``
        and ``tol`` must be given.
    layout : {"oihw", "hwio"}
    xp : namespace, optional

    Returns
    -------
    TTKernel
        With orthonormal ``k1`` columns and ``k3`` rows. If only one mode is truncated,
        the reconstruction error equals the norm of that mode's discarded singular values.
    """
    if (ranks is None) == (tol is None):
        msg = f"pass exactly one of ranks=(r1, r2) and tol=..., got ranks={ranks!r}, tol={tol!r}"
        raise ValueError(msg)
    if tol is not None:
        tol = as_float(tol, "tol (a relative tolerance)", minimum=0.0, maximum=1.0, max_open=True)
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp, allow_complex=False)
    c_out, c_in = int(k.shape[0]), int(k.shape[1])
    u_out, s_out = unfold_svd(k, 0, xp)
    u_in, s_in = unfold_svd(k, 1, xp)
    if tol is not None:
        # (relative to ||K||^2 = sum of either unfolding's squared singular values)
        r1, r2 = rank_for_tolerance(s_in, tol**2 / 2), rank_for_tolerance(s_out, tol**2 / 2)
    else:
        if (isinstance(ranks, (tuple, list)) or getattr(ranks, "ndim", 0) == 1) and len(ranks) != 2:
            # normalize_tuple's own message speaks of spatial axes, which ranks are not
            msg = f"ranks must be an int or a pair (r1, r2) of ints, got {ranks!r}"
            raise ValueError(msg)
        r1, r2 = normalize_tuple(ranks, "ranks", 2)
        if r1 > c_in or r2 > c_out:
            msg = f"ranks must satisfy r1 <= c_in={c_in} and r2 <= c_out={c_out}, got {ranks!r}"
            raise ValueError(msg)
    r1, r2 = min(r1, int(u_in.shape[1])), min(r2, int(u_out.shape[1]))
    k1 = u_in[:, :r1]
    k3 = xp.matrix_transpose(u_out[:, :r2])
    core = mode_product(mode_product(k, k3, 0, xp), xp.matrix_transpose(k1), 1, xp)
    return TTKernel(k1, core, k3)


def singular_values(
    tt_kernel: TTKernel,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    method: str = "auto",
    solver: str = "svd",
    memory_limit: float | None = None,
    progress: bool = False,
    xp: Any = None,
) -> Any:
    """All singular values of a TT layer (Senderovich et al. 2022, Theorem 1, Algorithm 1).

    QR of ``K1`` and ``K3^T``; the ``R`` factors are absorbed into the middle core, whose
    layer's spectrum (:func:`convsv.singular_values`, any stride) holds every nonzero
    singular value; zeros are appended up to ``min(rows, cols)`` of the full layer.
    Works whether or not the outer cores are orthonormal.

    Parameters
    ----------
    tt_kernel : TTKernel
    n, stride, dilation, method, solver, memory_limit, progress, xp
        As in :func:`convsv.singular_values` (circular padding).

    Returns
    -------
    array
        Sorted descending, length ``min(c_out prod(n/s), c_in prod(n))``.
    """
    if not isinstance(tt_kernel, TTKernel):
        msg = f"tt_kernel must be a convsv.tt.TTKernel, got {type(tt_kernel).__name__}"
        raise TypeError(msg)
    xp = resolve(xp, tt_kernel.k2)
    with worker_blas(xp):  # the QRs must not leave BLAS threads spinning beside the pool
        core = orthonormalize(tt_kernel, xp=xp).k2
    k2 = core
    from .spectrum import check_result_fits

    full_spec = conv_spec(
        xp.zeros((tt_kernel.c_out, tt_kernel.c_in, *([1] * (k2.ndim - 2))), device=device_of(k2)),
        n,
        stride,
        dilation,
        1,
    )
    check_result_fits(full_spec, xp, k2.dtype)
    sv = _full_singular_values(
        core,
        n,
        stride,
        dilation=dilation,
        method=method,
        solver=solver,
        memory_limit=memory_limit,
        progress=progress,
        xp=xp,
    )
    missing = full_spec.n_singular_values - int(sv.shape[0])
    if missing <= 0:
        return sv
    return as_result(xp.concat([sv, xp.zeros((missing,), dtype=sv.dtype, device=device_of(sv))]))


def orthogonality_loss(tt_kernels: Any) -> Any:
    """Orthogonality loss of TT layers, Senderovich et al. 2022, eq. (11).

    ``sum_i ||K1_i^T K1_i - I||_F^2 + ||K3_i K3_i^T - I||_F^2`` divided by
    ``sum_i r1_i^2 + r2_i^2``. Differentiable under torch autograd.

    Parameters
    ----------
    tt_kernels : TTKernel or sequence of TTKernel

    Returns
    -------
    array
        0-d, in the cores' namespace and dtype.
    """
    if isinstance(tt_kernels, TTKernel):
        tt_kernels = [tt_kernels]
    tt_kernels = list(tt_kernels)
    if not tt_kernels or not all(isinstance(t, TTKernel) for t in tt_kernels):
        msg = "tt_kernels must be a TTKernel or a non-empty sequence of them"
        raise TypeError(msg)
    xp = array_namespace(*[a for t in tt_kernels for a in (t.k1, t.k3)])
    total, denom = None, 0
    for t in tt_kernels:
        r1, r2 = t.ranks
        g1 = xp.matrix_transpose(t.k1) @ t.k1 - xp.eye(r1, dtype=t.k1.dtype, device=device_of(t.k1))
        g3 = t.k3 @ xp.matrix_transpose(t.k3) - xp.eye(r2, dtype=t.k3.dtype, device=device_of(t.k3))
        term = xp.sum(g1 * g1) + xp.sum(g3 * g3)
        total = term if total is None else total + term
        denom += r1 * r1 + r2 * r2
    return total / denom


def orthonormalize(tt_kernel: TTKernel, *, xp: Any = None) -> TTKernel:
    """The same kernel with orthonormal outer cores (Senderovich et al. 2022, Lemma 1).

    QR of ``K1`` and ``K3^T``; the triangular factors are absorbed into the middle core.
    """
    xp = resolve(xp, tt_kernel.k2)
    k1, k2, k3 = (
        to_namespace(a, xp, name=nm)
        for a, nm in ((tt_kernel.k1, "k1"), (tt_kernel.k2, "k2"), (tt_kernel.k3, "k3"))
    )
    q1, r1f = xp.linalg.qr(k1)
    q3, r3f = xp.linalg.qr(xp.matrix_transpose(k3))
    core = mode_product(mode_product(k2, r3f, 0, xp), r1f, 1, xp)
    return TTKernel(q1, core, xp.matrix_transpose(q3))


def clip(tt_kernel: TTKernel, n: Any, max_sv: float, stride: Any = 1, **kwargs: Any) -> TTKernel:
    """Clip the singular values of a TT layer (Senderovich et al. 2022, Sec. 5.2).

    With orthonormal outer cores the layer's nonzero singular values are the middle
    layer's (Theorem 1), so the middle core is projected with :func:`convsv.clip` (same
    keywords) and the outer cores are kept orthonormal. Returns a new :class:`TTKernel`
    whose operator norm is ``<= max_sv``: the core is clipped to ``max_sv`` divided by the
    (rounded-up) norms of the outer cores, which are orthonormal only to rounding.
    """
    if kwargs.get("full_output"):
        msg = "convsv.tt.clip returns a TTKernel; call convsv.clip on the middle core for info"
        raise ValueError(msg)
    if kwargs.get("layout", "oihw") != "oihw":
        # the middle core is (r2, r1, *k) whatever layout the full kernel was given in: a
        # square core read as hwio would be another layer, clipped without a word
        msg = (
            f"layout must be 'oihw' for a TTKernel (its middle core is (r2, r1, *k)), "
            f"got {kwargs['layout']!r}"
        )
        raise ValueError(msg)
    from .projection import _check_bounds
    from .projection import clip as _clip

    ortho = orthonormalize(tt_kernel, xp=kwargs.get("xp"))
    hi, lo = _check_bounds(max_sv, kwargs.get("min_sv"))
    # the outer cores are orthonormal only to rounding: ||K|| <= ||Q1|| ||core|| ||Q3||,
    # so the core's bound leaves room for their norms (each computed to ~eps sqrt(dim))
    xp = array_namespace(ortho.k1, ortho.k3)
    room = 1.0
    for q in (ortho.k1, ortho.k3):
        eps = float(xp.finfo(q.dtype).eps)
        room *= float(xp.max(xp.linalg.svdvals(q))) * (1 + 8 * eps * math.sqrt(max(q.shape)))
    top = hi / max(room, 1.0)
    if lo is not None:  # min_sv = max_sv: the core's room applies to both (within tol)
        kwargs = {**kwargs, "min_sv": min(lo, top)}
    core = _clip(ortho.k2, n, top, stride, **kwargs)
    return TTKernel(ortho.k1, core, ortho.k3)
