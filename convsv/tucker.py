r"""Tucker decompositions of kernels with rank-adaptive truncation (TDLRT).

Zangrando, Schotthöfer, Ceruti, Kusch, Tudisco, *Rank-adaptive spectral pruning of
convolutional layers during training*: a kernel ``W`` (all ``d + 2`` modes) is kept as
``W = C x_1 U_1 x_2 ... x_N U_N`` with orthonormal factors. Their Algorithm 1 augments
each basis with its new iterate, ``U_i^new = orth([K_i | U_i])``, projects the core
``C~ = C x_i (U_i^new^T U_i)`` and rounds it to a relative tolerance ``tau``: the smallest
ranks (per-mode HOSVD truncation) with ``||C~ - C^|| <= tau ||C~||``; the rounded
factors are pulled back, ``U_i <- U_i^new U_i'``. The gradient (descent) steps of the
algorithm belong to the user's training loop; this module provides the format, the
rounding and the augmentation/adjustment step.

The truncation rule: each mode keeps the smallest rank whose discarded singular values
of the mode unfolding have norm ``<= tau ||C|| / sqrt(N)``; by the HOSVD error bound the
total error is then ``<= tau ||C||``. (The exact smallest Tucker rank for a given error
is not computable in general; this is the quasi-optimal rule tntorch uses.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._array_api import array_namespace
from ._tensor import mode_product, rank_for_tolerance, unfold_svd
from ._validation import as_float, check_choice, normalize_tuple, prepare_kernel

__all__ = ["TuckerKernel", "decompose", "rank_adjustment_step", "round_tucker"]


@dataclass(frozen=True)
class TuckerKernel:
    """A kernel in Tucker format: the core times one orthonormal factor per mode (oihw order)."""

    core: Any
    factors: tuple[Any, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.core.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(u.shape[0]) for u in self.factors)

    @property
    def n_params(self) -> int:
        return math.prod(self.ranks) + sum(int(u.shape[0]) * int(u.shape[1]) for u in self.factors)

    @property
    def compression_ratio(self) -> float:
        """Full parameters / Tucker parameters (TDLRT's compression rate is ``1 - 1/ratio``)."""
        return math.prod(self.shape) / self.n_params

    def to_full(self, layout: str = "oihw") -> Any:
        check_choice(layout, "layout", ("oihw", "hwio"))
        xp = array_namespace(self.core, *self.factors)
        t = self.core
        for mode, u in enumerate(self.factors):
            t = mode_product(t, u, mode, xp)
        if layout == "hwio":
            d = t.ndim - 2
            t = xp.permute_dims(t, (*range(2, 2 + d), 1, 0))
        return t


def _hosvd(t: Any, ranks: tuple[int, ...] | None, tol: float | None, xp: Any) -> TuckerKernel:
    nmodes = t.ndim
    svds = [unfold_svd(t, m, xp) for m in range(nmodes)]
    if tol is not None:
        # (relative to ||t||^2, the squared singular values of any unfolding summed)
        ranks = tuple(rank_for_tolerance(s, tol**2 / nmodes) for _, s in svds)
    ranks = tuple(min(r, int(u.shape[1])) for r, (u, _) in zip(ranks, svds))
    factors = tuple(u[:, :r] for r, (u, _) in zip(ranks, svds))
    core = t
    for mode, u in enumerate(factors):
        core = mode_product(core, xp.matrix_transpose(u), mode, xp)
    return TuckerKernel(core, factors)


def _check_tol(
    ranks: Any, tol: Any, shape: tuple[int, ...]
) -> tuple[tuple[int, ...] | None, float | None]:
    if (ranks is None) == (tol is None):
        msg = f"pass exactly one of ranks=... and tol=..., got ranks={ranks!r}, tol={tol!r}"
        raise ValueError(msg)
    if tol is not None:
        tol = as_float(tol, "tol (a relative tolerance)", minimum=0.0, maximum=1.0, max_open=True)
        return None, tol
    out = normalize_tuple(ranks, "ranks", len(shape), per="mode of the kernel, oihw order")
    if isinstance(ranks, (tuple, list)) or getattr(ranks, "ndim", 0) == 1:
        # one rank per mode asked for explicitly: more than the mode has is a mistake (an
        # int rank is capped per mode instead, as "this rank where the mode allows")
        over = [(i, r, m) for i, (r, m) in enumerate(zip(out, shape)) if r > m]
        if over:
            i, r, m = over[0]
            msg = f"ranks[{i}]={r} exceeds mode {i}'s size {m} (kernel shape {shape})"
            raise ValueError(msg)
    return out, None


def decompose(
    kernel: Any,
    *,
    ranks: Any = None,
    tol: float | None = None,
    layout: str = "oihw",
    xp: Any = None,
) -> TuckerKernel:
    """Tucker decomposition (HOSVD) of a kernel over all ``d + 2`` modes.

    Zangrando et al., Section 3 (Tucker format) and the rounding of Algorithm 1.

    Parameters
    ----------
    kernel : array
        Real kernel, ``(c_out, c_in, *k)`` (or ``"hwio"``); modes are taken in oihw order.
    ranks : int or tuple of int, optional
        One rank per mode (oihw order).
    tol : float, optional
        Relative tolerance ``tau``: ``||W - to_full()|| <= tau ||W||``, per-mode rule in
        the module docstring. Exactly one of ``ranks``/``tol``.
    layout : {"oihw", "hwio"}
    xp : namespace, optional

    Returns
    -------
    TuckerKernel
    """
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp, allow_complex=False)
    return _hosvd(k, *_check_tol(ranks, tol, tuple(int(v) for v in k.shape)), xp)


def round_tucker(tk: TuckerKernel, *, tol: float) -> TuckerKernel:
    """Round a Tucker kernel to relative tolerance ``tol`` (re-HOSVD of its core)."""
    _, tol = _check_tol(None, tol, tuple(int(v) for v in tk.core.shape))
    xp = array_namespace(tk.core, *tk.factors)
    small = _hosvd(tk.core, None, tol, xp)
    return TuckerKernel(small.core, tuple(u @ v for u, v in zip(tk.factors, small.factors)))


def rank_adjustment_step(tk: TuckerKernel, new_factors: Any, *, tol: float) -> TuckerKernel:
    """Basis augmentation and rank adjustment of TDLRT's Algorithm 1 (lines 5-12).

    ``U_i^new = orth([K_i | U_i])``, ``C~ = C x_i (U_i^new^T U_i)`` (the same tensor in the
    augmented bases), then the Tucker rounding of ``C~`` to ``tol`` pulled back:
    ``U_i <- U_i^new U_i'``. Ranks can grow up to twice and shrink to what ``tol`` needs.

    Parameters
    ----------
    tk : TuckerKernel
        Current core and orthonormal factors.
    new_factors : sequence of arrays
        The new factor iterates ``K_i`` (``n_i x r_i``), e.g. after a K-step.
    tol : float
        Relative tolerance ``tau`` of the rounding.

    Returns
    -------
    TuckerKernel
        Orthonormal factors, core of the adjusted ranks.
    """
    xp = array_namespace(tk.core, *tk.factors)
    new_factors = tuple(new_factors)
    if len(new_factors) != len(tk.factors):
        msg = (
            f"new_factors must hold {len(tk.factors)} matrices (one per mode), got "
            f"{len(new_factors)}"
        )
        raise ValueError(msg)
    bases = []
    core = tk.core
    for mode, (u, kk) in enumerate(zip(tk.factors, new_factors)):
        aug = xp.concat([kk, u], axis=1)
        q, _ = xp.linalg.qr(aug)
        q = q[:, : min(int(aug.shape[0]), int(aug.shape[1]))]
        bases.append(q)
        core = mode_product(core, xp.matrix_transpose(q) @ u, mode, xp)
    return round_tucker(TuckerKernel(core, tuple(bases)), tol=tol)
