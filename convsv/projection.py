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
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from array_api_compat import is_array_api_obj

from ._array_api import as_result, complex_dtype, device_of, itemsize
from ._backends import (
    assign_inplace,
    batched_svdvals,
    default_memory_limit,
    detached,
    map_chunks,
    n_workers,
    single_threaded,
)
from ._progress import Progress, check_progress
from ._validation import ConvSpec, check_choice, check_memory, conv_spec, grouped, prepare_kernel
from .fft import polyphase_from_symbols, polyphase_symbols
from .polyphase import axis_phase_matrix, grouped_polyphase, merge_phases, split_phases

__all__ = ["ClipInfo", "ClipWarning", "clip", "clip_", "clip_once"]


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
        ADMM iterations run (1 for ``support="full"``).
    max_sv, min_sv : float
        Extreme singular values of the returned kernel's operator, as computed in its
        precision (``max_sv`` is below the requested bound by at least the error margin).
    distance : float
        Frobenius distance between the original and the returned operators, relative
        to the original's.
    """

    converged: bool
    iterations: int
    max_sv: float
    min_sv: float
    distance: float


class _Layer:
    """Symbol <-> polyphase-kernel transforms of one layer on the coarse torus."""

    def __init__(self, kg: Any, spec: ConvSpec, xp: ModuleType) -> None:
        self.spec, self.xp = spec, xp
        self.real = not xp.isdtype(kg.dtype, "complex floating")
        self.cdt = complex_dtype(xp, kg.dtype)
        self.dtype = kg.dtype
        self.device = device_of(kg)
        d = spec.d
        self.axes = tuple(range(3, 3 + d))
        dev = device_of(kg)
        self.q = [xp.asarray(axis_phase_matrix(k, s, dl, m), dtype=kg.dtype, device=dev)
                  for k, s, dl, m in zip(spec.k, spec.stride, spec.dilation, spec.m)]
        ones = xp.ones((1, 1, int(kg.shape[2]), *spec.k), dtype=kg.dtype, device=dev)
        self.counts = grouped_polyphase(ones, spec, xp)  # (1, 1, ciS, *m): taps per position
        self.mask = xp.astype(self.counts > 0, kg.dtype)
        self.inv_counts = self.mask / xp.where(self.counts > 0, self.counts, 1.0)

    def symbols(self, z: Any) -> Any:
        """``(G, co, ciS, *m)`` polyphase kernel -> ``(*m, G, co, ciS)`` blocks.

        Real kernels keep only the half spectrum along the last axis (the rest is its
        conjugate, and clipping commutes with conjugation).
        """
        return polyphase_symbols(z, self.spec, self.xp, half=self.real)

    def kernel_grid(self, p: Any) -> Any:
        """Inverse of :meth:`symbols`."""
        return polyphase_from_symbols(p, self.spec, self.xp, half=self.real)

    def _chunks(self, blocks: Any) -> list[Any]:
        f0 = int(blocks.shape[0])
        parts = max(1, min(f0, 4 * n_workers(self.xp, self.device)))
        step = -(-f0 // parts)
        return [blocks[i:min(i + step, f0), ...] for i in range(0, f0, step)]

    def clip_blocks(self, z: Any, lo: float | None, hi: float) -> Any:
        """Project every symbol block onto ``{lo <= sigma <= hi}`` (Frobenius-nearest)."""
        xp = self.xp

        def svd_clip(b: Any) -> Any:
            u, s, vh = xp.linalg.svd(b, full_matrices=False)
            s = xp.clip(s, min=lo, max=hi)
            return (u * xp.astype(s, self.cdt)[..., None, :]) @ vh

        def gram_clip(b: Any) -> Any:
            # Only an upper bound: B <- B - B V (1 - hi/sigma)_+ V^H with (sigma^2, V) from
            # the eigh of the smaller Gram matrix; eigenvectors of the unclipped (small)
            # values cancel out, so the Gram's loss of small-value accuracy is harmless.
            rows, cols = int(b.shape[-2]), int(b.shape[-1])
            bh = xp.conj(xp.matrix_transpose(b))
            left = rows <= cols
            lam, v = xp.linalg.eigh(b @ bh if left else bh @ b)
            sig = xp.sqrt(xp.clip(lam, min=0.0))
            shrink = xp.where(sig > hi, 1.0 - hi / xp.where(sig > hi, sig, 1.0), 0.0)
            corr = (v * xp.astype(shrink, self.cdt)[..., None, :]) @ xp.conj(xp.matrix_transpose(v))
            return b - corr @ b if left else b - b @ corr

        one = gram_clip if not lo else svd_clip
        parts = map_chunks(one, self._chunks(self.symbols(z)), xp, device=self.device)
        return self.kernel_grid(parts[0] if len(parts) == 1 else xp.concat(parts, axis=0))

    def extreme_svs(self, z: Any) -> tuple[float, float]:
        xp = self.xp
        parts = map_chunks(lambda b: batched_svdvals(b, xp), self._chunks(self.symbols(z)), xp,
                           device=self.device)
        return (max(float(xp.max(p)) for p in parts), min(float(xp.min(p)) for p in parts))

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


def _admm(layer: _Layer, z0: Any, lo: float | None, hi: float, iterations: int, tol: float,
          norm0: float, feasible: Any, bar: Progress) -> tuple[Any, bool, int, float, float]:
    """Nearest kernel-support point of the clip set by ADMM (scaled form, Boyd et al. 2011).

    ``min 1/2 ||x - z0||^2`` over ``x`` in the support subspace ``B`` and ``y`` in the clip
    set ``A`` with ``x = y``: ``x <- P_B((z0 + rho (y - u)) / (1 + rho))``,
    ``y <- P_A(x + u)``, ``u <- u + x - y``; ``rho`` by residual balancing (Sec. 3.4.1).
    Stops when ``x`` meets the bounds to ``tol`` and the dual residual
    ``rho ||y - y_prev||`` is below ``tol ||z0||`` (checked every few iterations, since
    each check costs a batched SVD).
    """
    xp = layer.xp
    # rho = 30 with lazy balancing did best over the test layers (10-100x fewer iterations
    # than Dykstra's method, which needs ~1000 for 1% on a 16x16x3x3 kernel)
    rho, check_every = 30.0, 5
    x, y, u = z0, z0, xp.zeros_like(z0)
    smax, smin = layer.extreme_svs(z0)
    its = 0
    for its in range(1, iterations + 1):
        x = (z0 + rho * (y - u)) * (layer.mask / (1.0 + rho))
        y_prev = y
        y = layer.clip_blocks(x + u, lo, hi)
        u = u + x - y
        r = math.sqrt(float(xp.sum(xp.abs(x - y) ** 2)))
        sd = rho * math.sqrt(float(xp.sum(xp.abs(y - y_prev) ** 2)))
        if its % check_every == 0 or its == iterations:
            smax, smin = layer.extreme_svs(x)
            bar.update(check_every if its % check_every == 0 else its % check_every,
                       max_sv=smax)
            if feasible(smax, smin) and sd <= tol * norm0:
                return x, True, its, smax, smin
        if r > 100 * sd:
            rho, u = rho * 2, u / 2
        elif sd > 100 * r:
            rho, u = rho / 2, u * 2
    return x, False, its, smax, smin


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


def _enforce_bounds(out: Any, polyphase: Any, layer: _Layer, lo: float | None,
                    hi: float) -> tuple[Any, float, float, bool]:
    """Scale ``out`` (if needed) so that its operator provably meets ``max_sv``.

    The extreme singular values of the kernel *as returned* (its own precision) are
    computed, and ``err = margin * s_max`` with ``margin = _MARGIN * eps * sqrt(max block
    side)`` bounds their rounding. ``max_sv`` is accepted only if ``s_max + err <= max_sv``;
    otherwise the kernel is scaled down and checked again (scaling rounds too).
    ``min_sv`` is met to within that rounding (``s_min + 4 err >= min_sv``): it cannot be
    certified strictly when ``min_sv`` is (nearly) ``max_sv``; if it fails, the kernel is
    scaled up as far as ``max_sv`` allows. Returns the kernel, its computed extremes and
    whether ``min_sv`` holds.
    """
    eps = float(layer.xp.finfo(layer.dtype).eps)
    z = polyphase(out)
    margin = _MARGIN * eps * math.sqrt(max(int(z.shape[1]), int(z.shape[2])))
    extra, scaled_up = 1.0, False
    for _ in range(8):
        smax, smin = layer.extreme_svs(z)
        err = margin * smax
        hi_ok = smax + err <= hi
        lo_ok = lo is None or smin + 4 * err >= lo
        if (hi_ok and (lo_ok or scaled_up)) or smax == 0:  # a zero kernel cannot be scaled up
            return out, smax, smin, lo_ok
        if hi_ok:  # raise s_min as far as max_sv allows
            t = min(lo * (1 + margin) / smin if smin > 0 else math.inf,
                    hi / ((smax + err) * (1 + 2 * margin)))
            if not t > 1:
                return out, smax, smin, False
            scaled_up = True
        else:
            t = hi / ((smax + err) * (1 + 2 * margin * extra))
            extra *= 4
        out = out * t
        z = polyphase(out)
    msg = "clip: could not verify max_sv after rescaling (non-finite kernel?)"
    raise FloatingPointError(msg)


def _setup(kernel: Any, n: Any, stride: Any, dilation: Any, groups: Any, layout: str, xp: Any,
           memory_limit: float | None) -> tuple[Any, ConvSpec, ModuleType, _Layer, Any]:
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    memory_limit = default_memory_limit(k, memory_limit)
    spec = conv_spec(k, n, stride, dilation, groups)
    if not spec.divisible:
        msg = (f"clip needs n divisible by stride on every axis (the polyphase blocks), got "
               f"n={spec.n}, stride={spec.stride}; choose n a multiple of the stride")
        raise ValueError(msg)
    blocks = math.prod(spec.m) * spec.groups
    co, cis = spec.c_out // spec.groups, spec.c_in // spec.groups * spec.phases
    cb = itemsize(xp, complex_dtype(xp, k.dtype))
    # symbols, U, Vh and the rebuilt blocks
    check_memory(2 * blocks * (co * cis + co * co + cis * cis) * cb, memory_limit,
                 "the per-frequency SVDs of the clip", "raise memory_limit")
    kg = grouped(k, spec, xp)
    layer = _Layer(kg, spec, xp)
    return k, spec, xp, layer, grouped_polyphase(kg, spec, xp)


@single_threaded
def clip(kernel: Any, n: Any, max_sv: float, stride: Any = 1, *, min_sv: float | None = None,
         support: str = "kernel", iterations: int = 100, tol: float = 1e-2, dilation: Any = 1,
         groups: int = 1, layout: str = "oihw", full_output: bool = False,
         memory_limit: float | None = None, progress: bool = False, xp: Any = None) -> Any:
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
        the current largest singular value.
    xp : namespace, optional

    Returns
    -------
    kernel : array
        A new kernel in the input's layout, dtype and namespace (the input is untouched).
        Its operator norm is ``<= max_sv``, converged or not: the extreme singular values
        of the kernel *as returned* are computed in its precision, and unless ``s_max`` plus
        a bound on their rounding (``8 eps sqrt(block side) s_max``) is at most ``max_sv``,
        the kernel is scaled down and checked again.
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
    tol_ = _number(tol, "tol")
    if not tol_ >= 0:
        msg = f"tol must be a non-negative number, got {tol!r}"
        raise ValueError(msg)
    k, spec, xp, layer, z0 = _setup(kernel, n, stride, dilation, groups, layout, xp, memory_limit)
    if support == "full" and any(dl != 1 for dl in spec.dilation):
        msg = f"support='full' returns a dilation-1 kernel of size n; got dilation={dilation!r}"
        raise ValueError(msg)
    norm0 = math.sqrt(float(xp.sum(xp.abs(z0) ** 2))) or 1.0

    def feasible(smax: float, smin: float) -> bool:
        return smax <= hi * (1 + tol_) and (lo is None or smin >= lo * (1 - tol_))

    if support == "full":
        out = layer.full_kernel(layer.clip_blocks(z0, lo, hi))
        its, ok = 1, True
        polyphase = layer.full_polyphase
    else:
        with Progress(iterations, "convsv.clip: ADMM iterations", progress) as bar:
            z, ok, its, _, _ = _admm(layer, z0, lo, hi, iterations, tol_, norm0, feasible, bar)
        out = layer.to_kernel(z)

        def polyphase(kern: Any) -> Any:
            return grouped_polyphase(kern, spec, xp)
    # ADMM's iterate meets the bounds only to tol, and rounding can push any result over:
    # verify the kernel as returned and rescale it where needed (a promised bound holds)
    out, smax, smin, lo_ok = _enforce_bounds(out, polyphase, layer, lo, hi)
    # min_sv can be met exactly only where one rescaling fits both bounds; otherwise
    # (a non-convex problem) to tol, like ADMM's own stopping rule
    lo_ok = lo_ok or smin >= lo * (1 - tol_) - 4 * _MARGIN * float(xp.finfo(k.dtype).eps) * smax
    ok = ok and lo_ok
    if not ok:
        what = (f"ADMM stopped after {its} iterations before reaching tol={tol_}"
                if support == "kernel" else "the per-frequency clip")
        warnings.warn(f"clip(support={support!r}): {what}; the returned kernel has singular "
                      f"values in [{smin:.6g}, {smax:.6g}] (bounds [{lo or 0:.6g}, {hi:.6g}]), "
                      f"rescaled to meet max_sv" + ("" if lo_ok else ", and min_sv could not "
                      "be met by rescaling") + ". Raise iterations, loosen tol, or use "
                      "support='full'" + ("; with min_sv the problem is not convex" if lo else ""),
                      ClipWarning, stacklevel=_caller_stacklevel())
    # the operator's Frobenius norm is sqrt(prod(m)) times the polyphase grid kernel's
    dist = math.sqrt(float(xp.sum(xp.abs(polyphase(out) - z0) ** 2))) / norm0
    result = as_result(xp.astype(_ungroup(out, layout, xp), k.dtype))
    if full_output:
        return result, ClipInfo(ok, its, smax, smin, dist)
    return result


@single_threaded
def clip_once(kernel: Any, n: Any, max_sv: float, stride: Any = 1, *, dilation: Any = 1,
              groups: int = 1, layout: str = "oihw", memory_limit: float | None = None,
              xp: Any = None) -> Any:
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
    k, _spec, xp, layer, z0 = _setup(kernel, n, stride, dilation, groups, layout, xp,
                                    memory_limit)
    z = layer.clip_blocks(z0, None, hi) * layer.mask
    return as_result(xp.astype(_ungroup(layer.to_kernel(z), layout, xp), k.dtype))


def clip_(kernel: Any, n: Any, max_sv: float, stride: Any = 1, **kwargs: Any) -> Any:
    """In-place :func:`clip` (``support="kernel"``): writes the result into ``kernel``.

    For training loops that clip parameters (e.g. ``torch.nn.Parameter``) every few
    steps, as Senderovich et al. 2022 (Sec. 5.2) do every 100 iterations. No autograd
    history is recorded. Returns ``kernel``.
    """
    if not is_array_api_obj(kernel) or isinstance(kernel, (int, float, complex)):
        msg = (f"clip_ writes into kernel, so it must be an array or tensor, got "
               f"{type(kernel).__name__}; use convsv.clip for other inputs")
        raise TypeError(msg)
    if kwargs.get("support", "kernel") != "kernel":
        msg = "clip_ keeps the kernel's shape, so support must be 'kernel'"
        raise ValueError(msg)
    new = clip(detached(kernel), n, max_sv, stride, **kwargs)
    assign_inplace(kernel, new[0] if isinstance(new, tuple) else new)
    return kernel
