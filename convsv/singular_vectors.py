r"""Singular triplets of a periodic convolution, with real vectors for real kernels.

van Betteray, Rottmann, Kahl (LFA) recover the singular vectors of a convolution from
the SVDs of its symbol blocks: if ``P(theta) = U S V^H`` then the input signal
``x[c, s j + r] = v[(c, r)] e^{i theta . j} / sqrt(M)`` (``M = prod(n / s)``) is mapped to
``sigma u[o] e^{i theta . i} / sqrt(M)``. Those vectors are complex. For a real kernel
``P(-theta) = conj P(theta)``, so each pair of conjugate frequencies carries every
singular value twice; convsv returns the *real* basis of that pair: the SVD of the
real ``2 c_out x 2 s^d c_in`` block ``[[Re P, -Im P], [Im P, Re P]]`` has each value twice
with real vectors ``(a; b)``, and ``x = sqrt(2) Re((a + i b) e^{i theta . j}) / sqrt(M)``
are real, orthonormal (repeated singular values included) and satisfy
``A x = sigma y``. Self-conjugate frequencies (every ``theta_j`` in ``{0, pi}``) have
real blocks whose real SVD is used directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._array_api import complex_dtype, device_of, itemsize, real_dtype
from ._backends import single_threaded
from ._validation import (
    as_int,
    check_choice,
    check_memory,
    conv_spec,
    grouped,
    parse_memory_limit,
    prepare_kernel,
)
from .geometry import LayerKeywords, is_legacy, prepare_layer
from .lfa import point_symbols
from .polyphase import merge_phases, require_divisible
from .spectrum import _frequency_plan, chunked_block_svdvals

__all__ = ["svd"]


def svd(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    k: int | None = 6,
    which: str = "largest",
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
    memory_limit: float | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    xp: Any = None,
) -> tuple[Any, Any, Any]:
    """Top (or bottom) ``k`` singular triplets of a convolution layer.

    LFA (van Betteray et al.): per-frequency SVDs of the symbol blocks (Senderovich et
    al. 2022, Theorem 2, for strides), assembled into spatial singular vectors; real
    vectors for real kernels (see the module docstring).

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` (``"oihw"``) or ``(*k, c_in/groups, c_out)`` (``"hwio"``).
    n : int or tuple of int
        Input size, divisible by ``stride``.
    stride, dilation : int or tuple of int
    k : int or None
        Number of triplets; ``None`` for all ``min(rows, cols)`` (memory-checked).
    which : {"largest", "smallest"}
    groups : int
    layout : {"oihw", "hwio"}
    padding, padding_mode, transposed, output_padding
        As in :func:`convsv.singular_values`. Layers that are a periodic layer up to a
        permutation of the input (:attr:`convsv.geometry.Geometry.exact_periodic`) use
        the exact LFA path; the singular vectors are carried through the permutation.
        Other layers (zero/reflect/replicate padding, ``n % stride != 0``, ...) go to
        the matrix-free Golub-Kahan-Lanczos solver (:mod:`convsv.krylov`); there
        ``which="smallest"`` converges much more slowly than ``"largest"``.
    memory_limit : float, optional
        Byte budget for the returned vectors and the symbol grid (default 1 GiB).
    tol : float, optional
        Krylov path only: relative residual ``||A^H u - s v|| <= tol * s_max``
        (default ``sqrt(eps)`` of the kernel's precision).
    maxiter : int, optional
        Krylov path only: maximum Lanczos steps.
    xp : namespace, optional

    Returns
    -------
    U : array
        ``(k, c_out, *out)`` output singular vectors (``out = n / stride``, or the
        layer's output size; for ``transposed`` the ConvTranspose output).
    S : array
        ``(k,)`` singular values, sorted descending.
    Vh : array
        ``(k, c_in, *n)`` input singular vectors, so that
        ``apply(kernel, Vh[i]) == S[i] * U[i]``. Real for real kernels; orthonormal up
        to rounding.
    """
    check_choice(which, "which", ("largest", "smallest"))
    memory_limit = None if memory_limit is None else parse_memory_limit(memory_limit)
    if (
        padding != "circular"
        or not is_legacy(padding, padding_mode, transposed, output_padding)
        or not _divides(n, stride)  # not periodic: the Krylov path, as documented
    ):
        layer = LayerKeywords(
            stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
        )
        return _geometry_svd(kernel, n, layer, k, which, memory_limit, tol, maxiter, xp)
    return _periodic_svd(kernel, n, stride, k, which, dilation, groups, layout, memory_limit, xp)


def _divides(n: Any, stride: Any) -> bool:
    """Whether ``stride`` divides ``n`` on every axis (True when unreadable: the periodic
    path's own checks then name the argument)."""
    try:
        a, b = np.broadcast_arrays(
            np.atleast_1d(np.asarray(n, dtype=np.int64)),
            np.atleast_1d(np.asarray(stride, dtype=np.int64)),
        )
        return bool(np.all((b > 0) & (a % np.where(b > 0, b, 1) == 0)))
    except (TypeError, ValueError, OverflowError):
        return True


@single_threaded
def _periodic_svd(
    kernel: Any,
    n: Any,
    stride: Any,
    k: Any,
    which: str,
    dilation: Any,
    groups: Any,
    layout: str,
    memory_limit: float | None,
    xp: Any,
) -> tuple[Any, Any, Any]:
    """svd of convsv's periodic layer: per-frequency block SVDs (one BLAS thread each)."""
    kern, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    spec = conv_spec(kern, n, stride, dilation, groups)
    require_divisible(spec)
    k = _check_k(k, spec.n_singular_values)
    real = not xp.isdtype(kern.dtype, "complex floating")
    cdt, rdt = complex_dtype(xp, kern.dtype), real_dtype(xp, kern.dtype)
    vbytes = itemsize(xp, rdt if real else cdt)
    freqs = _frequency_plan(spec, real)
    nblocks = math.prod(f.size for f in freqs) * spec.groups
    co, cis = spec.c_out // spec.groups, spec.c_in // spec.groups * spec.phases
    check_memory(
        k * sum(spec.shape) * vbytes * 3 + nblocks * min(co, cis) * vbytes,
        memory_limit,
        f"{k} singular vector pairs",
        "ask for fewer (k=...)",
    )
    kg = grouped(kern, spec, xp)
    f_idx, g_idx = _select_blocks(kg, spec, xp, freqs, k, which, real, memory_limit)
    s, u, v, sel = _evaluate_blocks(kg, spec, xp, f_idx, g_idx, k, which, real, cdt)
    uu, vv = _assemble(u, v, sel, spec, xp, real, cdt)
    return uu, xp.astype(s, rdt), vv


def _check_k(k: Any, total: int) -> int:
    if k is None:
        return total
    k = as_int(k, "k")  # Python/NumPy ints and 0-d integer arrays, like every count
    if not 1 <= k <= total:
        msg = f"k must be an int in [1, {total}] (the number of singular values) or None, got {k!r}"
        raise ValueError(msg)
    return k


def _select_blocks(
    kg: Any,
    spec: Any,
    xp: Any,
    freqs: list[np.ndarray],
    k: int,
    which: str,
    real: bool,
    memory_limit: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies and groups of the fewest blocks that hold the ``k`` wanted values.

    Every block's singular values are computed (chunked); counting each conjugate pair
    of frequencies twice (real kernels store one of them), the blocks are taken in the
    order of their values until ``k`` values are covered. Returns ``(f_idx (Q, d),
    g_idx (Q,))``, one canonical frequency per conjugate pair for real kernels.
    """
    parts = chunked_block_svdvals(
        kg, spec, xp, freqs, method="lfa", solver="svd", memory_limit=memory_limit
    )
    vals = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)  # (F.., G, r)
    r = int(vals.shape[-1])
    fshape = tuple(f.size for f in freqs)
    weights = np.ones(fshape, dtype=np.int64)
    if real:
        last = freqs[-1]
        dup = (last != 0) & (2 * last != spec.m[-1])
        weights = weights * np.where(dup, 2, 1)
    w_entry = np.repeat(weights.reshape(-1), spec.groups * r)
    flat = xp.reshape(vals, (-1,))
    order = xp.argsort(flat, descending=(which == "largest"), stable=True)
    w_sorted = xp.take(xp.asarray(w_entry, device=device_of(flat)), order)
    cum = xp.cumulative_sum(w_sorted)
    q = int(xp.sum(xp.astype(cum < k, xp.int64))) + 1
    # a handful (<= k) of block ids come to the host for index bookkeeping only
    blocks = np.asarray([int(v) for v in order[:q]]) // r
    g_idx = blocks % spec.groups
    f_idx = np.stack(np.unravel_index(blocks // spec.groups, fshape), axis=-1)  # (Q, d)
    f_idx = np.stack([freqs[j][f_idx[:, j]] for j in range(spec.d)], axis=-1)
    m = np.asarray(spec.m)
    if real:
        # theta and -theta (both stored when the last index is 0 or m/2) are one
        # conjugate pair, handled together: keep one canonical representative
        neg = (-f_idx) % m
        use_neg = np.array([tuple(b) < tuple(a) for a, b in zip(f_idx, neg)], dtype=bool)
        f_idx = np.where(use_neg[:, None], neg, f_idx)
    uniq = np.unique(np.concatenate([f_idx, g_idx[:, None]], axis=1), axis=0)
    return uniq[:, :-1], uniq[:, -1]


def _evaluate_blocks(
    kg: Any,
    spec: Any,
    xp: Any,
    f_idx: np.ndarray,
    g_idx: np.ndarray,
    k: int,
    which: str,
    real: bool,
    cdt: Any,
) -> tuple[Any, Any, Any, np.ndarray]:
    """Full SVDs of the chosen blocks; the ``k`` wanted triplets, values descending.

    Returns ``(s (k,), u (k, co), v (k, cis), meta (k, d + 2))`` with ``meta`` rows
    ``(frequency, group, scale)`` for :func:`_assemble`.
    """
    cands = []
    if real:
        selfconj = np.all((2 * f_idx) % np.asarray(spec.m) == 0, axis=1)
        for mask, kind in ((selfconj, "self"), (~selfconj, "pair")):
            if mask.any():
                cands.append(_triplets(kg, spec, f_idx[mask], g_idx[mask], kind, xp, cdt))
    else:
        cands.append(_triplets(kg, spec, f_idx, g_idx, "complex", xp, cdt))
    s_all = xp.concat([c[0] for c in cands])
    u_all = xp.concat([c[1] for c in cands])
    v_all = xp.concat([c[2] for c in cands])
    meta = np.concatenate([c[3] for c in cands])  # (T, d + 2): freq, group, scale
    pick = xp.argsort(s_all, descending=(which == "largest"), stable=True)[:k]
    pick_h = np.asarray([int(v) for v in pick])
    if which == "smallest":  # always report descending
        pick = xp.flip(pick)
        pick_h = pick_h[::-1].copy()
    return (
        xp.take(s_all, pick),
        xp.take(u_all, pick, axis=0),
        xp.take(v_all, pick, axis=0),
        meta[pick_h],
    )


def _assemble(
    u: Any, v: Any, sel: np.ndarray, spec: Any, xp: Any, real: bool, cdt: Any
) -> tuple[Any, Any]:
    """Spatial singular vectors from block vectors: ``(k, c_out, *out)``, ``(k, c_in, *n)``."""
    cis = spec.c_in // spec.groups * spec.phases
    uu = _signals(u, sel, spec, spec.c_out // spec.groups, xp, cdt)
    vv = merge_phases(_signals(v, sel, spec, cis, xp, cdt), spec, xp)
    if real:
        uu, vv = xp.real(uu), xp.real(vv)
    return uu, vv


def _geometry_svd(
    kernel: Any,
    n: Any,
    layer: LayerKeywords,
    k: Any,
    which: str,
    memory_limit: float | None,
    tol: float | None,
    maxiter: int | None,
    xp: Any,
) -> tuple[Any, Any, Any]:
    """svd of a layer given by PyTorch-style keywords (:mod:`convsv.geometry`)."""
    kern, geom, xp = prepare_layer(kernel, n, layer, xp)
    if not geom.exact_periodic:
        from .real_layers import krylov_svd

        k = _check_k(k, geom.n_singular_values)
        return krylov_svd(
            kern, geom, xp, k=k, which=which, tol=tol, maxiter=maxiter, memory_limit=memory_limit
        )
    conv = geom.conv
    # A = A_per E with E a permutation (R keeps every row): A v = s u  <=>  A_per (E v) = s u
    u, s, vh = svd(
        kern,
        conv.n,
        conv.stride,
        k=k,
        which=which,
        dilation=conv.dilation,
        groups=conv.groups,
        memory_limit=memory_limit,
        xp=xp,
    )
    dev = device_of(vh)
    for j, src in enumerate(geom.embed_src):
        # v = E^T v_per: input a sits at the torus position t with src[t] = a
        where = xp.asarray(np.argsort(src), device=dev)
        vh = xp.take(vh, where, axis=2 + j)
    if geom.transposed:  # A^T conj(u) = s conj(v)
        if xp.isdtype(vh.dtype, "complex floating"):
            u, vh = xp.conj(u), xp.conj(vh)
        u, vh = vh, u
    return u, s, vh


def _triplets(
    kg: Any, spec: Any, f_idx: np.ndarray, g_idx: np.ndarray, kind: str, xp: Any, cdt: Any
) -> tuple[Any, Any, Any, np.ndarray]:
    """All triplets of the given blocks: values, u rows, v rows, (freq, group, scale)."""
    dev = device_of(kg)
    theta = 2 * np.pi * f_idx / np.asarray(spec.m)
    p = point_symbols(kg, spec, xp.asarray(theta, device=dev), xp)  # (Q, G, co, cis)
    onehot = np.zeros((len(g_idx), spec.groups))
    onehot[np.arange(len(g_idx)), g_idx] = 1.0
    p = xp.sum(p * xp.asarray(onehot, dtype=p.dtype, device=dev)[:, :, None, None], axis=1)
    co, cis = int(p.shape[-2]), int(p.shape[-1])
    if kind == "self":  # real block: real SVD
        uu, ss, vh = xp.linalg.svd(xp.real(p), full_matrices=False)
        u, v, scale = xp.astype(uu, cdt), xp.astype(vh, cdt), 1.0
    elif kind == "pair":
        a, b = xp.real(p), xp.imag(p)
        big = xp.concat([xp.concat([a, -b], axis=-1), xp.concat([b, a], axis=-1)], axis=-2)
        uu, ss, vh = xp.linalg.svd(big, full_matrices=False)
        u = xp.astype(uu[:, :co, :], cdt) + xp.astype(uu[:, co:, :], cdt) * 1j
        v = xp.astype(vh[:, :, :cis], cdt) + xp.astype(vh[:, :, cis:], cdt) * 1j
        scale = math.sqrt(2.0)
    else:
        uu, ss, vh = xp.linalg.svd(p, full_matrices=False)
        u, v, scale = uu, xp.conj(vh), 1.0
    q, r = int(ss.shape[0]), int(ss.shape[1])
    u = xp.reshape(xp.permute_dims(u, (0, 2, 1)), (q * r, co))
    v = xp.reshape(v, (q * r, cis))
    meta = np.concatenate(
        [np.repeat(f_idx, r, axis=0), np.repeat(g_idx, r)[:, None], np.full((q * r, 1), scale)],
        axis=1,
    )
    return xp.reshape(ss, (-1,)), u, v, meta


def _signals(vec: Any, meta: np.ndarray, spec: Any, width: int, xp: Any, cdt: Any) -> Any:
    """``scale * vec ⊗ e^{i theta . j} / sqrt(M)`` placed in its group: ``(k, G*width, *m)``."""
    d, dev = spec.d, device_of(vec)
    kk = int(vec.shape[0])
    f = meta[:, :d].astype(np.int64)
    g = meta[:, d].astype(np.int64)
    scale = meta[:, d + 1] / math.sqrt(math.prod(spec.m))
    phase = scale.reshape(kk, *([1] * d)).astype(np.complex128)
    for j, mj in enumerate(spec.m):
        ang = 2 * np.pi * ((f[:, j : j + 1] * np.arange(mj)[None, :]) % mj) / mj  # exact mod
        shape = [kk] + [1] * d
        shape[1 + j] = mj
        phase = phase * np.exp(1j * ang).reshape(shape)
    ph = xp.asarray(phase, dtype=cdt, device=dev)  # (k, *m)
    onehot = np.zeros((kk, spec.groups))
    onehot[np.arange(kk), g] = 1.0
    place = xp.asarray(onehot, dtype=cdt, device=dev)[:, :, None] * vec[:, None, :]  # (k, G, width)
    return xp.reshape(place, (kk, spec.groups * width, *([1] * d))) * ph[:, None, ...]
