"""convsv.dask vs the in-process path on the same cores (issue 16), and the numbers of
the scaling model in docs/dask.md.

    python asv_benchmarks/dask_overhead.py [--rounds 3] [--model]

Contenders, interleaved, best of ``--rounds``, in one process:
- in-process: ``convsv.singular_values`` (its thread pool over all cores);
- dask: ``convsv.dask.singular_values(...).compute()`` on a ``LocalCluster`` with one
  single-threaded worker process per core (the cluster is started once, and a warm-up
  round ships convsv's imports to the workers before timing).
Both return the full spectrum sorted descending; the error column is
``max |dask - in-process| / s_max``.
``--model`` times one task (``frequency_chunk`` on one tile) and one 512 x 512 block for
the scaling model.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import convsv
import convsv.dask as cvd
from convsv._validation import conv_spec, grouped
from convsv.spectrum import _frequency_plan, chunk_block_bytes, frequency_chunk

CASES = [  # (label, kernel shape, n)
    ("3-D c=64, n=16^3", (64, 64, 3, 3, 3), 16),
    ("2-D c=256, n=32^2", (256, 256, 3, 3), 32),
]


def _kernel(shape, dtype):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def _graph_stats(lazy) -> tuple[int, int, int]:
    """Tasks, largest pickled task (bytes) other than the kernel key, kernel key bytes."""
    graph = dict(lazy.__dask_graph__())
    sizes = sorted(len(pickle.dumps(t)) for t in graph.values())
    return len(graph), sizes[-2], sizes[-1]


def overhead(rounds: int, dtype: str) -> None:
    from distributed import Client, LocalCluster

    workers = len(os.sched_getaffinity(0))
    print(f"cores: {workers}; load average at start: {os.getloadavg()}; dtype {dtype}")
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        for label, shape, n in CASES:
            k = _kernel(shape, dtype)
            lazy = cvd.singular_values(k, n)
            tasks, task_bytes, kernel_bytes = _graph_stats(lazy)
            ref = convsv.singular_values(k, n)  # warm-up of both paths
            got = lazy.compute()
            err = float(np.max(np.abs(got - ref)) / ref[0])
            t_in, t_dk = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                convsv.singular_values(k, n)
                t_in.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cvd.singular_values(k, n).compute()
                t_dk.append(time.perf_counter() - t0)
            print(
                f"| {label} | {tasks - 2} | {task_bytes} | {kernel_bytes} | "
                f"{min(t_in):.3f} | {min(t_dk):.3f} | {min(t_dk) / min(t_in):.2f}x | "
                f"{err:.1e} |  rounds in: {[round(t, 3) for t in t_in]} "
                f"dask: {[round(t, 3) for t in t_dk]}"
            )
        del client
    print(f"load average at end: {os.getloadavg()}")


def model(dtype: str) -> None:
    import array_api_compat.numpy as xp
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        for label, shape, n in CASES:
            k = _kernel(shape, dtype)
            spec = conv_spec(k, n, 1, 1, 1)
            freqs = _frequency_plan(spec, True)
            per_freq = chunk_block_bytes(k, spec, xp, "svd")
            tile = math.prod(cvd._tile([f.size for f in freqs], per_freq, cvd.DEFAULT_CHUNK_MEMORY))
            tasks = cvd.singular_values(k, n, sort=False).numblocks[0]
            best = math.inf
            sub = [f[:1] for f in freqs[:-1]] + [freqs[-1][1:2]]
            for _ in range(3):
                t0 = time.perf_counter()
                frequency_chunk(grouped(k, spec, xp), spec, sub, xp, solver="svd")
                best = min(best, time.perf_counter() - t0)
            print(
                f"{label}: {per_freq / 2**20:.2f} MiB per frequency, one block "
                f"{best * 1e3:.2f} ms (1 thread); {tasks} tasks of at most {tile} frequencies, "
                f"{tile * best:.2f} s per task"
            )
        k = _kernel((512, 512, 3, 3, 3), dtype)
        spec = conv_spec(k, 128, 1, 1, 1)
        sub = [np.arange(1), np.arange(1), np.arange(1, 3)]
        best = math.inf
        for _ in range(2):
            t0 = time.perf_counter()
            frequency_chunk(grouped(k, spec, xp), spec, sub, xp, solver="svd")
            best = min(best, (time.perf_counter() - t0) / 2)
        print(
            f"3-D c=512 at 128^3: {chunk_block_bytes(k, spec, xp, 'svd') / 2**20:.0f} MiB "
            f"per frequency, one 512 x 512 block {best:.3f} s (1 thread)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", action="store_true")
    args = parser.parse_args()
    if args.model:
        model(args.dtype)
    else:
        overhead(args.rounds, args.dtype)
