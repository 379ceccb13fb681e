r"""Householder parameterisation of Stiefel frames (Obukhov et al., AISTATS 2021, Sec. 3.1-3.2).

A frame ``U`` in ``St(d, r)`` (orthonormal columns) is written as a product of ``r``
Householder reflections applied to the first ``r`` columns of the identity,

.. math:: U = H_0 H_1 \cdots H_{r-1} \begin{bmatrix} I_r \\ 0 \end{bmatrix},
          \qquad H_j = I - 2 \frac{v_j v_j^\top}{v_j^\top v_j},

with the LAPACK layout of the parameters ``h`` (``d x r``): reflector ``j`` is column
``j`` below the diagonal, its diagonal entry is an implied 1 and entries above the
diagonal are ignored (the paper's Fig. 3). That is ``d r - r (r + 1) / 2`` degrees of
freedom (the full form). The reduced form ``St_U`` also ignores the rows above ``r``
(``d r - r^2`` degrees of freedom), as in the paper's reduced parameterisation.

The inverse map is a Householder QR with the sign convention ``R = +I``; frames whose
column ``j`` (after the first ``j`` reflections) equals ``e_j`` exactly need the identity
as ``H_j``, which the unit-diagonal form cannot represent. For ``d > r`` that is a set of
measure zero (the base point ``[I; 0]`` among it); for square frames (``d = r``) the last
reflection is forced, so the form reaches only determinant ``(-1)^r``: half of ``O(r)``.
:func:`householder_from_frame` raises for such frames.
"""

from __future__ import annotations

import math
from typing import Any

from ._array_api import device_of, resolve, to_namespace
from ._validation import as_int, check_choice

__all__ = ["frame_from_householder", "householder_from_frame", "project_to_stiefel", "stiefel_dof"]


def stiefel_dof(d: int, r: int, *, reduced: bool = False) -> int:
    """Degrees of freedom of the Householder parameterisation of ``St(d, r)``.

    Obukhov et al. 2021, Sec. 3.2: ``d r - r (r + 1) / 2`` (full) or ``d r - r^2`` (reduced).
    """
    d, r = as_int(d, "d"), as_int(r, "r")
    if not 1 <= r <= d:
        msg = f"need integers 1 <= r <= d, got d={d!r}, r={r!r}"
        raise ValueError(msg)
    return d * r - (r * r if reduced else r * (r + 1) // 2)


def _mask(d: int, r: int, reduced: bool, xp: Any, dtype: Any, device: Any) -> Any:
    rows = xp.arange(d, device=device)[:, None]
    cols = xp.arange(r, device=device)[None, :]
    keep = rows > (r - 1 if reduced else cols)
    return xp.astype(keep, dtype)


def _check(h: Any, name: str) -> tuple[int, int]:
    if h.ndim < 2:
        msg = f"{name} must have shape (..., d, r), got {tuple(h.shape)}"
        raise ValueError(msg)
    d, r = int(h.shape[-2]), int(h.shape[-1])
    if r > d:
        msg = f"{name} must have r <= d (a tall frame), got shape {tuple(h.shape)}"
        raise ValueError(msg)
    return d, r


def frame_from_householder(
    h: Any, *, reduced: bool = False, method: str = "wy", xp: Any = None
) -> Any:
    """Orthonormal frame from Householder parameters (LAPACK layout): reflections x ``[I_r; 0]``.

    Obukhov et al. 2021, Sec. 3.1, eq. (6) and Fig. 3. The same parameters as LAPACK's
    ``orgqr`` / ``torch.linalg.householder_product`` with ``tau_j = 2 / ||v_j||^2``.

    Parameters
    ----------
    h : array
        ``(..., d, r)`` real parameters; only the strictly-lower part (rows ``>= r`` for
        ``reduced=True``) is used.
    reduced : bool
        The reduced ``St_U`` form.
    method : {"wy", "loop"}
        ``"wy"`` (default): compact WY form ``Q = I - V T V^T`` with
        ``T^{-1} = triu(V^T V, 1) + diag(V^T V) / 2`` (Schreiber & Van Loan), i.e. two
        matrix products and one ``r x r`` solve; ``"loop"``: ``r`` rank-1 reflections.
    xp : namespace, optional

    Returns
    -------
    array
        ``(..., d, r)`` with orthonormal columns; differentiable under torch autograd.
    """
    check_choice(method, "method", ("wy", "loop"))
    xp = resolve(xp, h)
    h = to_namespace(h, xp, name="h")
    d, r = _check(h, "h")
    eye = xp.eye(d, r, dtype=h.dtype, device=device_of(h))
    v = h * _mask(d, r, reduced, xp, h.dtype, device_of(h)) + eye  # reflectors as columns
    if method == "wy":
        s = xp.matrix_transpose(v) @ v  # (..., r, r)
        upper = _mask(r, r, False, xp, h.dtype, device_of(h))  # strictly lower -> transpose below
        tinv = (
            s * xp.matrix_transpose(upper) + s * xp.eye(r, dtype=h.dtype, device=device_of(h)) / 2
        )
        # Q[:, :r] = E - V T V[:r]^T with V[:r] unit upper... V[:r]^T is lower unit triangular
        rhs = xp.matrix_transpose(v[..., :r, :])
        return eye - v @ xp.linalg.solve(tinv, rhs)
    u = xp.broadcast_to(eye, h.shape)
    for j in range(r - 1, -1, -1):
        vj = v[..., :, j : j + 1]  # (..., d, 1)
        coef = 2.0 / xp.sum(vj * vj, axis=-2, keepdims=True)
        u = u - vj * (coef * xp.sum(vj * u, axis=-2, keepdims=True))
    return u


def householder_from_frame(u: Any, *, reduced: bool = False, xp: Any = None) -> Any:
    """Householder parameters of a frame: the inverse of :func:`frame_from_householder`.

    A Householder QR of ``u`` with ``R = +I`` (Obukhov et al. 2021, Sec. 3.1).

    Parameters
    ----------
    u : array
        ``(..., d, r)`` with orthonormal columns (for ``reduced=True``, a frame of the
        reduced form, e.g. one produced by ``frame_from_householder(..., reduced=True)``).
    reduced : bool
    xp : namespace, optional

    Returns
    -------
    array
        ``(..., d, r)`` parameters, zero where the layout ignores them.
    """
    xp = resolve(xp, u)
    a = to_namespace(u, xp, name="u")
    d, r = _check(a, "u")
    rows = xp.arange(d, device=device_of(a))
    cols = []
    for j in range(r):
        x = a[..., :, j : j + 1]
        below = xp.astype(rows[:, None] >= j, a.dtype)
        e = xp.astype(rows[:, None] == j, a.dtype)
        v = (x - e) * below  # reflects x (a unit vector in rows >= j) onto e_j
        pivot = xp.sum(v * e, axis=-2, keepdims=True)
        # (a zero pivot -- x = e_j -- cannot be represented; it is divided by 1 here, no
        # 0 / 0, and the round trip below refuses the result)
        v = v / xp.where(pivot == 0, xp.ones_like(pivot), pivot)  # unit diagonal
        cols.append(v - e)
        vv = xp.sum(v * v, axis=-2, keepdims=True)
        coef = 2.0 / xp.where(vv == 0, xp.ones_like(vv), vv)
        a = a - v * (coef * xp.sum(v * a, axis=-2, keepdims=True))
    h = xp.concat(cols, axis=-1) * _mask(d, r, reduced, xp, a.dtype, device_of(a))
    # a zero pivot gives 0 / 0; a pivot that is zero but for rounding gives garbage (for
    # d = r, a frame of the other determinant came back 1.8 off): check the round trip
    eps = float(xp.finfo(h.dtype).eps)
    ok = bool(xp.all(xp.isfinite(h)))
    if ok:
        back = frame_from_householder(h, reduced=reduced, xp=xp)
        ok = float(xp.max(xp.abs(back - to_namespace(u, xp, name="u")))) <= math.sqrt(eps) * d
    if not ok:
        msg = (
            f"u has a column that equals e_j after the previous reflections (the identity, "
            f"the base point [I; 0], or for d = r = {r} a frame of determinant "
            f"{(-1) ** (r + 1):+d}): the unit-diagonal Householder form cannot represent it"
            if d == r
            else "u has a column that equals e_j after the previous reflections (e.g. the "
            "base point [I; 0]): the unit-diagonal Householder form cannot represent it"
        )
        raise ValueError(msg)
    return h


def project_to_stiefel(a: Any, *, method: str = "polar", xp: Any = None) -> Any:
    """Map a matrix onto the Stiefel manifold by the polar factor or the QR retraction.

    ``"polar"``: ``U V^T`` from the SVD, the Frobenius-nearest frame; ``"qr"``: ``Q`` of a
    QR factorisation with a positive diagonal of ``R``.

    Parameters
    ----------
    a : array ``(..., d, r)``, ``r <= d``
    method : {"polar", "qr"}
    xp : namespace, optional
    """
    from ._validation import check_choice

    check_choice(method, "method", ("polar", "qr"))
    xp = resolve(xp, a)
    a = to_namespace(a, xp, name="a")
    _check(a, "a")
    if method == "polar":
        u, _, vh = xp.linalg.svd(a, full_matrices=False)
        return u @ vh
    q, r = xp.linalg.qr(a)
    diag = xp.linalg.diagonal(r)
    sign = 1.0 - 2.0 * xp.astype(diag < 0, q.dtype)
    return q * sign[..., None, :]
