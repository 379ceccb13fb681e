"""Certified operator_norm against the full spectrum and the fantastic-four bound.

Writes ``docs/bench_norm.md``. Contenders run interleaved in one process, best of
``--rounds``; the error column is ``|value - singular_values(...).max()| / that max``.

    python asv_benchmarks/bench_norm.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import array_api_compat.numpy as xnp
import numpy as np
from threadpoolctl import threadpool_limits

import convsv
from convsv._validation import conv_spec, grouped
from convsv.spectrum import spectral_chunks

ROOT = Path(__file__).resolve().parents[1]


def fantastic_four(kernel: np.ndarray, n_iter: int = 50, seed: int = 0) -> float:
    """Singla & Feizi (ICLR 2021), Theorem 1: ``||J||_2 <= sqrt(h w) min_i ||R_i||_2``.

    The four matrices are reshapes of the kernel ``L`` (``c_o x c_i x h x w``):
    ``(c_o h) x (w c_i)``, ``(c_o w) x (h c_i)``, ``c_o x (h w c_i)``, ``(c_o h w) x c_i``;
    each norm by ``n_iter`` power iterations, as in the paper's implementation.
    """
    co, ci, h, w = kernel.shape
    lw = np.transpose(kernel, (0, 2, 3, 1))  # (c_o, h, w, c_i)
    mats = [
        lw.reshape(co * h, w * ci),
        np.transpose(kernel, (0, 3, 2, 1)).reshape(co * w, h * ci),
        lw.reshape(co, h * w * ci),
        lw.reshape(co * h * w, ci),
    ]
    rng = np.random.default_rng(seed)
    # one BLAS thread: matrix-vector products gain nothing from more, and threaded
    # OpenBLAS spins badly on a loaded machine (convsv holds its own BLAS to one too)
    with threadpool_limits(1):
        norms = [_power_norm(m, n_iter, rng) for m in mats]
    return float(np.sqrt(h * w) * min(norms))


def _power_norm(m: np.ndarray, n_iter: int, rng: np.random.Generator) -> float:
    v = rng.standard_normal(m.shape[1])
    s = 0.0
    for _ in range(n_iter):
        u = m @ v
        u /= np.linalg.norm(u)
        v = m.T @ u
        s = np.linalg.norm(v)
        v /= s
    return float(s)


def today(kernel: np.ndarray, n: int) -> float:
    """The previous operator_norm: every block's singular values, then the maximum."""
    spec = conv_spec(kernel, n, 1, 1, 1)
    parts = spectral_chunks(
        grouped(kernel, spec, xnp), spec, xnp, method="lfa", solver="svd", memory_limit=None
    )
    return float(max(p.max() for p in parts))


def kernels(c: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    rand = rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)
    # trained-like: low-pass taps (the energy sits at low frequencies)
    taps = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])[None, None] / 16
    smooth = rng.standard_normal((c, c, 1, 1)) * taps + 0.05 * rand
    u = np.linalg.qr(rng.standard_normal((c, c)))[0][:, : c // 2]
    q = u @ u.T
    ortho = np.zeros((c, c, 3, 3))
    ortho[:, :, 1, 1], ortho[:, :, 1, 2] = q, np.eye(c) - q  # every singular value 1
    return {"random": rand, "low-pass": smooth, "orthogonal": ortho}


def clock(fn):
    """Wall and CPU seconds (the CPU time, summed over threads, is less sensitive to other
    jobs on a shared machine) and the result."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    sizes = [(64, 16)] if args.quick else [(256, 16), (128, 32)]
    rng = np.random.default_rng(0)
    rows = []
    for c, n in sizes:
        for name, k in kernels(c, rng).items():
            best: dict[str, float] = {}
            cpu: dict[str, float] = {}
            out: dict[str, object] = {}
            contenders = {
                "norm": lambda k=k, n=n: convsv.operator_norm(k, n, full_output=True),
                "norm_1e-3": lambda k=k, n=n: convsv.operator_norm(
                    k, n, rtol=1e-3, full_output=True
                ),
                "singular_values": lambda k=k, n=n: convsv.singular_values(k, n),
                "today": lambda k=k, n=n: today(k, n),
                "ff50": lambda k=k: fantastic_four(k),
            }
            for _ in range(args.rounds):
                for key, fn in contenders.items():
                    t, tc, o = clock(fn)
                    best[key] = min(best.get(key, np.inf), t)
                    cpu[key] = min(cpu.get(key, np.inf), tc)
                    out[key] = o
            exact = float(out["singular_values"][0])
            value, info = out["norm"]
            v3, info3 = out["norm_1e-3"]
            best["cpu_ratio"] = cpu["singular_values"] / cpu["norm"]
            rows.append(
                (c, n, name, best, exact, float(value), info, float(v3), info3, out["ff50"])
            )
            print(rows[-1][:4], flush=True)
    write(rows, resnet_rows(args), args)


#: ResNet-18 (CIFAR) 3x3 layer shapes on their padded tori: the certification that
#: spectral normalisation (issue 12) and kernel-support clipping (issue 13) repeat.
RESNET = [(64, 34), (128, 18), (256, 10), (512, 6)]


def resnet_rows(args) -> list[tuple]:
    """float32 ``operator_norm`` at the loose tolerances of training, NumPy and torch CPU."""
    import torch

    rng = np.random.default_rng(1)
    rows = []
    for c, n in [(64, 34)] if args.quick else RESNET:
        k = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
        kt = torch.from_numpy(k)
        contenders = {
            (lib, rtol): (
                lambda a=a, rtol=rtol, n=n: convsv.operator_norm(a, n, rtol=rtol, full_output=True)
            )
            for lib, a in (("numpy", k), ("torch", kt))
            for rtol in (5e-3, 1e-3)
        }
        best: dict = {}
        out: dict = {}
        for _ in range(max(3, args.rounds)):
            for key, fn in contenders.items():
                t, _, o = clock(fn)
                best[key] = min(best.get(key, np.inf), t)
                out[key] = o
        t_sv, _, sv = clock(lambda k=k, n=n: convsv.singular_values(k, n))
        exact = float(sv[0])
        rows.append((c, n, best, out, exact, t_sv))
        print((c, n, {f"{a} {b:g}": round(1e3 * t, 1) for (a, b), t in best.items()}), flush=True)
    return rows


def write(rows, resnet, args) -> None:
    lines = [
        "# Certified operator norm (convsv.norm)",
        "",
        (
            f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores (load average "
            f"{os.getloadavg()[0]:.1f} at the start; contenders interleaved, best of "
            f"{args.rounds}), NumPy {np.__version__}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. float64, 3x3, "
            "stride 1, circular."
        ),
        "`python asv_benchmarks/bench_norm.py`.",
        "",
        (
            "Columns: seconds for `operator_norm` (default rtol, certified), the same with "
            "`rtol=1e-3`, `singular_values`, the previous `operator_norm` (every block's "
            "svdvals), 50 power iterations of Singla & Feizi's fantastic-four bound; speed-up "
            "of `operator_norm` over `singular_values` in wall time and (in brackets) in CPU "
            "time summed over threads; relative error of the value against "
            "`singular_values(...).max()`; certified relative width `(upper-lower)/value` "
            "(default rtol; with rtol=1e-3 in brackets); blocks solved exactly / "
            "Cholesky-tested / total (default rtol); fantastic four / true norm."
        ),
        "",
        (
            "| c | n | kernel | norm s | rtol=1e-3 s | singular_values s | previous s | ff50 s "
            "| speed-up | rel. error | width | exact / chol / blocks | ff50 / norm |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, n, name, best, exact, value, info, _v3, info3, ff in rows:
        lines.append(
            f"| {c} | {n} | {name} | {best['norm']:.3f} | {best['norm_1e-3']:.3f} | "
            f"{best['singular_values']:.3f} | {best['today']:.3f} | {best['ff50']:.3f} | "
            f"{best['singular_values'] / best['norm']:.1f}x ({best['cpu_ratio']:.1f}x) | "
            f"{abs(value - exact) / exact:.1e} | {(info.upper - info.lower) / value:.1e} "
            f"({(info3.upper - info3.lower) / value:.1e}) | "
            f"{info.blocks_exact} / {info.blocks_cholesky} / {info.blocks} | "
            f"{ff / exact:.2f} |"
        )
    lines += [
        "",
        (
            "ResNet-18 (CIFAR) layer shapes, float32, random 3x3 kernels on the padded "
            "torus, same run: milliseconds per `operator_norm(w, n, rtol=...)` with NumPy "
            "arrays and torch CPU tensors (certified through a zero-copy NumPy view); "
            "relative error of the value and certified width at `rtol=5e-3` (NumPy); "
            "`singular_values` (NumPy, float32, one run) for scale."
        ),
        "",
        (
            "| c | n | numpy 5e-3 ms | numpy 1e-3 ms | torch 5e-3 ms | torch 1e-3 ms "
            "| singular_values ms | rel. error | width |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, n, best, out, exact, t_sv in resnet:
        value, info = out[("numpy", 5e-3)]
        value = float(value)
        lines.append(
            f"| {c} | {n} | {1e3 * best[('numpy', 5e-3)]:.0f} | "
            f"{1e3 * best[('numpy', 1e-3)]:.0f} | {1e3 * best[('torch', 5e-3)]:.0f} | "
            f"{1e3 * best[('torch', 1e-3)]:.0f} | {1e3 * t_sv:.0f} | "
            f"{abs(value - exact) / exact:.1e} | {(info.upper - info.lower) / value:.1e} |"
        )
    path = ROOT / "docs" / "bench_norm.md"
    # the analysis below the tables is written by hand: keep it
    old = path.read_text() if path.exists() else ""
    keep = old[old.index("\n## ") :] if "\n## " in old else ""
    path.write_text("\n".join(lines) + "\n" + keep)
    print(path.read_text())


if __name__ == "__main__":
    main()
