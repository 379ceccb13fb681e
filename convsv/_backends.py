"""Backend-specific fast paths. This is the only module that branches on the backend.

* NumPy's batched LAPACK calls run one matrix at a time on one core (the blocks are
  too small for threaded BLAS to help). Independent frequency chunks are therefore
  spread over a thread pool, with BLAS limited to one thread per worker (threadpoolctl,
  if installed) so the workers do not oversubscribe the cores. NumPy releases the GIL
  inside its linalg loops, so threads suffice.
* Other backends (torch, CuPy) parallelise batched calls themselves; chunks run in order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["map_chunks", "n_workers"]

T = TypeVar("T")


def _is_numpy(xp: ModuleType) -> bool:
    return xp.__name__ in ("numpy", "array_api_compat.numpy")


def n_workers(xp: ModuleType) -> int:
    """Threads convsv itself uses for independent chunks on backend ``xp``."""
    if not _is_numpy(xp):
        return 1
    env = os.environ.get("CONVSV_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _blas_single_thread() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def map_chunks(fn: Callable[[Any], T], items: Iterable[Any], xp: ModuleType, *,
               workers: int | None = None) -> list[T]:
    """``[fn(i) for i in items]``, in parallel (at most ``workers``) where it helps."""
    items = list(items)
    workers = min(n_workers(xp) if workers is None else workers, len(items))
    if workers <= 1:
        return [fn(i) for i in items]
    with _blas_single_thread(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def assign_inplace(dst: Any, src: Any) -> None:
    """``dst[...] = src`` without recording an autograd operation (torch parameters)."""
    if type(dst).__module__.startswith("torch"):
        import torch

        with torch.no_grad():
            dst.copy_(src)
        return
    dst[...] = src


def detached(x: Any) -> Any:
    """``x`` without autograd history (torch); other arrays unchanged."""
    return x.detach() if type(x).__module__.startswith("torch") else x
