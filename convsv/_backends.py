"""Backend-specific fast paths. This is the only module that branches on the backend.

* NumPy's batched LAPACK calls run one matrix at a time on one core (the blocks are
  too small for threaded BLAS to help). Independent frequency chunks are therefore
  spread over a thread pool, with BLAS limited to one thread per worker (threadpoolctl,
  if installed) so the workers do not oversubscribe the cores. NumPy releases the GIL
  inside its linalg loops, so threads suffice.
* Other backends (torch, CuPy) parallelise batched calls themselves; chunks run in order.
* On CUDA, ``torch.linalg.svdvals`` and ``cupy.linalg.svd`` loop over the batch, one
  cuSOLVER call per block (``gesvdj`` / ``gesvd``): 0.87 s for 544 blocks of 64 x 64 on an
  H100. cuSOLVER's strided-batched ``gesvda`` does the same batch in 2 ms, but it is an
  approximate method that fails on ill-conditioned blocks, so its factors are checked
  a posteriori and rejected blocks recomputed exactly (``certified_svdvals``). Likewise
  torch's CUDA ``eigvalsh`` loops, while CuPy's is batched: torch tensors are handed to
  CuPy through DLPack (zero copy, same device and stream order) when CuPy is installed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeVar

from ._array_api import (
    device_of,
    is_cupy,
    is_numpy_namespace,
    is_on_host,
    is_torch,
    is_torch_cuda,
    is_torch_namespace,
)
from ._validation import env_num_threads

__all__ = [
    "batched_eigvalsh",
    "batched_svdvals",
    "cholesky_succeeds",
    "complex_view",
    "host_numpy_twin",
    "map_chunks",
    "n_workers",
    "one_thread_math",
    "single_threaded",
    "worker_blas",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def n_workers(xp: ModuleType, device: Any = None) -> int:
    """Threads convsv itself uses for independent chunks on backend ``xp``.

    NumPy, and torch on the CPU (``device`` given and of type ``"cpu"``): one per core
    (or ``CONVSV_NUM_THREADS``); both release the GIL in their batched LAPACK loops and
    neither parallelises a batch of small SVDs itself (torch CPU, 2048 blocks 64 x 64:
    1.26 s on one thread, 1.65 s with its own two). Other backends and devices: 1.
    """
    if not (
        is_numpy_namespace(xp)
        or (
            is_torch_namespace(xp)
            and device is not None
            and getattr(device, "type", device) == "cpu"
        )
    ):
        return 1
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = max(1, os.cpu_count() or 1)
    return env_num_threads(cores)


@functools.cache
def _threadpool_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional dependency
        return None
    # finding the loaded BLAS libraries takes ~0.3 ms; do it once, not per call
    return ThreadpoolController()


# One process-wide "math runs on one thread per worker" region, shared by every convsv call
# in every thread: BLAS's limit (threadpoolctl) is process-global, so the first call to
# enter sets it and the last to leave restores it; nested and concurrent calls only count.
_region_lock = threading.Lock()
_region_depth = 0
_region_blas: Any = None
_region_torch: int | None = None


def _torch() -> Any:
    return sys.modules.get("torch")  # only a torch that is already in use needs limiting


@contextlib.contextmanager
def one_thread_math() -> Iterator[None]:
    """BLAS and torch's intra-op pool held to one thread inside (re-entrant, thread-safe).

    Small LAPACK calls gain nothing from threads and lose a lot to oversubscription
    (a 128x64x3x3 stride-2 layer at n=32: 75-119 s with all BLAS threads vs 1.0 s with
    one; torch CPU operator_norm float32 c=256, n=16: 35 s vs 0.98 s). convsv's own pool
    provides the parallelism. torch's setting is per thread (OpenMP), so each thread
    saves and restores its own; the process-wide BLAS limit is reference-counted.
    """
    global _region_depth, _region_blas, _region_torch
    torch = _torch()
    with _region_lock:
        if _region_depth == 0:
            controller = _threadpool_controller()
            _region_blas = (
                None if controller is None else controller.limit(limits=1, user_api="blas")
            )
            _region_torch = None if torch is None else torch.get_num_threads()
        _region_depth += 1
        own = None if torch is None else torch.get_num_threads()
        if own is not None and own != 1:
            torch.set_num_threads(1)
    try:
        yield
    finally:
        with _region_lock:
            _region_depth -= 1
            if _region_depth == 0:
                if _region_blas is not None:
                    _region_blas.restore_original_limits()
                if torch is not None and _region_torch is not None:
                    # also the default that threads created later start from
                    torch.set_num_threads(_region_torch)
                _region_blas = _region_torch = None
            if own is not None and own != 1:
                torch.set_num_threads(own)


def single_threaded(fn: F) -> F:
    """Run a public entry point inside :func:`one_thread_math`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_thread_math():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def worker_blas(xp: ModuleType) -> contextlib.AbstractContextManager:
    """BLAS held to one thread for a computation whose heavy part runs in :func:`map_chunks`.

    A multi-threaded BLAS call made just before the pool (a QR, the Gram autocorrelation)
    leaves OpenBLAS's threads spinning for a while, competing with the workers: 40 ms of
    a 90 ms Gram spectrum at c=64 on two cores. The small products around the pool gain
    nothing from threaded BLAS, so the limit covers them too.
    """
    return one_thread_math()


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_in_worker = threading.local()


def _shared_pool(size: int) -> ThreadPoolExecutor:
    """One long-lived pool (starting threads per call cost 2 ms, most of a small clip)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < size:
            old, _pool, _pool_size = _pool, ThreadPoolExecutor(size, "convsv"), size
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def map_chunks(
    fn: Callable[[Any], T],
    items: Iterable[Any],
    xp: ModuleType,
    *,
    workers: int | None = None,
    progress: Any = None,
    device: Any = None,
) -> list[T]:
    """``[fn(i) for i in items]``, in parallel (at most ``workers``) where it helps.

    ``progress`` (a :class:`convsv._progress.Progress`) is advanced once per item.
    ``device`` (of the arrays) lets torch on the CPU use the pool (:func:`n_workers`).
    The calling thread works too; calls from inside a worker run serially.
    """
    items = list(items)
    if progress is not None:
        inner = fn

        def fn(item: Any) -> T:
            out = inner(item)
            progress.update(1)
            return out

    workers = min(n_workers(xp, device) if workers is None else workers, len(items))
    if workers <= 1 or getattr(_in_worker, "active", False):
        with one_thread_math():
            return [fn(i) for i in items]
    results: list[Any] = [None] * len(items)
    feed = iter(range(len(items)))
    feed_lock = threading.Lock()

    def drain() -> None:
        # torch's per-thread intra-op setting: a fresh pool thread starts from the default
        torch = _torch()
        if torch is not None and torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        was, _in_worker.active = getattr(_in_worker, "active", False), True
        try:
            while True:
                with feed_lock:
                    i = next(feed, None)
                if i is None:
                    return
                results[i] = fn(items[i])
        finally:
            _in_worker.active = was

    with one_thread_math():
        pool = _shared_pool(workers - 1)
        futures = [pool.submit(drain) for _ in range(workers - 1)]
        try:
            drain()
        finally:
            for f in futures:
                f.result()
    return results


def assign_inplace(dst: Any, src: Any) -> None:
    """``dst[...] = src`` without recording an autograd operation (torch parameters)."""
    if is_torch(dst):
        import torch

        with torch.no_grad():
            dst.copy_(src)
        return
    dst[...] = src


def detached(x: Any) -> Any:
    """``x`` without autograd history (torch); other arrays unchanged."""
    return x.detach() if is_torch(x) else x


#: Share of the free device memory that the default ``memory_limit`` takes on a GPU.
DEVICE_MEMORY_FRACTION = 0.5


def _device_free_bytes(x: Any) -> int | None:
    """Free memory of ``x``'s GPU (bytes), or None for host arrays."""
    if is_torch_cuda(x):
        import torch

        return int(torch.cuda.mem_get_info(x.device)[0])
    if is_cupy(x):
        import cupy

        with x.device:
            return int(cupy.cuda.runtime.memGetInfo()[0])
    return None


def default_memory_limit(x: Any, memory_limit: float | None) -> float | None:
    """``memory_limit``, or when it is None and ``x`` lives on a GPU, half its free memory.

    The host default (1 GiB, ``_validation.DEFAULT_MEMORY_LIMIT``) refused to clip a
    160x160x3x3 layer at n=32 on an 80 GB card. None is returned unchanged for host
    arrays, so the CPU default stays what it was.
    """
    if memory_limit is not None:
        return memory_limit
    free = _device_free_bytes(x)
    return None if free is None else DEVICE_MEMORY_FRACTION * free


def batched_svdvals(blocks: Any, xp: ModuleType) -> Any:
    """Singular values (descending) of every block of ``blocks`` ``(..., a, b)``."""
    fast = _fast_svd(blocks)
    if fast is None:
        return xp.linalg.svdvals(blocks)
    return certified_svdvals(blocks, fast, lambda b: _exact_svdvals(b, xp), xp)


def svd_workspace(x: Any) -> int:
    """Extra block-sized arrays :func:`batched_svdvals` holds for arrays like ``x``.

    The certified GPU path keeps ``U``, ``V`` and the residual ``A V - U S`` besides the
    blocks (the Gram products ``U^H U``, ``V^H V`` are at most block-sized too).
    """
    return 4 if (is_torch_cuda(x) or is_cupy(x)) else 0


def _fast_svd(blocks: Any) -> Callable[[Any], tuple[Any, Any, Any]] | None:
    """cuSOLVER's strided-batched ``gesvda`` as ``tall -> (U, s, V)``, where it applies."""
    if blocks.ndim < 3:
        return None
    if is_torch_cuda(blocks):
        import torch

        def fast(tall: Any) -> tuple[Any, Any, Any]:
            u, s, vh = torch.linalg.svd(tall, full_matrices=False, driver="gesvda")
            return u, s, vh.mH

        return fast
    if is_cupy(blocks):
        import cupy
        import cupyx.cusolver

        def fast(tall: Any) -> tuple[Any, Any, Any]:
            # it reads the raw buffer as C-ordered blocks; returns a = u diag(s) v^H
            return cupyx.cusolver.gesvda(cupy.ascontiguousarray(tall), compute_uv=True)

        return fast
    return None


def _exact_svdvals(blocks: Any, xp: ModuleType) -> Any:
    if is_torch_cuda(blocks):
        import torch

        # QR-based gesvd: on an H100 both faster and more accurate than the default
        # Jacobi driver for 64-512 wide blocks (docs/bench_gpu.md)
        return torch.linalg.svdvals(blocks, driver="gesvd")
    return xp.linalg.svdvals(blocks)


def certified_svdvals(
    blocks: Any,
    fast: Callable[[Any], tuple[Any, Any, Any]],
    exact: Callable[[Any], Any],
    xp: ModuleType,
) -> Any:
    """Singular values from a fast batched SVD, checked block by block a posteriori.

    cuSOLVER's ``gesvda`` is approximate: it fails, or silently returns wrong values, on
    ill-conditioned blocks and on blocks with repeated singular values (an orthogonal
    convolution has only ones). Its factors are therefore checked. With ``E = A V - U S``,
    ``dU = ||U^H U - I||_F`` and ``dV = ||V^H V - I||_F < 1/2``, polar factors of ``U``
    and ``V`` and Weyl's inequality give, for every ``i``,

        |sigma_i(A) - s_i| <= (||E||_F + (dU + dV) * max(s)) / (1 - dV).

    Blocks whose bound exceeds ``8 m eps max(s)`` (``m`` the longer side) are recomputed
    by ``exact``; every returned value is therefore within ``8 m eps max(s)`` of the
    truth. The threshold must match the *Frobenius* norms the bound is built from: for
    LAPACK's own float64 factors ``dU, dV`` are ``0.4-0.9 m eps`` and the bound
    ``1.1-2.5 m eps max(s)`` (64 x 64 to 512 x 512, real and complex), while the spectral
    norms are only ``~2 sqrt(m) eps``; the former ``16 sqrt(m) eps`` rejected every
    correct 64 x 64 block. (Spectral norms would give ``sqrt(m)``, but no cheap
    *upper* bound on them does better than ``m``.) If ``fast`` raises, halves of the batch are
    retried (down to 64 blocks, then ``exact``).
    A rejected block only costs time: the answer is always within that bound.
    """
    shape = blocks.shape
    a, b = int(shape[-2]), int(shape[-1])
    flat = xp.reshape(blocks, (-1, a, b))
    return xp.reshape(_certified(flat, fast, exact, xp), (*shape[:-2], min(a, b)))


# accepted bound, in units of m * eps * max(s): 3x the worst seen for LAPACK's own factors
_CERTIFICATE_FACTOR = 8


def _certified(
    flat: Any,
    fast: Callable[[Any], tuple[Any, Any, Any]],
    exact: Callable[[Any], Any],
    xp: ModuleType,
) -> Any:
    count, a, b = (int(x) for x in flat.shape)
    # a block and its transpose share their singular values; gesvda wants tall blocks
    tall = flat if a >= b else xp.matrix_transpose(flat)
    m, n = max(a, b), min(a, b)
    try:
        u, s, v = fast(tall)
    except (RuntimeError, ValueError):  # torch's LinAlgError is a RuntimeError
        if count < 64:
            return exact(flat)
        # one failing block spoils the whole call: retry the halves
        half = count // 2
        return xp.concat(
            [
                _certified(flat[:half, ...], fast, exact, xp),
                _certified(flat[half:, ...], fast, exact, xp),
            ]
        )
    s = xp.flip(xp.sort(s, axis=-1), axis=-1)
    # the check needs no autograd history; the values keep theirs
    a_, u, v, s_ = detached(tall), detached(u), detached(v), detached(s)
    e = a_ @ v - u * s_[:, None, :]
    eye = xp.eye(n, dtype=tall.dtype, device=device_of(tall))
    d_u = _fro(xp.conj(xp.matrix_transpose(u)) @ u - eye, xp)
    d_v = _fro(xp.conj(xp.matrix_transpose(v)) @ v - eye, xp)
    s_max = s_[:, 0]
    bound = (_fro(e, xp) + (d_u + d_v) * s_max) / (1 - d_v)
    tol = _CERTIFICATE_FACTOR * m * float(xp.finfo(s.dtype).eps) * s_max
    # NaNs fail both comparisons, so they are rejected too
    bad = ~((bound <= tol) & (d_v < 0.5))
    (redo,) = xp.nonzero(bad)
    if int(redo.shape[0]) == count:
        return exact(flat)
    if int(redo.shape[0]):
        (keep,) = xp.nonzero(~bad)
        # scatter without item assignment: concatenate, then undo the permutation
        parts = xp.concat([xp.take(s, keep, axis=0), exact(xp.take(flat, redo, axis=0))])
        s = xp.take(parts, xp.argsort(xp.concat([keep, redo])), axis=0)
    return s


def _fro(x: Any, xp: ModuleType) -> Any:
    return (
        xp.sqrt(xp.sum(xp.real(x) ** 2 + xp.imag(x) ** 2, axis=(-2, -1)))
        if xp.isdtype(x.dtype, "complex floating")
        else xp.sqrt(xp.sum(x**2, axis=(-2, -1)))
    )


def batched_eigvalsh(herm: Any, xp: ModuleType) -> Any:
    """Eigenvalues (ascending) of every Hermitian block of ``herm`` ``(..., a, a)``."""
    # DLPack cannot export tensors that require grad; those keep torch's own solver
    if herm.ndim >= 3 and is_torch_cuda(herm) and not herm.requires_grad:
        try:
            import cupy
        except ImportError:
            return xp.linalg.eigvalsh(herm)
        import torch

        with cupy.cuda.Device(herm.device.index):
            return torch.from_dlpack(cupy.linalg.eigvalsh(cupy.from_dlpack(herm.contiguous())))
    return xp.linalg.eigvalsh(herm)


def cholesky_succeeds(herm: Any, xp: ModuleType) -> Any:
    """Whether a floating-point Cholesky factorisation of each block ``(B, n, n)`` completes.

    Returns a boolean array ``(B,)``. LAPACK's ``potrf`` reads the lower triangle and stops
    at the first non-positive (or NaN) pivot. Batched everywhere: torch's ``cholesky_ex``
    reports per-block ``info`` without raising (no host round-trip); NumPy's gufunc marks a
    failed block with NaNs when told not to raise. Other libraries raise for the whole
    batch, so halves are retried until each failing block is isolated.
    """
    if is_torch(herm):
        import torch

        return torch.linalg.cholesky_ex(herm).info == 0
    if is_numpy_namespace(xp):
        import numpy as np

        lo = getattr(getattr(np.linalg, "_umath_linalg", None), "cholesky_lo", None)
        sig = {
            np.dtype(np.complex128): "D->D",
            np.dtype(np.complex64): "F->F",
            np.dtype(np.float64): "d->d",
            np.dtype(np.float32): "f->f",
        }.get(herm.dtype)
        if lo is not None and sig is not None:
            with np.errstate(invalid="ignore"):
                fac = lo(herm, signature=sig)
            return np.isfinite(fac[:, -1, -1])
    return _cholesky_bisect(herm, xp)


def host_numpy_twin(x: Any, xp: ModuleType) -> tuple[Any, ModuleType]:
    """``x`` as a NumPy array and namespace where that is free, else ``(x, xp)``.

    For a torch CPU tensor: a zero-copy NumPy view (detached, conjugation resolved) and
    ``array_api_compat.numpy``. Code that only *certifies* (no autograd, results reduced
    to a few floats) runs there: torch's CPU kernels for the many small batched products
    and Cholesky factorisations of :mod:`convsv.norm` are 1.2-3x slower than NumPy's
    (batched complex64 matrix-vector products 3-9x; float32 ``operator_norm`` of a
    64x64x3x3 layer at n = 34: 102 ms vs 36 ms). Nothing leaves a device: CUDA tensors,
    CuPy and array_api_strict arrays are returned as they are.
    """
    if is_torch(x) and is_on_host(x):
        import array_api_compat.numpy as np_xp

        return x.detach().resolve_conj().numpy(), np_xp
    return x, xp


def complex_view(pairs: Any) -> Any:
    """The complex array with real and imaginary parts ``pairs[..., 0]``, ``pairs[..., 1]``.

    No copy: a view of a C-contiguous float32/float64 array ``(..., 2)`` (NumPy, CuPy,
    torch), so that one real GEMM can write complex blocks (:mod:`convsv.norm`). None
    where the library has no such view (array_api_strict); callers fall back.
    """
    if is_torch(pairs):
        import torch

        return torch.view_as_complex(pairs.contiguous())
    view = getattr(pairs, "view", None)
    if view is None or not (is_cupy(pairs) or type(pairs).__module__ == "numpy"):
        return None
    import numpy as np

    target = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}.get(
        np.dtype(str(pairs.dtype))
    )
    if target is None:
        return None
    return view(target)[..., 0]


def _cholesky_bisect(herm: Any, xp: ModuleType) -> Any:
    count = int(herm.shape[0])
    try:
        fac = xp.linalg.cholesky(herm)
    except (ValueError, RuntimeError, ArithmeticError):  # LinAlgError is a ValueError
        if count == 1:
            return xp.zeros((1,), dtype=xp.bool, device=device_of(herm))
        half = count // 2
        return xp.concat(
            [_cholesky_bisect(herm[:half, ...], xp), _cholesky_bisect(herm[half:, ...], xp)]
        )
    # some libraries return NaN factors instead of raising
    return xp.isfinite(xp.real(fac[:, -1, -1]))


def torch_conv(
    kernel: Any,
    v: Any,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    *,
    adjoint: bool,
    padding: tuple[int, ...] | int = 0,
    output_padding: tuple[int, ...] | int = 0,
) -> Any | None:
    """``torch.nn.functional.conv{d}d`` (or its transpose) for real torch tensors, else None.

    The conv form's products over the padded read range ``L = (out - 1) s + dl (k - 1) + 1``
    are exactly a "valid" convolution and its transpose, which torch runs in oneDNN / cuDNN
    kernels: on the CPU 1.5x faster than the im2col GEMM of :mod:`convsv.geometry`, on CUDA
    far more. ``v`` is ``(B, c, *spatial)``; the transpose returns the full range ``L``
    unless torch's own zero ``padding`` / ``output_padding`` are given (the caller checks
    that they describe the layer).
    """
    if not (is_torch(v) and is_torch(kernel)):
        return None
    if v.is_complex() or kernel.is_complex() or v.dtype != kernel.dtype:
        return None
    import torch.nn.functional as F

    d = v.ndim - 2
    if adjoint:
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
        return fn(
            v,
            kernel,
            stride=stride,
            dilation=dilation,
            groups=groups,
            padding=padding,
            output_padding=output_padding,
        )
    fn = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    return fn(v, kernel, stride=stride, dilation=dilation, groups=groups, padding=padding)


def single_products_exact(x: Any) -> bool:
    """Whether single-precision convolution products on ``x``'s device are true float32.

    cuDNN runs float32 convolutions in TF32 (a 10-bit mantissa) unless
    ``torch.backends.cudnn.allow_tf32`` is off, and :func:`torch_conv` leaves that
    process-wide setting to the user; a single-precision warm-up would then stall near
    1e-3 instead of converging.
    """
    if type(x).__module__.startswith("torch") and x.device.type == "cuda":
        import torch

        return not torch.backends.cudnn.allow_tf32
    return True
