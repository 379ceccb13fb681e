"""convsv against the papers' reference code, side by side in one process per section.

Each section writes ``docs/bench_<section>.md`` (and a PNG where it makes sense) with
the machine it ran on; ``docs/benchmarks.md`` links them.

    python asv_benchmarks/compare.py [--quick] [--write-docs] [spectrum tt ...]

Without ``--write-docs`` the tables are only printed (``nox -s bench`` leaves the tracked
docs alone). Every reference implementation is timed at its best threading: with the
default BLAS/torch threads and with one thread, the faster counts (threaded BLAS
oversubscribes small LAPACK calls: Sedghi's lines at c=128, n=32 took 49.0 s by default
vs 3.25 s on one thread, while convsv limits its own threads per call).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import convsv
import convsv.tt as tt
from convsv._validation import conv_spec, grouped
from convsv.lfa import grid_symbols
from convsv.reference import lfa_singular_values, sedghi_singular_values
from convsv.spectrum import _frequency_plan

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WRITE_DOCS = False  # set by --write-docs


def machine() -> str:
    return (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python "
        f"{platform.python_version()}, NumPy {np.__version__}"
    )


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def one_thread():
    """BLAS (threadpoolctl) and torch's intra-op pool at one thread, restored after."""
    import contextlib

    from threadpoolctl import threadpool_limits

    @contextlib.contextmanager
    def ctx():
        torch = sys.modules.get("torch")
        before = torch.get_num_threads() if torch is not None else None
        with threadpool_limits(1, user_api="blas"):
            if torch is not None:
                torch.set_num_threads(1)
            try:
                yield
            finally:
                if torch is not None:
                    torch.set_num_threads(before)

    return ctx()


def best_threading(fn, repeat=3):
    """A reference's time at its best threading: default threads and one, the faster."""
    t_default = best(fn, repeat)
    with one_thread():
        t_one = best(fn, repeat)
    return min(t_default, t_one)


def floor_time(k: np.ndarray, n: int, repeat: int = 3) -> float:
    """Batched svdvals of the unique blocks, preformed and contiguous, over all cores."""
    import array_api_compat.numpy as xp
    from threadpoolctl import threadpool_limits

    spec = conv_spec(k, n, 1, 1, 1)
    blocks = np.ascontiguousarray(
        grid_symbols(grouped(k, spec, xp), spec, _frequency_plan(spec, True), xp)
    )
    flat = blocks.reshape(-1, *blocks.shape[-2:])
    workers = len(os.sched_getaffinity(0))
    parts = np.array_split(flat, workers)

    def run():
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda b: np.linalg.svd(b, compute_uv=False), parts))

    return best(run, repeat)


def peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def write(name: str, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if WRITE_DOCS:
        (DOCS / f"bench_{name}.md").write_text(text)


def section_spectrum(quick: bool) -> None:
    rng = np.random.default_rng(0)
    cases = [(16, 32), (64, 16)] if quick else [(64, 32), (128, 32), (256, 16)]
    rows = []
    for c, n in cases:
        k = rng.standard_normal((c, c, 3, 3))
        hwio = np.transpose(k, (2, 3, 1, 0))
        # interleaved rounds, best of each: this VM drifts by +-30% over minutes, and
        # timing one contender after the other would turn drift into a ratio
        t_sedghi = t_svd = t_gram = t_floor = math.inf
        for _ in range(2 if quick else 5):
            t_sedghi = min(
                t_sedghi, best_threading(lambda: sedghi_singular_values(hwio, (n, n)), 1)
            )
            t_svd = min(t_svd, best(lambda: convsv.singular_values(k, n), 1))
            t_gram = min(t_gram, best(lambda: convsv.singular_values(k, n, solver="gram"), 1))
            t_floor = min(t_floor, floor_time(k, n, 1))
        ref = np.sort(sedghi_singular_values(hwio, (n, n)).ravel())[::-1]
        err = float(np.abs(convsv.singular_values(k, n) - ref).max() / ref[0])
        gerr = float(np.abs(convsv.singular_values(k, n, solver="gram") - ref).max() / ref[0])
        rows.append((c, n, t_sedghi, t_svd, t_gram, t_floor, err, gerr))
    geo = math.exp(np.mean([math.log(r[2] / r[3]) for r in rows]))
    geo_g = math.exp(np.mean([math.log(r[2] / r[4]) for r in rows]))
    lines = [
        "# singular_values vs Sedghi et al.'s two NumPy lines",
        "",
        (
            f"Machine: {machine()}. Float64, 3x3 kernels, c_in = c_out = c, stride 1; best of 5 "
            "interleaved rounds in one process (`python asv_benchmarks/compare.py spectrum`)."
        ),
        "",
        (
            "| c | n | Sedghi (s) | convsv svd (s) | ratio | convsv gram (s) | ratio | floor (s) "
            "| svd / floor | max rel. diff svd | gram |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, n, ts, tv, tg, tf, err, gerr in rows:
        lines.append(
            f"| {c} | {n} | {ts:.3f} | {tv:.3f} | {ts / tv:.2f}x | {tg:.3f} | "
            f"{ts / tg:.2f}x | {tf:.3f} | {tv / tf:.2f} | {err:.1e} | {gerr:.1e} |"
        )
    lines += [
        "",
        (
            f"Geometric-mean speedup: svd {geo:.2f}x, gram {geo_g:.2f}x. The floor is the "
            "batched SVD (values only) of the unique symbol blocks, already formed and "
            "contiguous, split evenly over all cores with one BLAS thread per worker."
        ),
    ]
    write("spectrum", lines)
    if not WRITE_DOCS:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    x = np.arange(len(rows))
    for i, (name, idx) in enumerate(
        [("Sedghi", 2), ("convsv svd", 3), ("convsv gram", 4), ("floor", 5)]
    ):
        ax.bar(x + (i - 1.5) * 0.2, [r[idx] for r in rows], 0.2, label=name)
    ax.set_xticks(x, [f"c={r[0]}, n={r[1]}" for r in rows])
    ax.set_ylabel("seconds (log)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("All singular values of a 3x3 conv layer, float64, 2 cores")
    fig.tight_layout()
    fig.savefig(DOCS / "benchmarks.png", dpi=100)


def section_tt(quick: bool) -> None:
    rng = np.random.default_rng(1)
    lines = [
        "# TT path (Senderovich et al. Theorem 1) vs the full kernel",
        "",
        (
            f"Machine: {machine()}. Float64, 3x3, c_in = c_out = c, r1 = r2 = r. Peak memory is "
            "the NumPy allocations traced by tracemalloc. Best of 5 interleaved rounds."
        ),
        "",
        "| c | n | r | full (s) | TT (s) | speedup | full peak (MiB) | TT peak (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, n in [(64, 16)] if quick else [(256, 16), (256, 32)]:
        k = rng.standard_normal((c, c, 3, 3))
        m_full = peak_mb(lambda: convsv.singular_values(k, n))
        cores = {r: tt.decompose(k, ranks=(r, r)) for r in (c // 4, c // 2)}
        # interleaved rounds, best of each (this VM drifts by +-30% over minutes)
        t_full, t_cores = math.inf, dict.fromkeys(cores, math.inf)
        for _ in range(2 if quick else 5):
            t_full = min(t_full, best(lambda: convsv.singular_values(k, n), 1))
            for r, t in cores.items():
                t_cores[r] = min(t_cores[r], best(lambda t=t: tt.singular_values(t, n), 1))
        for r, t in cores.items():
            t_tt = t_cores[r]
            m_tt = peak_mb(lambda t=t: tt.singular_values(t, n))
            lines.append(
                f"| {c} | {n} | {r} | {t_full:.3f} | {t_tt:.3f} | {t_full / t_tt:.2f}x "
                f"| {m_full:.0f} | {m_tt:.0f} |"
            )
    write("tt", lines)


def section_lfa(quick: bool) -> None:
    """The LFA paper's sizes: transform time and total time, LFA vs FFT, and the layout."""
    import array_api_compat.numpy as xp

    from convsv.fft import fft_symbols

    rng = np.random.default_rng(2)
    lines = [
        "# LFA vs FFT symbols (van Betteray et al.'s sizes)",
        "",
        (
            f"Machine: {machine()}. Float64, 3x3, stride 1, full grid (no conjugate symmetry) "
            "for the transform columns; 'total' is `singular_values(method=...)` (half grid, "
            "chunked, threaded) and the paper's Algorithm 1 re-implemented "
            "(`convsv.reference.lfa_singular_values`)."
        ),
        "",
        (
            "| c | n | LFA transform (s) | FFT transform (s) | total lfa (s) | total fft (s) "
            "| paper's Alg. 1 (s) | SVD contiguous (s) | SVD strided view (s) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, n in [(16, 32)] if quick else [(16, 128), (64, 32), (64, 64)]:
        k = rng.standard_normal((c, c, 3, 3))
        spec = conv_spec(k, n, 1, 1, 1)
        kg = grouped(k, spec, xp)
        grid = [np.arange(n), np.arange(n)]
        t_lfa = best(lambda: grid_symbols(kg, spec, grid, xp))
        t_fft = best(lambda: fft_symbols(kg, spec, xp, half=False))
        tot_l = best(lambda: convsv.singular_values(k, n, method="lfa"), 2)
        tot_f = best(lambda: convsv.singular_values(k, n, method="fft"), 2)
        t_ref = best_threading(lambda: lfa_singular_values(k, n), 1)
        blocks = grid_symbols(kg, spec, grid, xp)[:, :, 0]  # (n, n, c, c) contiguous
        strided = np.ascontiguousarray(np.moveaxis(blocks, (0, 1), (2, 3)))
        view = np.moveaxis(strided, (2, 3), (0, 1))  # same values, channel-major memory
        t_c = best_threading(lambda: np.linalg.svd(blocks, compute_uv=False), 1)
        t_v = best_threading(lambda: np.linalg.svd(view, compute_uv=False), 1)
        lines.append(
            f"| {c} | {n} | {t_lfa:.4f} | {t_fft:.4f} | {tot_l:.3f} | {tot_f:.3f} | "
            f"{t_ref:.3f} | {t_c:.3f} | {t_v:.3f} |"
        )
    lines += [
        "",
        (
            "The last two columns run the same single-threaded batched SVD on the same "
            "blocks stored frequency-major (contiguous blocks) and channel-major (each block "
            "strided across memory, as `fft2` over the spatial axes of an oihw kernel leaves "
            "them)."
        ),
    ]
    write("lfa", lines)


def section_householder(quick: bool) -> None:
    import torch

    from convsv.stiefel import frame_from_householder

    lines = [
        "# Householder frames: forward + backward vs torch.linalg.householder_product",
        "",
        (
            f"Machine: {machine()}, torch {torch.__version__} (CPU). Float64; the loss is the sum "
            "of the frame's entries; best of 3."
        ),
        "",
        "| (batch, d, r) | convsv wy (s) | convsv loop (s) | torch householder_product (s) |",
        "|---|---|---|---|",
    ]
    for b, d, r in [(4, 64, 16)] if quick else [(16, 256, 64), (1, 1024, 256)]:
        g = torch.Generator().manual_seed(0)
        h = torch.randn(b, d, r, dtype=torch.float64, generator=g)
        mask = torch.tril(torch.ones(d, r, dtype=torch.float64), -1)

        def ours(method, h=h):
            x = h.clone().requires_grad_(True)
            frame_from_householder(x, method=method).sum().backward()

        def theirs(h=h, mask=mask):
            x = h.clone().requires_grad_(True)
            a = x * mask
            v = a + torch.eye(d, r, dtype=torch.float64)
            tau = 2.0 / (v * v).sum(-2)
            torch.linalg.householder_product(a, tau).sum().backward()

        lines.append(
            f"| ({b}, {d}, {r}) | {best(lambda: ours('wy')):.4f} | "
            f"{best(lambda: ours('loop')):.4f} | {best_threading(theirs):.4f} |"
        )
    write("householder", lines)


def _moved(w: np.ndarray, rel: float, seed: int) -> np.ndarray:
    """``w`` plus a Gaussian step of Frobenius norm ``rel * ||w||`` (a few training steps)."""
    step = np.random.default_rng(seed).standard_normal(w.shape)
    return w + rel * np.linalg.norm(w) / np.linalg.norm(step) * step


def clip_ratio_rows(cases, rounds: int) -> list[tuple]:
    """Cold and warm ``clip`` against one ``singular_values`` of the same layer.

    Interleaved rounds, best of each. Warm: the *clipped* kernel moved by 1e-3 (relative),
    re-clipped with ``warm_start`` (what ``clip_`` every few training steps does).
    """
    rows = []
    for c, n in cases:
        w = np.random.default_rng(c).standard_normal((c, c, 3, 3)) * math.sqrt(2 / (9 * c))
        t_sv = t_cold = t_warm = math.inf
        for _ in range(rounds):
            t0 = time.perf_counter()
            convsv.singular_values(w, n)
            t1 = time.perf_counter()
            out, info = convsv.clip(w, n, 1.0, full_output=True, memory_limit=2**34)
            t2 = time.perf_counter()
            moved = _moved(out, 1e-3, c + 1)
            t3 = time.perf_counter()
            _, winfo = convsv.clip(
                moved, n, 1.0, full_output=True, warm_start=info, memory_limit=2**34
            )
            t4 = time.perf_counter()
            t_sv, t_cold, t_warm = min(t_sv, t1 - t0), min(t_cold, t2 - t1), min(t_warm, t4 - t3)
        _, ref = convsv.clip(moved, n, 1.0, full_output=True, memory_limit=2**34)
        rows.append(
            (
                c,
                n,
                t_sv,
                t_cold,
                info.iterations,
                info.converged,
                info.max_sv,
                info.distance,
                t_warm,
                winfo.iterations,
                winfo.converged,
                winfo.max_sv,
                winfo.distance,
                ref.distance,
            )
        )
        print(rows[-1], flush=True)
    return rows


def clip_wrn_rows(quick: bool, layers: int | None = None) -> list[tuple]:
    """Per WRN-16-10 convolution: ``clip_once``, cold ``clip``, warm re-clip, ``singular_values``.

    ``layers``: only the first ones (``quick``: 3).
    """
    from convsv.cli import example_kernels

    rows = []
    todo = list(example_kernels("wrn-16-10"))
    if quick or layers:
        todo = todo[: 3 if quick else layers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, w, kw in todo:
            n, s = kw["n"], kw["stride"]
            t0 = time.perf_counter()
            once = convsv.clip_once(w, n, 1.0, s, memory_limit=2**34)
            t1 = time.perf_counter()
            out, info = convsv.clip(w, n, 1.0, s, tol=1e-2, full_output=True, memory_limit=2**34)
            t2 = time.perf_counter()
            moved = _moved(out, 1e-3, 1)
            t3 = time.perf_counter()
            _, winfo = convsv.clip(
                moved, n, 1.0, s, tol=1e-2, full_output=True, warm_start=info, memory_limit=2**34
            )
            t4 = time.perf_counter()
            t_sv = best(lambda w=w, n=n, s=s: convsv.singular_values(w, n, s), 1)
            rows.append(
                (
                    name,
                    w.shape[0],
                    w.shape[1],
                    n,
                    s,
                    t1 - t0,
                    float(convsv.operator_norm(once, n, s)),
                    t_sv,
                    t2 - t1,
                    info.iterations,
                    info.converged,
                    info.max_sv,
                    t4 - t3,
                    winfo.iterations,
                    winfo.max_sv,
                )
            )
            print(rows[-1], flush=True)
    return rows


def section_clip_wrn(quick: bool) -> None:
    """Cold clip of all 16 WRN-16-10 convolutions, and the total (issue 13, target 4).

    ``python asv_benchmarks/compare.py clip-wrn`` (prints each layer as it finishes, then
    the totals; ``CONVSV_WRN_LAYERS=k`` runs only the first ``k`` layers).
    """
    count = os.environ.get("CONVSV_WRN_LAYERS")
    t0 = time.perf_counter()
    rows = clip_wrn_rows(quick, int(count) if count else None)
    wall = time.perf_counter() - t0
    tot = [sum(r[i] for r in rows) for i in (5, 7, 8, 12)]
    print(
        f"WRN-16-10, {len(rows)} layers, float64, tol=1e-2, machine: {machine()}\n"
        f"  total cold clip {tot[2]:.1f} s ({tot[2] / 60:.1f} min; target < 15 min), "
        f"warm re-clip {tot[3]:.1f} s, singular_values {tot[1]:.1f} s, clip_once "
        f"{tot[0]:.1f} s; wall {wall:.0f} s; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def section_clip(quick: bool) -> None:
    lines = [
        '# Clipping to operator norm 1: `clip(support="kernel")` vs `singular_values`',
        "",
        (
            f"Machine: {machine()}. Float64, He-initialised 3x3 weights, tol=1e-2, "
            "`python asv_benchmarks/compare.py clip`. Cold: `clip` of the weights. Warm: the "
            "clipped kernel moved by 1e-3 (relative Frobenius), re-clipped with "
            "`warm_start=info` (as `clip_` every few training steps). Best of 3 interleaved "
            "rounds. `||.||` is the returned kernel's norm (`info.max_sv`), `dist` "
            "`info.distance`; `cold dist` is a cold clip of the moved kernel."
        ),
        "",
        (
            "| c | n | singular_values (s) | clip cold (s) | ratio | its | norm | dist | "
            "warm (s) | ratio | its | norm | dist | cold dist |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, n, t_sv, t_c, it, _ok, nm, dist, t_w, wit, _wok, wnm, wdist, cdist in clip_ratio_rows(
        [(16, 16)] if quick else [(64, 16), (128, 16)], 1 if quick else 3
    ):
        lines.append(
            f"| {c} | {n} | {t_sv:.3f} | {t_c:.2f} | {t_c / t_sv:.1f}x | {it} | "
            f"{nm:.6f} | {dist:.4f} | {t_w:.3f} | {t_w / t_sv:.1f}x | {wit} | "
            f"{wnm:.6f} | {wdist:.4f} | {cdist:.4f} |"
        )
    rows = clip_wrn_rows(quick)
    lines += [
        "",
        "## Every convolution of WRN-16-10 (CIFAR sizes, seed 0, strides as in the net)",
        "",
        (
            "`clip_once` is Sedghi et al.'s published single step (not a projection: its "
            "norm stays above 1). One run per layer."
        ),
        "",
        (
            "| layer | c_out x c_in | n | s | clip_once (s) | its norm | singular_values (s) | "
            "clip (s) | its | converged | norm | warm (s) | its | norm |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, co, ci, n, s, t_once, n_once, t_sv, t_c, it, ok, nm, t_w, wit, wnm in rows:
        lines.append(
            f"| {name} | {co}x{ci} | {n} | {s} | {t_once:.2f} | {n_once:.3f} | "
            f"{t_sv:.2f} | {t_c:.2f} | {it} | {ok} | {nm:.6f} | {t_w:.2f} | {wit} | "
            f"{wnm:.6f} |"
        )
    tot = [sum(r[i] for r in rows) for i in (5, 7, 8, 12)]
    lines += [
        "",
        (
            f"Total: clip_once {tot[0]:.1f} s, singular_values {tot[1]:.1f} s, clip "
            f"{tot[2]:.1f} s ({tot[2] / 60:.1f} min), warm re-clip {tot[3]:.1f} s."
        ),
    ]
    write("clip", lines)


def section_memory(quick: bool) -> None:
    c, n = (64, 32) if quick else (512, 64)
    # VmHWM (not ru_maxrss, which survives exec and would include this parent's peak)
    code = (
        f"import numpy as np, convsv, time; k = np.random.default_rng(0)"
        f".standard_normal(({c}, {c}, 3, 3)).astype(np.float32); t = time.perf_counter(); "
        f"sv = convsv.singular_values(k, {n}); dt = time.perf_counter() - t; "
        "hwm = [ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]; "
        "print(sv.dtype, sv.size, dt, int(hwm) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dtype, size, dt, rss = out.stdout.split()
    sedghi_gb = n * n * c * c * 16 / 2**30
    write(
        "memory",
        [
            "# Peak memory, float32",
            "",
            (
                f"Machine: {machine()}. c_in = c_out = {c}, n = {n}, 3x3, float32, one fresh "
                "process; peak resident set size (VmHWM) of the whole process, Python and libraries included."
            ),
            "",
            (
                f"convsv.singular_values: {float(rss):.0f} MiB peak RSS, {float(dt):.1f} s, "
                f"{size} values of dtype {dtype}."
            ),
            (
                f"Sedghi's lines would first allocate the n^2 c^2 transform: {sedghi_gb:.1f} GiB "
                "in complex128 (NumPy's fft2 upcasts float32), before the SVD's own copies."
            ),
        ],
    )


def _gpu_backends() -> list[tuple[str, object, object]]:
    """(name, array namespace, synchronize) for each CUDA backend present."""
    found = []
    try:
        import torch

        if torch.cuda.is_available():
            import array_api_compat.torch as tx

            found.append(("torch-cuda", tx, torch.cuda.synchronize))
    except ImportError:
        pass
    try:
        import cupy
    except ImportError:
        return found
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            import array_api_compat.cupy as cx

            found.append(("cupy", cx, lambda: cupy.cuda.Device().synchronize()))
    except Exception as exc:  # noqa: BLE001 - no usable CUDA runtime
        print(f"gpu: cupy unusable ({exc!r})", flush=True)
    return found


def _gpu_time(fn, sync) -> float:
    """Best of three after a warm-up; one run when a run takes over 2 s (warm-up is noise)."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    if first > 2:
        return first
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def section_gpu(quick: bool) -> None:
    """convsv on CUDA against Sedghi's lines and the backend's own batched svdvals."""
    backends = _gpu_backends()
    if not backends:
        print("gpu: no CUDA device, skipped", flush=True)
        return
    import array_api_compat.numpy as npx

    sizes = [(64, 32), (128, 32), (256, 16), (512, 64)] if not quick else [(64, 16)]
    subset = 128  # the backends loop over blocks, so c=512 is timed on a subset and scaled
    lines = [
        "# GPU: convsv against the backends' own batched SVD",
        "",
        f"Machine: {_gpu_name()}; {machine()}.",
        "",
        (
            "3x3 kernels, random normal, circular padding, stride 1. *Sedghi* = the paper's "
            "two lines on the GPU (FFT of the kernel, then the backend's batched SVD over all "
            "n^2 blocks). *backend svdvals* = `torch.linalg.svdvals` / "
            "`cupy.linalg.svd(compute_uv=False)` on the unique (half-spectrum) blocks, already "
            "formed and contiguous: the issue's comparator. convsv times include forming the "
            "symbols. Error: max |s - s_ref| / s_max against convsv's float64 NumPy result. "
            f"Rows marked * were timed on {subset} blocks and scaled (the backends run one "
            "cuSOLVER call per block, so the time is linear in the block count)."
        ),
        "",
        (
            "| backend | dtype | c, n | Sedghi | backend svdvals | convsv svd | convsv gram "
            "| svd vs backend | svd error | gram error |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for c, n in sizes:
        k64 = rng.standard_normal((c, c, 3, 3))
        for dtype in ("float32", "float64"):
            if c >= 512 and dtype == "float64":
                continue
            kd = k64.astype(dtype)
            ref = np.asarray(convsv.singular_values(kd.astype(np.float64), n, xp=npx))
            for name, xp, sync in backends:
                k = xp.asarray(kd, device=_cuda_device(xp))
                spec = conv_spec(k, n, 1, 1, 1)
                blocks = grid_symbols(grouped(k, spec, xp), spec, _frequency_plan(spec, True), xp)
                blocks = xp.reshape(blocks, (-1, c, c))
                scale = 1.0
                if blocks.shape[0] > subset and c >= 512:
                    scale = blocks.shape[0] / subset
                    blocks = blocks[:subset, ...]
                hwio = xp.permute_dims(k, (2, 3, 1, 0))

                def sedghi(h=hwio):
                    t = _fft2(xp, h, n)
                    if c >= 512:  # a subset of the n^2 blocks; the FFT itself is negligible
                        t = xp.reshape(t, (-1, c, c))[:subset, ...]
                    return _backend_svdvals(xp, t)

                sedghi_scale = (n * n / subset) if c >= 512 else 1.0
                t_sed = _gpu_time(sedghi, sync) * sedghi_scale
                t_bsv = _gpu_time(lambda b=blocks: _backend_svdvals(xp, b), sync) * scale
                t_svd = _gpu_time(lambda: convsv.singular_values(k, n), sync)
                t_gram = _gpu_time(lambda: convsv.singular_values(k, n, solver="gram"), sync)
                errs = []
                for solver in ("svd", "gram"):
                    sv = np.asarray(
                        _to_host(convsv.singular_values(k, n, solver=solver)), dtype=np.float64
                    )
                    errs.append(float(np.max(np.abs(sv - ref)) / ref[0]))
                star = "*" if c >= 512 else ""
                lines.append(
                    f"| {name} | {dtype} | {c}, {n} | {t_sed:.3f} s{star} | "
                    f"{t_bsv * 1e3:.1f} ms{star} | {t_svd * 1e3:.1f} ms | "
                    f"{t_gram * 1e3:.1f} ms | {t_bsv / t_svd:.1f}x | {errs[0]:.1e} | "
                    f"{errs[1]:.1e} |"
                )
                print(lines[-1], flush=True)
    write("gpu", lines)


def _gpu_name() -> str:
    try:
        import torch

        return (
            f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
            f"CuPy {__import__('cupy').__version__}"
        )
    except Exception:  # noqa: BLE001
        return "CUDA device"


def _cuda_device(xp):
    if xp.__name__.endswith("torch"):
        import torch

        return torch.device("cuda", torch.cuda.current_device())
    import cupy

    return cupy.cuda.Device()


def _fft2(xp, hwio, n):
    if xp.__name__.endswith("torch"):
        import torch

        return torch.fft.fft2(hwio, s=(n, n), dim=(0, 1))
    import cupy

    return cupy.fft.fft2(hwio, (n, n), axes=(0, 1))


def _backend_svdvals(xp, blocks):
    if xp.__name__.endswith("torch"):
        import torch

        return torch.linalg.svdvals(blocks)
    import cupy

    return cupy.linalg.svd(blocks, compute_uv=False)


def _to_host(a):
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "cpu"):
        return a.cpu().numpy()
    return np.asarray(a)


SECTIONS = {
    "spectrum": section_spectrum,
    "tt": section_tt,
    "lfa": section_lfa,
    "householder": section_householder,
    "clip": section_clip,
    "clip-wrn": section_clip_wrn,
    "memory": section_memory,
    "gpu": section_gpu,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="rewrite docs/bench_*.md and docs/benchmarks.png (default: print only)",
    )
    ap.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    global WRITE_DOCS
    WRITE_DOCS = args.write_docs
    for name in args.sections or list(SECTIONS):
        SECTIONS[name](args.quick)


if __name__ == "__main__":
    main()
