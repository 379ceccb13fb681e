"""Singular values of convolutional layers: the public entry points.

The exact spectrum of a periodic layer is the union, over the frequencies of the
(coarse) torus, of the singular values of small symbol blocks (Sedghi et al. 2019,
Theorem 6; Senderovich et al. 2022, Theorem 2). This module evaluates those blocks in
frequency chunks of bounded memory, runs the batched SVD on each chunk, and restores
the multiplicities that conjugate symmetry saved (real kernels need only half the
frequencies). Non-periodic or non-divisible cases go to the dense operator when it is
small enough, and raise a ``ValueError`` otherwise: convsv never returns a wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import as_result, complex_dtype, device_of, itemsize, real_dtype
from ._backends import (
    batched_eigvalsh,
    batched_svdvals,
    map_chunks,
    n_workers,
    one_thread_math,
    single_threaded,
    svd_workspace,
    worker_blas,
)
from ._progress import Progress, check_progress
from ._validation import (
    DEFAULT_MEMORY_LIMIT,
    ConvSpec,
    check_choice,
    check_fits_ram,
    check_memory,
    grouped,
    parse_memory_limit,
)
from .circulant import dense_from_geometry, geometry_nbytes
from .fft import fft_symbols
from .geometry import Geometry, LayerKeywords, prepare_layer
from .gram import gram_autocorrelation, gram_symbols
from .lfa import grid_symbols

__all__ = ["SingularValuesInfo", "operator_norm", "singular_values"]

#: What to try when the exact full spectrum does not fit in memory (and, past the
#: machine's RAM, instead of raising memory_limit).
_TOO_BIG_ALTERNATIVE = (
    "use convsv.singular_value_bounds (proven brackets, no dense matrix) "
    "or convsv.svd(k=...) (the top or bottom k values)"
)
_TOO_BIG_HINT = (
    "raise memory_limit, or use convsv.singular_value_bounds (proven brackets, no "
    "dense matrix) or convsv.svd(k=...) (the top or bottom k values)"
)


@dataclass(frozen=True)
class SingularValuesInfo:
    """How :func:`singular_values` computed its answer (``full_output=True``).

    Attributes
    ----------
    method : {"lfa", "fft", "dense"}
        ``"dense"``: an SVD of the dense operator (the layer has no exact periodic
        structure); ``"lfa"``/``"fft"``: the symbol blocks of a periodic layer.
    mode : str
        The layer's padding geometry (:attr:`convsv.geometry.Geometry.mode`).
    torus : tuple of int
        Spatial size of the periodic layer the spectrum came from (``"lfa"``/``"fft"``)
        or that embeds the layer (``"dense"``).
    """

    method: str
    mode: str
    torus: tuple[int, ...]


METHODS = ("auto", "fft", "lfa", "dense")
SOLVERS = ("svd", "gram")

# Working memory per symbol block, in block sizes: the block, the contraction that
# produces it and LAPACK's copy/workspace.
_BLOCK_OVERHEAD = 4


def block_svdvals(blocks: Any, solver: str, xp: ModuleType) -> Any:
    """Singular values (descending) of a batch of blocks ``(..., a, b)``.

    ``solver="gram"`` takes square roots of the eigenvalues of the smaller Gram matrix:
    about twice as fast, but singular values below ``sqrt(eps) * s_max`` lose their
    relative accuracy (their squares drown in the rounding of the largest one).
    """
    if solver == "svd":
        return batched_svdvals(blocks, xp)
    a, b = int(blocks.shape[-2]), int(blocks.shape[-1])
    bh = xp.conj(xp.matrix_transpose(blocks))
    return _sqrt_eigvalsh(blocks @ bh if a <= b else bh @ blocks, xp)


def _sqrt_eigvalsh(gram: Any, xp: ModuleType) -> Any:
    """Singular values (descending) from Hermitian Gram blocks."""
    ev = batched_eigvalsh(gram, xp)  # ascending
    return xp.flip(xp.sqrt(xp.clip(ev, min=0.0)), axis=-1)


def _frequency_plan(spec: ConvSpec, real: bool) -> list[np.ndarray]:
    freqs = [np.arange(m) for m in spec.m]
    if real:  # conjugate symmetry: K_hat(-theta) = conj(K_hat(theta))
        freqs[-1] = np.arange(spec.m[-1] // 2 + 1)
    return freqs


def _duplicated(w: np.ndarray, m: int) -> np.ndarray:
    """Positions along the half axis whose mirror frequency is not itself."""
    return np.nonzero((w != 0) & (2 * w != m))[0]


def chunk_block_bytes(kg: Any, spec: ConvSpec, xp: ModuleType, solver: str) -> int:
    """Working memory of one frequency's blocks (all groups) in a chunk, in bytes."""
    cbytes = itemsize(xp, complex_dtype(xp, kg.dtype))
    block_bytes = (
        spec.groups
        * (spec.c_out // spec.groups)
        * (spec.c_in // spec.groups)
        * spec.phases
        * cbytes
    )
    return (_BLOCK_OVERHEAD + (svd_workspace(kg) if solver == "svd" else 0)) * block_bytes


def frequency_chunk(
    kg: Any,
    spec: ConvSpec,
    sub: list[np.ndarray],
    xp: ModuleType,
    *,
    solver: str,
    corr: Any = None,
    blocks: Any = None,
) -> Any:
    """Singular values of the blocks on the frequency sub-grid ``sub``: one chunk's work.

    ``sub[j]`` holds integer frequencies of axis ``j``; the result is
    ``(F_1, .., F_d, G, r)``, descending along the last axis. The blocks come from the
    taps (LFA), from the Gram autocorrelation ``corr`` (``solver="gram"``), or are given
    (``blocks``, e.g. a slice of the FFT symbols). Shared by the thread pool here and by
    the Dask tasks of :mod:`convsv.dask`.
    """
    if corr is not None:
        return _sqrt_eigvalsh(gram_symbols(corr, spec, sub, xp), xp)
    if blocks is None:
        blocks = grid_symbols(kg, spec, sub, xp)
    return block_svdvals(blocks, solver, xp)


def chunked_block_svdvals(
    kg: Any,
    spec: ConvSpec,
    xp: ModuleType,
    freqs: list[np.ndarray],
    *,
    method: str,
    solver: str,
    memory_limit: float | None,
    progress: bool = False,
) -> list[Any]:
    """Singular values of the blocks at the grid ``freqs``, in chunks along axis 0.

    Returns per-chunk arrays ``(F_chunk, F_2, .., F_d, G, r)`` in order (concatenating
    them along axis 0 gives every block's values). Chunks are sized so that each worker's
    symbols and LAPACK workspace stay within ``memory_limit``.
    """
    real = not xp.isdtype(kg.dtype, "complex floating")
    budget = DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit
    cbytes = itemsize(xp, complex_dtype(xp, kg.dtype))
    block_bytes = (
        spec.groups
        * (spec.c_out // spec.groups)
        * (spec.c_in // spec.groups)
        * spec.phases
        * cbytes
    )
    rest = math.prod(f.size for f in freqs[1:])
    per_row = chunk_block_bytes(kg, spec, xp, solver) * rest
    check_memory(per_row, budget, "one frequency slice of the symbol", "raise memory_limit")
    # each worker holds one chunk at a time; use fewer workers rather than exceed budget
    workers = max(1, min(n_workers(xp, device_of(kg)), int(budget // per_row)))
    f0 = freqs[0].size
    chunk = max(1, int(budget // (per_row * workers)))
    if workers > 1:  # several chunks per worker keep the pool balanced
        chunk = min(chunk, max(1, math.ceil(f0 / (4 * workers))))
    starts = list(range(0, f0, chunk))

    full = None
    if method == "fft":
        # the symbols, their frequency-major copy and the transform's workspace, counted
        # in complex128 as in lfa.symbols (NumPy's pocketfft transforms single precision
        # in double); tracemalloc peaks stay below this (tests/test_spectrum_paths.py)
        entries = block_bytes // cbytes
        check_memory(
            math.prod(f.size for f in freqs) * (2 * block_bytes + 3 * entries * 16)
            + block_bytes / spec.phases * math.prod(spec.n),
            budget,
            "the FFT of the padded polyphase kernel",
            "use method='lfa' (chunked, same result) or raise memory_limit",
        )
        full = fft_symbols(kg, spec, xp, half=real)

    # the Gram blocks' tap autocorrelation is computed once, then evaluated per chunk
    corr = None
    if solver == "gram" and full is None:
        with worker_blas(xp):
            corr = gram_autocorrelation(kg, spec, xp)

    def run(start: int) -> Any:
        stop = min(start + chunk, f0)
        return frequency_chunk(
            kg,
            spec,
            [freqs[0][start:stop], *freqs[1:]],
            xp,
            solver=solver,
            corr=corr,
            blocks=None if full is None else full[start:stop, ...],
        )

    with Progress(len(starts), "convsv: frequency chunks", progress) as bar:
        return map_chunks(run, starts, xp, workers=workers, progress=bar)


def spectral_chunks(
    kg: Any,
    spec: ConvSpec,
    xp: ModuleType,
    *,
    method: str,
    solver: str,
    memory_limit: float | None,
    progress: bool = False,
) -> list[Any]:
    """Singular values of all unique frequencies, as a list of arrays.

    Values whose conjugate frequency was skipped (real kernels) appear twice in the list,
    so concatenating every entry gives the full multiset.
    """
    real = not xp.isdtype(kg.dtype, "complex floating")
    freqs = _frequency_plan(spec, real)
    parts = chunked_block_svdvals(
        kg,
        spec,
        xp,
        freqs,
        method=method,
        solver=solver,
        memory_limit=memory_limit,
        progress=progress,
    )
    if not real:
        return parts
    out = list(parts)
    if spec.d > 1:
        dup = _duplicated(freqs[-1], spec.m[-1])
        if dup.size:
            out += [
                xp.take(sv, xp.asarray(dup, device=device_of(sv)), axis=spec.d - 1) for sv in parts
            ]
    else:  # the half axis is the chunked one
        allv = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        dup = _duplicated(freqs[0], spec.m[0])
        if dup.size:
            out.append(xp.take(allv, xp.asarray(dup, device=device_of(allv)), axis=0))
    return out


def choose_geometry_method(
    geom: Geometry, method: str, dtype: Any, xp: ModuleType, memory_limit: float | None
) -> str:
    """Spectral path when the layer is a permuted periodic layer, else the dense one."""
    check_choice(method, "method", METHODS)
    what = f"the dense {geom.shape[0]} x {geom.shape[1]} operator"
    if method in ("fft", "lfa"):
        if not geom.exact_periodic and geom.mode == "periodic":
            msg = (
                f"method={method!r} needs n divisible by stride on every axis, got "
                f"n={geom.n}, stride={geom.stride}; use method='dense' (small layers) or "
                f"an n that is a multiple of the stride"
            )
            raise ValueError(msg)
        if not geom.exact_periodic and geom.mode == "centred":
            msg = (
                f"method={method!r} is exact for padding='circular' only; use "
                f"method='dense' (or 'auto') for padding='zeros'"
            )
            raise ValueError(msg)
        if not geom.exact_periodic:
            msg = (
                f"method={method!r} is exact only for layers that are a periodic layer up to "
                f"permutations; this one (mode {geom.mode!r}) embeds in the periodic layer on "
                f"n={geom.conv.n} with {geom.removed_rows} rows and {geom.removed_cols} "
                f"columns removed. Use method='dense' or 'auto', or "
                f"convsv.singular_value_bounds"
            )
            raise ValueError(msg)
        return method
    nbytes = geometry_nbytes(geom, xp, dtype)
    if method == "dense":
        check_memory(nbytes, memory_limit, what, "raise memory_limit or use method='auto'")
        return method
    if geom.exact_periodic:
        return "lfa"
    why = {
        "periodic": f"n={geom.n} is not divisible by stride={geom.stride}",
        "centred": "padding='zeros' has no exact FFT diagonalisation",
    }.get(geom.mode, f"padding mode {geom.mode!r} has no exact FFT diagonalisation")
    check_memory(
        nbytes,
        memory_limit,
        f"{why}, so the exact answer needs {what}, which",
        _TOO_BIG_HINT,
        alternative=_TOO_BIG_ALTERNATIVE,
    )
    return "dense"


def _prepare(
    kernel: Any,
    n: Any,
    layer: LayerKeywords,
    method: str,
    solver: str,
    memory_limit: float | None,
    xp: Any,
) -> tuple[Any, ConvSpec, str, ModuleType, Any]:
    """Validate; return ``(kernel, spec, method, xp, geom)``.

    Every padding, convsv's own ``"circular"`` / ``"zeros"`` included, is a
    :class:`~convsv.geometry.Geometry`; ``spec = geom.conv`` is the embedding periodic
    layer, and ``method`` says whether its spectrum is the layer's ("lfa"/"fft") or the
    dense path is needed.
    """
    check_choice(solver, "solver", SOLVERS)
    k, geom, xp = prepare_layer(kernel, n, layer, xp)
    method = choose_geometry_method(geom, method, k.dtype, xp, memory_limit)
    return k, geom.conv, method, xp, geom


def check_result_fits(spec: ConvSpec, xp: ModuleType, dtype: Any) -> None:
    """The full spectrum (plus the copy sorting makes) must fit in RAM.

    ``memory_limit`` budgets the working chunks, not the answer the caller asked for,
    but an answer larger than the machine would die in the allocator after all the work.
    """
    nbytes = 2 * spec.n_singular_values * itemsize(xp, real_dtype(xp, dtype))
    check_fits_ram(
        nbytes,
        f"the {spec.n_singular_values} singular values",
        "use convsv.operator_norm for the largest one, or convsv.svd(k=...) for a few extreme ones",
    )


def _value_parts(
    k: Any,
    geom: Geometry,
    method: str,
    solver: str,
    memory_limit: float | None,
    xp: ModuleType,
    progress: bool,
) -> Iterator[Any]:
    if method == "dense":
        yield block_svdvals(dense_from_geometry(k, geom, xp), solver, xp)
        return
    spec = geom.conv
    yield from spectral_chunks(
        grouped(k, spec, xp),
        spec,
        xp,
        method=method,
        solver=solver,
        memory_limit=memory_limit,
        progress=progress,
    )


def _info(method: str, geom: Geometry) -> SingularValuesInfo:
    return SingularValuesInfo(method=method, mode=geom.mode, torus=geom.conv.n)


@single_threaded
def singular_values(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
    method: str = "auto",
    solver: str = "svd",
    memory_limit: float | None = None,
    progress: bool = False,
    full_output: bool = False,
    xp: Any = None,
) -> Any:
    r"""All singular values of the linear operator of a convolutional layer.

    Stride 1: Sedghi, Gupta, Long (ICLR 2019), Theorem 6 -- the singular values of
    the layer are those of the ``prod(n)`` symbol blocks ``P(w) = sum_p K[:, :, p]
    e^{2 pi i w.p/n}``. Strides: Senderovich et al. (NeurIPS 2022), Theorem 2, eq. (10)
    -- the union over the coarse grid ``m = n/s`` of the singular values of the
    ``c_out x (s^d c_in)`` polyphase blocks. Blocks are evaluated straight from the taps
    (LFA, van Betteray et al.), so kernels larger than the input wrap correctly.

    Parameters
    ----------
    kernel : array
        ``(c_out, c_in/groups, *k)`` (``layout="oihw"``, PyTorch) or
        ``(*k, c_in/groups, c_out)`` (``layout="hwio"``), 1-3 spatial axes; float32,
        float64, complex64 or complex128.
    n : int or tuple of int
        Input spatial size (one int for every axis, or one per axis).
    stride, dilation : int or tuple of int, optional
    groups : int, optional
        As in ``torch.nn.Conv2d``: the spectrum is the union of the groups' spectra.
    layout : {"oihw", "hwio"}, optional
    padding : {"circular", "zeros"}, int, tuple of int, "same" or "valid", optional
        ``"circular"`` (default): the periodic layer. ``"zeros"``: convsv's centred zero
        padding (:func:`convsv.dense_operator`). An int, tuple, ``"same"`` or ``"valid"``:
        exactly ``torch.nn.Conv{d}d(..., padding, padding_mode)`` on an input of size
        ``n`` (``ConvTranspose{d}d`` with ``transposed=True``), bias excluded.
    padding_mode : {"zeros", "reflect", "replicate", "circular"}, optional
        PyTorch's (default ``"zeros"``); only with PyTorch-style ``padding``.
    transposed : bool, optional
        ``ConvTranspose{d}d``: ``kernel`` is its weight ``(c_in, c_out/groups, *k)`` and
        ``n`` its input size; the spectrum is that of the convolution it transposes.
    output_padding : int or tuple of int, optional
        ConvTranspose's (``< max(stride, dilation)``, as torch).
    method : {"auto", "lfa", "fft", "dense"}, optional
        ``"lfa"``: chunked symbols from the taps; ``"fft"``: symbols from the FFT of the
        wrapped, padded polyphase kernel (Sedghi's method, done right for ``k > n``);
        ``"dense"``: SVD of :func:`convsv.dense_operator`. ``"auto"`` takes ``"lfa"``
        when it is exact (circular padding, ``n`` divisible by ``stride``) and
        ``"dense"`` otherwise if it fits ``memory_limit``, else raises ``ValueError``
        (naming :func:`convsv.singular_value_bounds` and :func:`convsv.svd`). A layer
        that is a periodic layer up to permutations of its input (e.g.
        ``padding_mode="circular"`` with ``padding <= n``, ``n`` divisible by ``stride``
        and PyTorch's output size ``n / stride``) takes the exact spectral path;
        ``full_output=True`` reports which path ran.
    solver : {"svd", "gram"}, optional
        ``"svd"`` (default): an SVD of every symbol block, accurate to a few
        ``eps * s_max`` like a dense SVD. On CUDA (torch, CuPy) the blocks go to
        cuSOLVER's batched ``gesvda`` and every block's result is certified from its
        factors; blocks that fail are recomputed exactly (docs/bench_gpu.md).
        ``"gram"``: eigenvalues of the smaller Gram block, faster, but the error of a
        singular value ``s`` is about ``eps * s_max**2 / s``, up to ``sqrt(eps) * s_max``
        for the smallest ones.
    memory_limit : float or str, optional
        Byte budget for any one chunk (spectral path; the chunks are sized to it) or for
        the dense operator (dense path): bytes, or a string such as ``"512MiB"`` or
        ``"2 GB"``. Default 1 GiB. (The returned spectrum itself is only checked against
        the machine's RAM.)
    progress : bool, optional
        Show a progress bar over the frequency chunks on stderr (tqdm if installed).
    full_output : bool, optional
        Also return a :class:`SingularValuesInfo` (``info.method``: ``"dense"`` when
        ``"auto"`` fell back to the dense operator).
    xp : namespace, optional
        ``numpy``, ``torch``, ``cupy``, ``array_api_strict`` or an array-api-compat
        namespace; the kernel is moved there. Inferred from ``kernel`` if None.

    Returns
    -------
    array
        Real, 1-D, sorted descending, of length ``min(rows, cols)`` of the operator
        (``rows = c_out prod(out)``, ``out = ceil(n/s)`` for convsv's paddings and
        PyTorch's output size otherwise, ``cols = c_in prod(n)``), in the kernel's
        precision, on ``xp``'s array type and device; C-contiguous.
    info : SingularValuesInfo
        Only with ``full_output=True``.

    Examples
    --------
    >>> import numpy as np, convsv
    >>> k = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
    >>> sv = convsv.singular_values(k, 16, stride=2)
    >>> sv.shape
    (512,)
    """
    check_progress(progress)
    if not isinstance(full_output, (bool, np.bool_)):
        msg = f"full_output must be True or False, got {full_output!r}"
        raise TypeError(msg)
    memory_limit = parse_memory_limit(memory_limit)
    layer = LayerKeywords(
        stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
    )
    k, spec, method, xp, geom = _prepare(kernel, n, layer, method, solver, memory_limit, xp)
    check_result_fits(spec, xp, k.dtype)
    parts = [
        xp.reshape(p, (-1,))
        for p in _value_parts(k, geom, method, solver, memory_limit, xp, progress)
    ]
    values = parts[0] if len(parts) == 1 else xp.concat(parts)
    values = xp.astype(values, real_dtype(xp, k.dtype), copy=False)
    values = as_result(xp.sort(values, descending=True))
    if full_output:
        return values, _info(method, geom)
    return values


def operator_norm(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: Any = "circular",
    padding_mode: Any = None,
    transposed: bool = False,
    output_padding: Any = 0,
    method: str = "auto",
    solver: str = "svd",
    rtol: Any = None,
    tol: float | None = None,
    maxiter: int | None = None,
    full_output: bool = False,
    memory_limit: float | None = None,
    progress: bool = False,
    xp: Any = None,
) -> Any:
    """Largest singular value (spectral norm) of a convolutional layer's operator.

    Same parameters (``progress`` and the padding keywords included) as
    :func:`singular_values`. Two certified solvers, chosen by the layer:

    * periodic layers (and PyTorch layers that are one up to permutations, e.g.
      ``padding_mode="circular"`` with ``n`` a multiple of the stride; ``method="auto"`` or
      ``"lfa"``): the full spectrum is not computed. :func:`convsv.norm.periodic_norm`
      proves ``lambda_max(P^H P) < tau`` for most symbol blocks with one batched Cholesky
      test each (Rump, BIT 2006) and solves only the blocks that can hold the maximum
      (Sedghi et al. 2019, Theorem 6; Senderovich et al. 2022, Theorem 2);
    * every other layer (zero / reflect / replicate padding, ``n % stride != 0``,
      transposed layers with output padding, ...): matrix-free Golub-Kahan-Lanczos on the
      layer and its adjoint (:mod:`convsv.real_layers`, :mod:`convsv.krylov`;
      ``method="auto"`` or ``"krylov"``), bracketed by a Ritz lower bound and the
      interlacing upper bound of the periodic embedding (:mod:`convsv.bounds`).
      ``method="krylov"`` takes this path for periodic layers too.

    ``method="fft"`` and ``method="dense"`` take every block's (or the dense operator's)
    singular values (``solver`` applies only there) and issue no certificate.

    Parameters
    ----------
    rtol : float, optional
        Periodic path: relative width of the proven interval ``[lower, upper]`` around
        the norm; default ``1e-12`` (float64) or ``1e-6`` (float32). Rounding sets a
        floor (``info.floor``, ~1e-10 for 256-channel 3x3 layers): the width is at most
        ``max(rtol, floor + rtol / 2) * value``. A larger ``rtol`` (e.g. ``1e-3``) lets more blocks
        be certified without being solved. The returned value is the exact top singular
        value of the best block found, so it is within that width of the true norm; from
        ``rtol = 5e-4`` on, no block need be solved by an SVD (the leader's Lanczos value
        sets the test level), and the value is the certificate's proven lower end, the
        winning block's Rayleigh quotient (with autograd: that block's top singular
        value).
    tol : float, optional
        Krylov path: relative residual tolerance, default ``sqrt(eps)`` of the kernel's
        precision (the value is then within ``tol`` of the norm, in practice within
        about ``tol**2``). With autograd the value is ``u^H A(K) v`` of the converged top
        pair, whose derivative is the singular value's, ``u v^H``.
    maxiter : int, optional
        Krylov path: maximum Lanczos steps (a :class:`convsv.real_layers.KrylovWarning`
        says when they ran out).
    full_output : bool, optional
        Also return the certificate: a :class:`convsv.norm.NormInfo` (periodic path) or a
        :class:`convsv.real_layers.KrylovNormInfo` (Krylov path). Both carry the proven
        ``info.lower <= norm <= info.upper`` (rounded outward) and ``info.method``.

    Returns
    -------
    array
        0-d real array (also for NumPy: a ``numpy.ndarray`` of shape ``()``, not a
        ``numpy.float64``) in the kernel's precision, namespace and device.
    info : NormInfo or KrylovNormInfo
        Only with ``full_output=True``.
    """
    check_progress(progress)
    if not isinstance(full_output, (bool, np.bool_)):
        msg = f"full_output must be True or False, got {full_output!r}"
        raise TypeError(msg)
    rtol = _check_rtol(rtol)
    memory_limit = parse_memory_limit(memory_limit)
    check_choice(solver, "solver", SOLVERS)
    layer = LayerKeywords(
        stride, dilation, groups, layout, padding, padding_mode, transposed, output_padding
    )
    k, geom, xp = prepare_layer(kernel, n, layer, xp)
    if method == "krylov" or (not geom.exact_periodic and method == "auto"):
        # outside the one-thread region: every Krylov step is one large GEMM, which BLAS
        # threads do speed up (the periodic upper bound limits itself)
        from .real_layers import krylov_norm

        value, info = krylov_norm(
            k,
            geom,
            xp,
            tol=tol,
            maxiter=maxiter,
            upper=full_output,
            memory_limit=memory_limit,
            progress=progress,
        )
        return (as_result(value), info) if full_output else as_result(value)
    with one_thread_math():
        if not geom.exact_periodic:
            # an exact method that cannot be: say why (n % stride, padding) first
            choose_geometry_method(geom, method, k.dtype, xp, memory_limit)
            if full_output:
                msg = (
                    f"full_output=True needs a certified path (method='auto'); "
                    f"method={method!r} issues no certificate"
                )
                raise ValueError(msg)
            return as_result(
                _nonperiodic_norm(
                    k, geom, xp, method=method, solver=solver, memory_limit=memory_limit
                )
            )
        method = choose_geometry_method(geom, method, k.dtype, xp, memory_limit)
        spec = geom.conv
        if method == "lfa":
            from .norm import periodic_norm

            value, info = periodic_norm(
                grouped(k, spec, xp),
                spec,
                xp,
                rtol=rtol,
                memory_limit=memory_limit,
                progress=progress,
            )
            return (as_result(value), info) if full_output else as_result(value)
        if full_output:
            msg = (
                f"full_output=True needs a certified path (method='auto' or 'lfa'), got "
                f"method={method!r}"
            )
            raise ValueError(msg)
        maxima = [
            xp.max(p) for p in _value_parts(k, geom, method, solver, memory_limit, xp, progress)
        ]
        return as_result(xp.astype(xp.max(xp.stack(maxima)), real_dtype(xp, k.dtype), copy=False))


def _nonperiodic_norm(
    k: Any, geom: Geometry, xp: ModuleType, *, method: str, solver: str, memory_limit: float | None
) -> Any:
    """Norm of a non-periodic layer from every singular value of its dense operator.

    Only for an explicit ``method="dense"`` (``"fft"``/``"lfa"`` raise: they are not
    exact here); ``"auto"`` takes the Krylov path.
    """
    choose_geometry_method(geom, method, k.dtype, xp, memory_limit)
    values = block_svdvals(dense_from_geometry(k, geom, xp), solver, xp)
    return xp.astype(xp.max(values), real_dtype(xp, k.dtype), copy=False)


def _check_rtol(rtol: Any) -> float | None:
    if rtol is None:
        return None
    try:
        val = float(rtol)
    except (TypeError, ValueError):
        val = float("nan")
    if isinstance(rtol, (bool, str)) or not (0.0 <= val < 1.0):
        msg = f"rtol must be a real number in [0, 1) or None, got {rtol!r}"
        raise ValueError(msg)
    return val
