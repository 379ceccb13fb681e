r"""SVD and Spectral Tensor Train parameterisations of weights (Obukhov et al., AISTATS 2021).

SVDP (Sec. 3.1-3.2): ``W = U diag(sigma) V^T`` with ``U``, ``V`` Householder frames
(:mod:`convsv.stiefel`). With the identity spectrum ``U`` uses the reduced ``St_U`` form,
which removes the ``O(r)`` redundancy ``W = (UQ)(VQ)^T``.

STTP (Sec. 3.3): ``d_out = prod(n_out)``, ``d_in = prod(n_in)``; ``U`` and ``V`` are
tensor trains whose core matricisations ``(R_{k-1} n_k) x R_k`` are Stiefel frames
(Proposition 1), so ``U``, ``V`` are frames and ``sigma`` are exactly the singular values
of ``W``. TT ranks ``R_k = min(r, R_k^max)`` from eq. (3) on the tensorised ``W~`` with
modes ``(n_out..., reversed n_in...)``. All cores are reduced except the two beside
``Sigma``; with the identity spectrum the last core of ``U`` is reduced too. The number of
free parameters equals the paper's DOF formula (checked in the tests).

Spectral constraints (Sec. 3.4): ``"identity"`` (``Sigma = I``), ``"learned"``
(``Sigma = diag(S)``), ``"lipschitz"`` (``Sigma = diag(S / ||S||_inf)``, Lipschitz 1), and
the D-optimal regulariser ``-sum log |sigma|`` (:func:`d_optimal_regularizer`).

Conv kernels: parameterise ``W`` of shape ``c_out x (c_in * prod(k))`` and reshape it to
``(c_out, c_in, *k)``. Note that this controls the spectrum of the reshaped kernel matrix,
not of the convolution operator (for that, see :func:`convsv.singular_values`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._array_api import device_of, itemsize, resolve, to_namespace
from ._validation import as_int, check_choice, check_memory
from .stiefel import frame_from_householder, stiefel_dof

__all__ = [
    "STTPSpec",
    "d_optimal_regularizer",
    "prime_factors",
    "spectrum_values",
    "sttp_matrix",
    "sttp_spec",
    "svdp_dof",
    "svdp_matrix",
]

SPECTRA = ("identity", "learned", "lipschitz")


def prime_factors(n: int) -> tuple[int, ...]:
    """Prime factors of ``n`` with repetition, ascending (the paper's default modes)."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return tuple(out) or (1,)


def spectrum_values(s: Any, spectrum: str, r: int, *, like: Any, xp: Any) -> Any:
    """``sigma`` of a spectral constraint (Obukhov et al. Sec. 3.4)."""
    check_choice(spectrum, "spectrum", SPECTRA)
    if spectrum == "identity":
        return xp.ones((r,), dtype=like.dtype, device=device_of(like))
    if s is None or s.ndim != 1 or int(s.shape[0]) != r:
        got = None if s is None else tuple(s.shape)
        msg = f"spectrum={spectrum!r} needs s of shape ({r},), got {got}"
        raise ValueError(msg)
    if spectrum == "lipschitz":
        return s / xp.max(xp.abs(s))
    return s


def d_optimal_regularizer(sigma: Any) -> Any:
    """D-optimal regulariser ``-sum(log|sigma|)`` (Obukhov et al. eq. 9, Jiang et al. 2018)."""
    xp = resolve(None, sigma)
    return -xp.sum(xp.log(xp.abs(sigma)))


def svdp_dof(d_out: int, d_in: int, r: int, *, spectrum: str = "learned") -> int:
    """SVDP degrees of freedom: ``r (d_out + d_in) - r^2`` (learned/lipschitz) or
    ``r (d_out + d_in) - r (3r + 1) / 2`` (identity spectrum), Obukhov et al. Sec. 3.1-3.2."""
    check_choice(spectrum, "spectrum", SPECTRA)
    identity = spectrum == "identity"
    return stiefel_dof(d_out, r, reduced=identity) + stiefel_dof(d_in, r) + (0 if identity else r)


def svdp_matrix(
    hu: Any,
    hv: Any,
    s: Any = None,
    *,
    spectrum: str = "learned",
    memory_limit: Any = None,
    xp: Any = None,
) -> Any:
    """``W = U diag(sigma) V^T`` from Householder parameters (Obukhov et al. Sec. 3.1).

    Parameters
    ----------
    hu : array ``(..., d_out, r)``
        Parameters of ``U`` (reduced form when ``spectrum="identity"``).
    hv : array ``(..., d_in, r)``
    s : array ``(r,)``, optional
        Spectrum parameters (not used for ``"identity"``).
    spectrum : {"learned", "lipschitz", "identity"}
    memory_limit : float or str, optional
        Byte budget for ``W`` (default 1 GiB), checked before it is built.
    xp : namespace, optional

    Returns
    -------
    array ``(..., d_out, d_in)`` whose singular values are ``|sigma|``.
    """
    xp = resolve(xp, hu, hv)
    hu, hv = to_namespace(hu, xp, name="hu"), to_namespace(hv, xp, name="hv")
    r = int(hu.shape[-1])
    if int(hv.shape[-1]) != r:
        msg = (
            f"hu and hv must have the same rank r (last axis), got {hu.shape[-1]} and "
            f"{hv.shape[-1]}"
        )
        raise ValueError(msg)
    batch = math.prod(int(v) for v in hu.shape[:-2])
    check_memory(
        batch * int(hu.shape[-2]) * int(hv.shape[-2]) * itemsize(xp, hu.dtype),
        memory_limit,
        "the SVDP weight W",
        "raise memory_limit",
    )
    s = None if s is None else to_namespace(s, xp, name="s")
    sigma = spectrum_values(s, spectrum, r, like=hu, xp=xp)
    u = frame_from_householder(hu, reduced=spectrum == "identity")
    v = frame_from_householder(hv)
    return (u * sigma) @ xp.matrix_transpose(v)


@dataclass(frozen=True)
class STTPSpec:
    """Shapes of an STTP parameterisation (Obukhov et al. Sec. 3.3)."""

    modes_out: tuple[int, ...]
    modes_in: tuple[int, ...]
    rank: int
    spectrum: str

    @property
    def ranks(self) -> tuple[int, ...]:
        """``R = (1, R_1^out, ..., r, ..., R_1^in, 1)``, ``R_k = min(r, R_k^max)`` (eq. 3)."""
        modes = (*self.modes_out, *reversed(self.modes_in))
        total = len(modes)
        out = [1]
        for k in range(1, total):
            rmax = min(math.prod(modes[:k]), math.prod(modes[k:]))
            out.append(self.rank if k == len(self.modes_out) else min(self.rank, rmax))
        return (*out, 1)

    def _side(self, modes: tuple[int, ...], ranks: list[int], last_reduced: bool) -> list[tuple]:
        shapes = []
        for k, n in enumerate(modes):
            reduced = k < len(modes) - 1 or last_reduced
            shapes.append((ranks[k] * n, ranks[k + 1], reduced))
        return shapes

    @property
    def u_cores(self) -> list[tuple[int, int, bool]]:
        """``(rows, cols, reduced)`` of each Householder-parameterised core of ``U``."""
        rk = list(self.ranks[: len(self.modes_out) + 1])
        return self._side(self.modes_out, rk, self.spectrum == "identity")

    @property
    def v_cores(self) -> list[tuple[int, int, bool]]:
        rk = list(reversed(self.ranks))[: len(self.modes_in) + 1]
        return self._side(self.modes_in, rk, False)

    @property
    def dof(self) -> int:
        """The paper's formula ``sum R_{k-1} n_k R_k - sum_{k<D} R_k^2`` (learned spectrum),
        minus ``r (r + 1) / 2`` for the identity spectrum."""
        modes = (*self.modes_out, *reversed(self.modes_in))
        ranks = self.ranks
        total = sum(ranks[k] * modes[k] * ranks[k + 1] for k in range(len(modes)))
        total -= sum(v * v for v in ranks[1:-1])
        if self.spectrum == "identity":
            total -= self.rank * (self.rank + 1) // 2
        return total

    @property
    def n_params(self) -> int:
        """Free parameters actually used by :func:`sttp_matrix`."""
        count = sum(stiefel_dof(a, b, reduced=red) for a, b, red in self.u_cores + self.v_cores)
        return count + (0 if self.spectrum == "identity" else self.rank)


def sttp_spec(
    d_out: int,
    d_in: int,
    rank: int,
    *,
    modes_out: Any = None,
    modes_in: Any = None,
    spectrum: str = "learned",
) -> STTPSpec:
    """Shapes of an STTP of a ``d_out x d_in`` weight with rank ``rank``.

    ``modes_out``/``modes_in`` default to the prime factors of ``d_out``/``d_in``.
    """
    check_choice(spectrum, "spectrum", SPECTRA)
    d_out, d_in = as_int(d_out, "d_out", minimum=1), as_int(d_in, "d_in", minimum=1)
    rank = as_int(rank, "rank")
    modes_out = (
        prime_factors(d_out)
        if modes_out is None
        else tuple(as_int(v, "modes_out", minimum=1) for v in modes_out)
    )
    modes_in = (
        prime_factors(d_in)
        if modes_in is None
        else tuple(as_int(v, "modes_in", minimum=1) for v in modes_in)
    )
    if math.prod(modes_out) != d_out or math.prod(modes_in) != d_in:
        msg = (
            f"modes must multiply to the dimensions: prod{modes_out} != {d_out} or "
            f"prod{modes_in} != {d_in}"
        )
        raise ValueError(msg)
    if not 1 <= rank <= min(d_out, d_in):
        msg = f"rank must be in [1, min(d_out, d_in)={min(d_out, d_in)}], got {rank!r}"
        raise ValueError(msg)
    return STTPSpec(modes_out, modes_in, int(rank), spectrum)


def _tt_frame(params: list[Any], shapes: list[tuple], modes: tuple[int, ...], xp: Any) -> Any:
    """``T(U^(1), ..., U^(D))`` (eq. 8) from Householder-parameterised cores: ``(prod n, r)``."""
    acc = None
    for h, (rows, cols, reduced), n in zip(params, shapes, modes):
        if tuple(int(v) for v in h.shape) != (rows, cols):
            msg = f"core parameters must have shape {(rows, cols)}, got {tuple(h.shape)}"
            raise ValueError(msg)
        core = frame_from_householder(h, reduced=reduced)  # (R_{k-1} n_k, R_k)
        if acc is None:
            acc = core
        else:
            r_prev = int(acc.shape[1])
            t = acc @ xp.reshape(core, (r_prev, n * cols))
            acc = xp.reshape(t, (int(acc.shape[0]) * n, cols))
    return acc


def sttp_matrix(
    spec: STTPSpec,
    u_params: Any,
    v_params: Any,
    s: Any = None,
    *,
    memory_limit: Any = None,
    xp: Any = None,
) -> Any:
    """The ``d_out x d_in`` weight of an STTP (Obukhov et al. Sec. 3.3, Fig. 2b).

    Parameters
    ----------
    spec : STTPSpec
    u_params, v_params : sequences of arrays
        Householder parameters of the cores, shapes ``spec.u_cores`` / ``spec.v_cores``.
    s : array ``(rank,)``, optional
        Spectrum parameters (not for ``"identity"``).
    memory_limit : float or str, optional
        Byte budget for ``W`` (default 1 GiB), checked before anything is built.
    xp : namespace, optional

    Returns
    -------
    array
        ``U diag(sigma) V^T`` with ``U``, ``V`` orthonormal: its singular values are ``|sigma|``.
    """
    u_params, v_params = list(u_params), list(v_params)
    xp = resolve(xp, *u_params, *v_params)
    u_params = [to_namespace(p, xp, name="u_params") for p in u_params]
    v_params = [to_namespace(p, xp, name="v_params") for p in v_params]
    if len(u_params) != len(spec.u_cores) or len(v_params) != len(spec.v_cores):
        msg = (
            f"need {len(spec.u_cores)} u_params and {len(spec.v_cores)} v_params, got "
            f"{len(u_params)} and {len(v_params)}"
        )
        raise ValueError(msg)
    d_out, d_in = math.prod(spec.modes_out), math.prod(spec.modes_in)
    check_memory(
        d_out * d_in * itemsize(xp, u_params[0].dtype),
        memory_limit,
        f"the {d_out} x {d_in} STTP weight W",
        "raise memory_limit",
    )
    u = _tt_frame(u_params, spec.u_cores, spec.modes_out, xp)
    v = _tt_frame(v_params, spec.v_cores, spec.modes_in, xp)
    s = None if s is None else to_namespace(s, xp, name="s")
    sigma = spectrum_values(s, spec.spectrum, spec.rank, like=u, xp=xp)
    return (u * sigma) @ xp.matrix_transpose(v)
