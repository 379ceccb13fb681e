"""Dask adapter: frequency chunks and layers as tasks, on a laptop or a cluster.

The exact spectrum of a periodic layer is the union over the frequency grid of the
singular values of small symbol blocks (Sedghi et al. 2019, Theorem 6; Senderovich et
al. 2022, Theorem 2, eq. (10)). Frequencies are independent, so the grid is cut into
rectangular tiles of bounded memory and every tile becomes one Dask task that runs
:func:`convsv.spectrum.frequency_chunk`, the function the in-process thread pool runs:
there is no second implementation of the math. The kernel is one graph key (sent to
the workers once, not embedded in every task); with ``solver="gram"`` the tap
autocorrelation is one more key, computed once.

Chunks hold NumPy arrays (kernels on the host: NumPy, torch CPU, array-api-strict, all
viewed zero-copy through DLPack) or CuPy arrays (kernels on a GPU: CuPy, torch CUDA via
DLPack), since Dask arrays need a NumPy-like chunk type. GPU kernels thus stay on the
GPU workers (dask-cuda's ``LocalCUDACluster``); see docs/dask.md.

Importing :mod:`convsv` does not import this module or Dask.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import fields
from types import ModuleType
from typing import Any

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    msg = (
        "convsv.dask needs Dask: install the 'dask' extra, pip install 'convsv[dask]' "
        "(dask[array,distributed])"
    )
    raise ImportError(msg) from exc

import numpy as np

from . import spectrum as _spectrum
from ._array_api import array_namespace, device_of, is_on_host, library_of, real_dtype, to_namespace
from ._backends import detached
from ._validation import ConvSpec, _fmt_bytes, grouped
from .geometry import LayerKeywords

__all__ = ["DEFAULT_CHUNK_MEMORY", "operator_norm", "report", "singular_values", "store_npy"]

#: Default working-memory budget of one task (bytes): small enough that even a 2-D
#: c=256 layer at n=32 makes ~70 tasks (load balance), large enough that a task runs
#: for tens of milliseconds or more (scheduler overhead is ~1 ms per task).
DEFAULT_CHUNK_MEMORY = 32 * 2**20

#: what a report row may set: every keyword of convsv.singular_values (the task calls it)
_SETTINGS = tuple(
    name
    for name in inspect.signature(_spectrum.singular_values).parameters
    if name not in ("kernel", "n", "full_output", "progress")
)


def _chunk_namespace(k: Any) -> tuple[Any, ModuleType]:
    """``k`` as a NumPy (host) or CuPy (device) array, zero-copy, and its namespace."""
    name = "cupy" if not is_on_host(k) else "numpy"
    if name == "cupy" and importlib.util.find_spec("cupy") is None:
        msg = (
            f"kernel lives on device {device_of(k)!r}; Dask chunks of GPU data are CuPy "
            f"arrays, so convsv.dask needs CuPy installed for GPU kernels"
        )
        raise TypeError(msg)
    xp = importlib.import_module(f"array_api_compat.{name}")
    return to_namespace(detached(k), xp, name="kernel"), xp


def _tile(sizes: list[int], per_freq: int, budget: float) -> tuple[int, ...]:
    """Largest rectangular tile of the frequency grid (trailing axes first) within budget,
    evened out so that the tiles along each axis have (nearly) equal sizes."""
    room = int(budget // per_freq)
    tile = [1] * len(sizes)
    for j in reversed(range(len(sizes))):
        take = max(1, min(sizes[j], room))
        pieces = math.ceil(sizes[j] / take)
        tile[j] = math.ceil(sizes[j] / pieces)
        room //= tile[j]
        if room < 1:
            break
    return tuple(tile)


def _chunk_task(
    k: Any, corr: Any, spec: ConvSpec, sub: list[np.ndarray], solver: str, real: bool
) -> Any:
    """One tile's singular values, with the mirrors of conjugate frequencies, descending."""
    xp = array_namespace(k)
    sv = _spectrum.frequency_chunk(grouped(k, spec, xp), spec, sub, xp, solver=solver, corr=corr)
    parts = [xp.reshape(sv, (-1,))]
    if real:  # real kernels: the skipped half of the last axis repeats these values
        dup = _spectrum._duplicated(sub[-1], spec.m[-1])
        if dup.size:
            idx = xp.asarray(dup, device=device_of(sv))
            parts.append(xp.reshape(xp.take(sv, idx, axis=spec.d - 1), (-1,)))
    values = parts[0] if len(parts) == 1 else xp.concat(parts)
    values = xp.astype(values, real_dtype(xp, k.dtype), copy=False)
    return xp.sort(values, descending=True)


def _corr_task(k: Any, spec: ConvSpec) -> Any:
    xp = array_namespace(k)
    from .gram import gram_autocorrelation

    return gram_autocorrelation(grouped(k, spec, xp), spec, xp)


def _whole_task(k: Any, n: Any, stride: Any, options: dict[str, Any]) -> Any:
    """Methods that build one large array ('fft', 'dense') run in-process, as one task."""
    return _spectrum.singular_values(k, n, stride, **options)


def _merge_task(*parts: Any) -> Any:
    xp = array_namespace(*parts)
    return xp.sort(parts[0] if len(parts) == 1 else xp.concat(parts), descending=True)


def _lazy_values(
    kernel: Any,
    n: Any,
    stride: Any,
    dilation: Any,
    groups: Any,
    layout: str,
    padding: str,
    method: str,
    solver: str,
    memory_limit: float | None,
    chunk_memory: float | None,
    xp: Any,
) -> Any:
    """Unsorted (chunk-wise descending) spectrum: one chunk per task."""
    if chunk_memory is not None and (
        isinstance(chunk_memory, bool)
        or not isinstance(chunk_memory, (int, float, np.number))
        or not chunk_memory > 0
    ):
        msg = f"chunk_memory must be a positive number of bytes or None, got {chunk_memory!r}"
        raise ValueError(msg)
    budget = DEFAULT_CHUNK_MEMORY if chunk_memory is None else float(chunk_memory)
    # convsv's own paddings only: PyTorch paddings have no chunked exact spectrum to split
    layer = LayerKeywords(stride, dilation, groups, layout, padding)
    k, spec, method, _, geom = _spectrum._prepare(
        kernel, n, layer, method, solver, memory_limit, xp
    )
    k, cxp = _chunk_namespace(k)
    rdt = real_dtype(cxp, k.dtype)
    meta = cxp.empty((0,), dtype=rdt, device=device_of(k))
    token = tokenize(k, spec, padding, method, solver, memory_limit, budget)
    kname = f"convsv-kernel-{token}"
    name = f"convsv-values-{token}"
    dsk: dict[Any, Any] = {kname: k}  # the kernel, once; every task names this key

    if method != "lfa":  # 'fft' and 'dense' build one large array: a single task
        options = {
            "dilation": dilation,
            "groups": groups,
            "padding": padding,
            "method": method,
            "solver": solver,
            "memory_limit": memory_limit,
        }
        # the layer's own n and stride: spec is its periodic embedding (geometry)
        dsk[(name, 0)] = (_whole_task, kname, geom.n, geom.stride, options)
        chunks: tuple[int, ...] = (min(geom.shape),)
    else:
        real = not cxp.isdtype(k.dtype, "complex floating")
        freqs = _spectrum._frequency_plan(spec, real)
        per_freq = _spectrum.chunk_block_bytes(k, spec, cxp, solver)
        if per_freq > budget:
            msg = (
                f"chunk_memory={chunk_memory!r} bytes is less than one frequency's symbol "
                f"blocks with their workspace ({_fmt_bytes(per_freq)}); raise chunk_memory "
                f"to at least {per_freq}"
            )
            raise ValueError(msg)
        sizes = [int(f.size) for f in freqs]
        tile = _tile(sizes, per_freq, budget)
        corr = None
        if solver == "gram":
            corr = f"convsv-corr-{token}"
            dsk[corr] = (_corr_task, kname, spec)
        r = min(spec.c_out // spec.groups, spec.c_in // spec.groups * spec.phases)
        counts = []
        for i, starts in enumerate(np.ndindex(*[math.ceil(s / t) for s, t in zip(sizes, tile)])):
            sub = [f[a * t : (a + 1) * t] for f, a, t in zip(freqs, starts, tile)]
            blocks = math.prod(w.size for w in sub)
            if real:
                blocks += blocks // sub[-1].size * _spectrum._duplicated(sub[-1], spec.m[-1]).size
            counts.append(blocks * spec.groups * r)
            dsk[(name, i)] = (_chunk_task, kname, corr, spec, sub, solver, real)
        chunks = tuple(counts)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=(chunks,), meta=meta)


def singular_values(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: str = "circular",
    method: str = "auto",
    solver: str = "svd",
    memory_limit: float | None = None,
    chunk_memory: float | None = None,
    sort: bool = True,
    xp: Any = None,
) -> Any:
    r"""All singular values of a convolutional layer, as a lazy Dask array.

    The same values as :func:`convsv.singular_values` (Sedghi et al. 2019, Theorem 6;
    Senderovich et al. 2022, Theorem 2, eq. (10)), computed by Dask tasks: every task
    evaluates one rectangular tile of the frequency grid with
    :func:`convsv.spectrum.frequency_chunk`. Works with any scheduler (threads,
    processes, ``dask.distributed``); nothing runs until ``.compute()``.

    Parameters
    ----------
    kernel, n, stride, dilation, groups, layout, padding, method, solver, memory_limit
        As in :func:`convsv.singular_values`. ``method="lfa"`` (what ``"auto"`` picks
        for periodic layers) is split into tasks; ``"fft"`` and ``"dense"`` build one
        large array and run as a single task. There is no ``progress``: Dask draws its
        own (``dask.diagnostics.ProgressBar``, ``distributed.progress``, the dashboard).
    chunk_memory : float, optional
        Working-memory budget of one task in bytes (symbol blocks, their contraction and
        LAPACK's workspace). Default :data:`DEFAULT_CHUNK_MEMORY` (32 MiB). A
        ``ValueError`` is raised if one frequency's blocks alone exceed it.
    sort : bool, optional
        ``True`` (default): one array chunk, sorted descending. The final merge holds the
        whole spectrum on one worker (about ``3 * 8 * N`` bytes for ``N`` float64 values).
        ``False``: one chunk per task, each sorted descending, the chunks in frequency
        order: the same multiset, never gathered in one place. Use it for spectra larger
        than one machine (:func:`store_npy`, ``da.topk``, ``da.histogram``).
    xp : namespace, optional
        Namespace to read ``kernel`` with (as in :func:`convsv.singular_values`). The
        chunks are NumPy arrays for kernels in host memory and CuPy arrays for GPU kernels
        (torch CUDA tensors are viewed through DLPack; CuPy must be installed).

    Returns
    -------
    dask.array.Array
        Lazy, 1-D, real in the kernel's precision, length ``min(rows, cols)`` of the
        operator.

    Examples
    --------
    >>> import numpy as np, convsv.dask as cvd
    >>> k = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
    >>> sv = cvd.singular_values(k, 16, stride=2)
    >>> sv.shape, bool(sv[0].compute() >= sv[-1].compute())
    ((512,), True)
    """
    if not isinstance(sort, bool):
        msg = f"sort must be True or False, got {sort!r}"
        raise TypeError(msg)
    values = _lazy_values(
        kernel,
        n,
        stride,
        dilation,
        groups,
        layout,
        padding,
        method,
        solver,
        memory_limit,
        chunk_memory,
        xp,
    )
    if not sort or values.numblocks[0] == 1:
        return values
    name = f"convsv-sorted-{tokenize(values.name)}"
    dsk = {(name, 0): (_merge_task, *values.__dask_keys__())}
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[values])
    return da.Array(graph, name, chunks=((values.shape[0],),), meta=values._meta)


def operator_norm(
    kernel: Any,
    n: Any,
    stride: Any = 1,
    *,
    dilation: Any = 1,
    groups: int = 1,
    layout: str = "oihw",
    padding: str = "circular",
    method: str = "auto",
    solver: str = "svd",
    memory_limit: float | None = None,
    chunk_memory: float | None = None,
    xp: Any = None,
) -> Any:
    """Largest singular value of a convolutional layer, as a lazy 0-d Dask array.

    The maximum over the tasks of :func:`singular_values` (Sedghi et al. 2019, Theorem 6;
    Senderovich et al. 2022, Theorem 2), combined by Dask's tree reduction: the spectrum
    is never gathered. Parameters as in :func:`singular_values`.
    """
    values = _lazy_values(
        kernel,
        n,
        stride,
        dilation,
        groups,
        layout,
        padding,
        method,
        solver,
        memory_limit,
        chunk_memory,
        xp,
    )
    return values.max()


class _NpyWriter:
    """``target[region] = chunk`` into a ``.npy`` file, opened by whichever worker writes.

    A NumPy memmap would be pickled as a copy to process and distributed workers; the path
    travels instead (the file must be on storage every worker sees).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __setitem__(self, key: Any, value: Any) -> None:
        if not isinstance(value, np.ndarray):  # CuPy: writing a file is an explicit download
            value = value.get()
        mm = np.load(self.path, mmap_mode="r+")
        mm[key] = value
        mm.flush()
        del mm


def store_npy(values: Any, path: str | os.PathLike, **compute_kwargs: Any) -> str:
    """Write a 1-D Dask array to a ``.npy`` file chunk by chunk (never gathered in memory).

    The file is written as ``path + ".partial"`` and renamed to ``path`` only once every
    chunk is written. If the computation fails (a task raises, a worker or the client
    disappears), the partial file is removed and the error is re-raised with a note: a
    file at ``path`` is always complete. ``compute_kwargs`` go to ``dask.array.store``
    (e.g. ``scheduler="processes"``); a ``dask.distributed.Client`` is used if active.

    Returns
    -------
    str
        The path written.
    """
    if not isinstance(values, da.Array) or values.ndim != 1:
        msg = f"values must be a 1-D dask.array.Array, got {type(values).__name__}"
        raise TypeError(msg)
    if any(math.isnan(c) for c in values.chunks[0]):
        msg = "values has unknown chunk sizes; call values.compute_chunk_sizes() first"
        raise ValueError(msg)
    path = os.fspath(path)
    partial = path + ".partial"
    np.lib.format.open_memmap(partial, mode="w+", dtype=values.dtype, shape=values.shape).flush()
    try:
        da.store(values, _NpyWriter(partial), lock=False, compute=True, **compute_kwargs)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        if hasattr(exc, "add_note"):
            exc.add_note(f"convsv.dask.store_npy: {path} was not written (partial file removed)")
        raise
    os.replace(partial, path)
    return path


def _report_task(layer: Any, kind: str) -> dict[str, Any]:
    if kind == "torch":
        module, shape = layer
        cvt = importlib.import_module("convsv.torch")
        values = cvt.singular_values(module, shape)
        row: dict[str, Any] = {"layer": type(module).__name__, "input_shape": tuple(shape)}
    else:
        options = {key: v for key, v in layer.items() if key not in ("kernel", "n", "name")}
        values = _spectrum.singular_values(layer["kernel"], layer["n"], **options)
        row = {
            "shape": tuple(int(s) for s in layer["kernel"].shape),
            "n": layer["n"],
            **{key: v for key, v in options.items() if key != "xp"},
        }
    xp = array_namespace(values)
    top, bottom = float(values[0]), float(values[-1])
    energy = float(xp.sum(values * values))
    row.update(
        count=int(values.shape[0]),
        operator_norm=top,
        smallest=bottom,
        frobenius=math.sqrt(energy),
        stable_rank=energy / top**2 if top else 0.0,
        condition=top / bottom if bottom else math.inf,
    )
    return row


def report(layers: Iterable[Any], *, client: Any = None) -> list[dict[str, Any]]:
    """Spectral summary of many layers, one Dask task per layer.

    Each layer is either a mapping ``{"kernel": ..., "n": ..., **settings}`` (settings:
    any keyword of :func:`convsv.singular_values`; an optional ``"name"``), or a pair
    ``(torch_module, input_shape)`` computed by ``convsv.torch.singular_values`` (this
    needs :mod:`convsv.torch`; without it a ``TypeError`` says how to pass the kernel).
    Inside a task convsv uses its own thread pool: set ``CONVSV_NUM_THREADS=1`` on workers
    that share cores.

    Parameters
    ----------
    layers : iterable
    client : dask.distributed.Client, optional
        Run there; otherwise the current Dask scheduler.

    Returns
    -------
    list of dict
        One row per layer, in order: ``name``, the settings, ``count`` (number of singular
        values), ``operator_norm``, ``smallest``, ``frobenius``, ``stable_rank``
        (``sum s^2 / max s^2``) and ``condition``. ``pandas.DataFrame(rows)`` tabulates it.
    """
    tasks, names = [], []
    for i, layer in enumerate(layers):
        if isinstance(layer, Mapping):
            missing = {"kernel", "n"} - set(layer)
            unknown = set(layer) - {"kernel", "n", "name", *_SETTINGS}
            if missing or unknown:
                msg = (
                    f"layers[{i}] must be a mapping with keys 'kernel', 'n' and optional "
                    f"'name', {', '.join(map(repr, _SETTINGS))}; missing {sorted(missing)}, "
                    f"unknown {sorted(unknown)}"
                )
                raise ValueError(msg)
            options = {key: v for key, v in layer.items() if key in _SETTINGS}
            # validate now, so that a bad layer fails here and not on a worker
            keywords = LayerKeywords(
                **{f.name: options[f.name] for f in fields(LayerKeywords) if f.name in options}
            )
            _spectrum._prepare(
                layer["kernel"],
                layer["n"],
                keywords,
                options.get("method", "auto"),
                options.get("solver", "svd"),
                options.get("memory_limit"),
                options.get("xp"),
            )
            kind, name = "kernel", layer.get("name", f"layer{i}")
        elif isinstance(layer, tuple) and len(layer) == 2 and library_of(layer[0]) == "torch":
            if importlib.util.find_spec("convsv.torch") is None:
                msg = (
                    f"layers[{i}] is a torch module; reporting modules needs convsv.torch, "
                    f"which this installation lacks. Pass {{'kernel': "
                    f"module.weight.detach(), 'n': ..., 'stride': module.stride, "
                    f"'dilation': module.dilation, 'groups': module.groups}} instead"
                )
                raise TypeError(msg)
            kind, name = "torch", f"layer{i}"
        else:
            msg = (
                f"layers[{i}] must be a mapping {{'kernel': ..., 'n': ..., **settings}} or "
                f"a (torch module, input_shape) pair, got {type(layer).__name__}"
            )
            raise TypeError(msg)
        tasks.append(dask.delayed(_report_task, pure=True)(layer, kind))
        names.append(name)
    rows = client.gather(client.compute(tasks)) if client is not None else dask.compute(*tasks)
    return [{"name": name, **row} for name, row in zip(names, rows)]
