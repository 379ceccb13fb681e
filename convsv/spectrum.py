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
from types import ModuleType
from typing import Any

import numpy as np

from ._array_api import complex_dtype, device_of, itemsize, real_dtype
from ._backends import (
    batched_eigvalsh,
    batched_svdvals,
    map_chunks,
    n_workers,
    single_threaded,
    svd_workspace,
    worker_blas,
)
from ._progress import Progress, check_progress
from ._validation import (
    DEFAULT_MEMORY_LIMIT,
    ConvSpec,
    check_choice,
    check_memory,
    conv_spec,
    grouped,
    prepare_kernel,
)
from .circulant import PADDINGS, dense_from_spec, dense_nbytes
from .fft import fft_symbols
from .lfa import gram_autocorrelation, gram_symbols, grid_symbols

__all__ = ["operator_norm", "singular_values"]

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


def chunked_block_svdvals(kg: Any, spec: ConvSpec, xp: ModuleType, freqs: list[np.ndarray], *,
                          method: str, solver: str, memory_limit: float | None,
                          progress: bool = False) -> list[Any]:
    """Singular values of the blocks at the grid ``freqs``, in chunks along axis 0.

    Returns per-chunk arrays ``(F_chunk, F_2, .., F_d, G, r)`` in order (concatenating
    them along axis 0 gives every block's values). Chunks are sized so that each worker's
    symbols and LAPACK workspace stay within ``memory_limit``.
    """
    real = not xp.isdtype(kg.dtype, "complex floating")
    budget = DEFAULT_MEMORY_LIMIT if memory_limit is None else memory_limit
    cbytes = itemsize(xp, complex_dtype(xp, kg.dtype))
    block_bytes = spec.groups * (spec.c_out // spec.groups) * (spec.c_in // spec.groups) \
        * spec.phases * cbytes
    rest = math.prod(f.size for f in freqs[1:])
    overhead = _BLOCK_OVERHEAD + (svd_workspace(kg) if solver == "svd" else 0)
    per_row = overhead * block_bytes * rest
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
        check_memory(block_bytes * math.prod(f.size for f in freqs) * 2 + block_bytes / spec.phases
                     * math.prod(spec.n), budget, "the FFT of the padded polyphase kernel",
                     "use method='lfa' (chunked, same result) or raise memory_limit")
        full = fft_symbols(kg, spec, xp, half=real)

    # the Gram blocks' tap autocorrelation is computed once, then evaluated per chunk
    corr = None
    if solver == "gram" and full is None:
        with worker_blas(xp):
            corr = gram_autocorrelation(kg, spec, xp)

    def run(start: int) -> Any:
        stop = min(start + chunk, f0)
        if corr is not None:
            gram = gram_symbols(corr, spec, [freqs[0][start:stop], *freqs[1:]], xp)
            return _sqrt_eigvalsh(gram, xp)
        if full is not None:
            blocks = full[start:stop, ...]
        else:
            blocks = grid_symbols(kg, spec, [freqs[0][start:stop], *freqs[1:]], xp)
        return block_svdvals(blocks, solver, xp)

    with Progress(len(starts), "convsv: frequency chunks", progress) as bar:
        return map_chunks(run, starts, xp, workers=workers, progress=bar)


def spectral_chunks(kg: Any, spec: ConvSpec, xp: ModuleType, *, method: str, solver: str,
                    memory_limit: float | None, progress: bool = False) -> list[Any]:
    """Singular values of all unique frequencies, as a list of arrays.

    Values whose conjugate frequency was skipped (real kernels) appear twice in the list,
    so concatenating every entry gives the full multiset.
    """
    real = not xp.isdtype(kg.dtype, "complex floating")
    freqs = _frequency_plan(spec, real)
    parts = chunked_block_svdvals(kg, spec, xp, freqs, method=method, solver=solver,
                                  memory_limit=memory_limit, progress=progress)
    if not real:
        return parts
    out = list(parts)
    if spec.d > 1:
        dup = _duplicated(freqs[-1], spec.m[-1])
        if dup.size:
            out += [xp.take(sv, xp.asarray(dup, device=device_of(sv)), axis=spec.d - 1) for sv in parts]
    else:  # the half axis is the chunked one
        allv = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        dup = _duplicated(freqs[0], spec.m[0])
        if dup.size:
            out.append(xp.take(allv, xp.asarray(dup, device=device_of(allv)), axis=0))
    return out


def choose_method(spec: ConvSpec, padding: str, method: str, dtype: Any, xp: ModuleType,
                  memory_limit: float | None) -> str:
    check_choice(method, "method", METHODS)
    if method in ("fft", "lfa"):
        if padding != "circular":
            msg = (f"method={method!r} is exact for padding='circular' only; use "
                   f"method='dense' (or 'auto') for padding={padding!r}")
            raise ValueError(msg)
        if not spec.divisible:
            msg = (f"method={method!r} needs n divisible by stride on every axis, got "
                   f"n={spec.n}, stride={spec.stride}; use method='dense' (small layers) or "
                   f"an n that is a multiple of the stride")
            raise ValueError(msg)
        return method
    nbytes = dense_nbytes(spec, xp, dtype)
    if method == "dense":
        check_memory(nbytes, memory_limit, f"the dense {spec.shape[0]} x {spec.shape[1]} operator",
                     "raise memory_limit or use method='auto'")
        return method
    if padding == "circular" and spec.divisible:
        return "lfa"
    why = ("padding='zeros' has no exact FFT diagonalisation" if padding != "circular"
           else f"n={spec.n} is not divisible by stride={spec.stride}")
    check_memory(nbytes, memory_limit, f"{why}, so the exact answer needs the dense "
                 f"{spec.shape[0]} x {spec.shape[1]} operator, which",
                 "raise memory_limit, or use padding='circular' with n a multiple of stride")
    return "dense"


def _prepare(kernel: Any, n: Any, stride: Any, dilation: Any, groups: Any, layout: str,
             padding: str, method: str, solver: str, memory_limit: float | None,
             xp: Any) -> tuple[Any, ConvSpec, str, ModuleType]:
    check_choice(padding, "padding", PADDINGS)
    check_choice(solver, "solver", SOLVERS)
    k, xp = prepare_kernel(kernel, layout=layout, xp=xp)
    spec = conv_spec(k, n, stride, dilation, groups)
    method = choose_method(spec, padding, method, k.dtype, xp, memory_limit)
    return k, spec, method, xp


def _value_parts(k: Any, spec: ConvSpec, padding: str, method: str, solver: str,
                 memory_limit: float | None, xp: ModuleType, progress: bool) -> Iterator[Any]:
    if method == "dense":
        yield block_svdvals(dense_from_spec(k, spec, padding, xp), solver, xp)
        return
    yield from spectral_chunks(grouped(k, spec, xp), spec, xp, method=method, solver=solver,
                               memory_limit=memory_limit, progress=progress)


@single_threaded
def singular_values(kernel: Any, n: Any, stride: Any = 1, *, dilation: Any = 1, groups: int = 1,
                    layout: str = "oihw", padding: str = "circular", method: str = "auto",
                    solver: str = "svd", memory_limit: float | None = None,
                    progress: bool = False, xp: Any = None) -> Any:
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
    padding : {"circular", "zeros"}, optional
        ``"zeros"`` is computed from the dense operator (small layers only).
    method : {"auto", "lfa", "fft", "dense"}, optional
        ``"lfa"``: chunked symbols from the taps; ``"fft"``: symbols from the FFT of the
        wrapped, padded polyphase kernel (Sedghi's method, done right for ``k > n``);
        ``"dense"``: SVD of :func:`convsv.dense_operator`. ``"auto"`` takes ``"lfa"``
        when it is exact (circular padding, ``n`` divisible by ``stride``) and
        ``"dense"`` otherwise if it fits ``memory_limit``, else raises ``ValueError``.
    solver : {"svd", "gram"}, optional
        ``"svd"`` (default): an SVD of every symbol block, accurate to a few
        ``eps * s_max`` like a dense SVD. On CUDA (torch, CuPy) the blocks go to
        cuSOLVER's batched ``gesvda`` and every block's result is certified from its
        factors; blocks that fail are recomputed exactly (docs/bench_gpu.md).
        ``"gram"``: eigenvalues of the smaller Gram block, faster, but the error of a
        singular value ``s`` is about ``eps * s_max**2 / s``, up to ``sqrt(eps) * s_max``
        for the smallest ones.
    memory_limit : float, optional
        Byte budget for any one chunk (spectral path; the chunks are sized to it) or for
        the dense operator (dense path). Default 1 GiB.
    progress : bool, optional
        Show a progress bar over the frequency chunks on stderr (tqdm if installed).
    xp : namespace, optional
        ``numpy``, ``torch``, ``cupy``, ``array_api_strict`` or an array-api-compat
        namespace; the kernel is moved there. Inferred from ``kernel`` if None.

    Returns
    -------
    array
        Real, 1-D, sorted descending, of length ``min(rows, cols)`` of the operator
        (``rows = c_out prod(ceil(n/s))``, ``cols = c_in prod(n)``), in the kernel's
        precision, on ``xp``'s array type and device.

    Examples
    --------
    >>> import numpy as np, convsv
    >>> k = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
    >>> sv = convsv.singular_values(k, 16, stride=2)
    >>> sv.shape
    (512,)
    """
    check_progress(progress)
    k, spec, method, xp = _prepare(kernel, n, stride, dilation, groups, layout, padding,
                                   method, solver, memory_limit, xp)
    parts = [xp.reshape(p, (-1,)) for p in
             _value_parts(k, spec, padding, method, solver, memory_limit, xp, progress)]
    values = parts[0] if len(parts) == 1 else xp.concat(parts)
    values = xp.astype(values, real_dtype(xp, k.dtype), copy=False)
    return xp.sort(values, descending=True)


@single_threaded
def operator_norm(kernel: Any, n: Any, stride: Any = 1, *, dilation: Any = 1, groups: int = 1,
                  layout: str = "oihw", padding: str = "circular", method: str = "auto",
                  solver: str = "svd", memory_limit: float | None = None,
                  progress: bool = False, xp: Any = None) -> Any:
    """Largest singular value (spectral norm) of a convolutional layer's operator.

    Same method and parameters (``progress`` included) as :func:`singular_values` (Sedghi et al. 2019,
    Theorem 6; Senderovich et al. 2022, Theorem 2): the maximum over frequencies of the
    symbol blocks' largest singular values, without sorting the full spectrum.

    Returns
    -------
    array
        0-d real array in the kernel's precision, namespace and device.
    """
    check_progress(progress)
    k, spec, method, xp = _prepare(kernel, n, stride, dilation, groups, layout, padding,
                                   method, solver, memory_limit, xp)
    maxima = [xp.max(p) for p in _value_parts(k, spec, padding, method, solver, memory_limit, xp, progress)]
    return xp.astype(xp.max(xp.stack(maxima)), real_dtype(xp, k.dtype), copy=False)
