"""convsv against the papers' reference code, side by side in one process.

Writes ``docs/benchmarks.md`` (and ``docs/benchmarks.png`` when matplotlib is present)
with the machine it ran on. Float64, 3x3 kernels, c_in = c_out = c.

    python asv_benchmarks/compare.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import convsv
import convsv.tt as tt
from convsv._validation import conv_spec, grouped
from convsv.lfa import grid_symbols
from convsv.reference import sedghi_singular_values
from convsv.spectrum import _frequency_plan

ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floor_time(k: np.ndarray, n: int) -> float:
    """Batched svdvals of the unique blocks, preformed and contiguous, over all cores."""
    import array_api_compat.numpy as xp
    from threadpoolctl import threadpool_limits
    spec = conv_spec(k, n, 1, 1, 1)
    blocks = np.ascontiguousarray(grid_symbols(grouped(k, spec, xp), spec,
                                               _frequency_plan(spec, True), xp))
    flat = blocks.reshape(-1, *blocks.shape[-2:])
    workers = len(os.sched_getaffinity(0))
    parts = np.array_split(flat, workers)

    def run():
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda b: np.linalg.svd(b, compute_uv=False), parts))
    return best(run)


def peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [(16, 32), (64, 16)] if args.quick else [(64, 32), (128, 32), (256, 16)]
    rows = []
    for c, n in cases:
        k = rng.standard_normal((c, c, 3, 3))
        hwio = np.transpose(k, (2, 3, 1, 0))
        t_sedghi = best(lambda: sedghi_singular_values(hwio, (n, n)), 2)
        t_svd = best(lambda: convsv.singular_values(k, n))
        t_gram = best(lambda: convsv.singular_values(k, n, solver="gram"))
        t_floor = floor_time(k, n)
        ref = np.sort(sedghi_singular_values(hwio, (n, n)).ravel())[::-1]
        err = float(np.abs(convsv.singular_values(k, n) - ref).max() / ref[0])
        rows.append((c, n, t_sedghi, t_svd, t_gram, t_floor, err))
        print(rows[-1], flush=True)
    tt_rows = []
    for c, n in ([(64, 16)] if args.quick else [(256, 16), (256, 32)]):
        k = rng.standard_normal((c, c, 3, 3))
        t_full = best(lambda: convsv.singular_values(k, n), 1)
        m_full = peak_mb(lambda: convsv.singular_values(k, n))
        for r in (c // 4, c // 2):
            t = tt.decompose(k, ranks=(r, r))
            t_tt = best(lambda: tt.singular_values(t, n), 1)
            m_tt = peak_mb(lambda: tt.singular_values(t, n))
            tt_rows.append((c, n, r, t_full, t_tt, m_full, m_tt))
            print(tt_rows[-1], flush=True)
    geo = float(np.exp(np.mean([np.log(r[2] / r[3]) for r in rows])))
    geo_g = float(np.exp(np.mean([np.log(r[2] / r[4]) for r in rows])))
    lines = [
        "# Benchmarks", "",
        (f"Machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}, NumPy {np.__version__}. Float64, 3x3 kernels, "
        "c_in = c_out = c, stride 1; best of 2-3 runs, all in one process "
        "(`python asv_benchmarks/compare.py`)."), "",
        "## singular_values vs Sedghi et al.'s two NumPy lines", "",
        "| c | n | Sedghi (s) | convsv svd (s) | ratio | convsv gram (s) | ratio | floor (s) | svd / floor | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, n, ts, tv, tg, tf, err in rows:
        lines.append(f"| {c} | {n} | {ts:.3f} | {tv:.3f} | {ts / tv:.2f}x | {tg:.3f} | {ts / tg:.2f}x "
                     f"| {tf:.3f} | {tv / tf:.2f} | {err:.1e} |")
    lines += ["", (f"Geometric-mean speedup: svd {geo:.2f}x, gram {geo_g:.2f}x. The floor is the "
              "batched SVD (values only) of the unique symbol blocks, already formed and contiguous, "
              "split evenly over all cores with one BLAS thread per worker."), "",
              "## TT path (Senderovich et al. Theorem 1) vs the full kernel", "",
              "| c | n | r | full (s) | TT (s) | speedup | full peak (MiB) | TT peak (MiB) |",
              "|---|---|---|---|---|---|---|---|"]
    for c, n, r, tf, tt_, mf, mt in tt_rows:
        lines.append(f"| {c} | {n} | {r} | {tf:.3f} | {tt_:.3f} | {tf / tt_:.2f}x | {mf:.0f} | {mt:.0f} |")
    lines += ["", "Peak memory is Python-level allocations traced by tracemalloc (NumPy arrays).", ""]
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines))
    print(out.read_text())
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"c={c}, n={n}" for c, n, *_ in rows]
    x = np.arange(len(rows))
    for i, (name, idx) in enumerate([("Sedghi", 2), ("convsv svd", 3), ("convsv gram", 4), ("floor", 5)]):
        ax.bar(x + (i - 1.5) * 0.2, [r[idx] for r in rows], 0.2, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("All singular values of a 3x3 conv layer (float64)")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "benchmarks.png", dpi=100)


if __name__ == "__main__":
    main()
