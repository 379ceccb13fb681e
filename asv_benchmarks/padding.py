"""Zero-padded layers: convsv's Krylov operator_norm against plain power iteration.

Side by side in one process, interleaved, best of ``--rounds``; writes
``docs/bench_padding.md``.

    python asv_benchmarks/padding.py [--quick] [--rounds 3]

1. operator_norm of a zero-padded 3x3 layer (c=256, n=32, float64, He init, seed 0) at
   tol=1e-8 vs 100 iterations of power iteration with torch F.conv2d /
   F.conv_transpose2d on the same layer, both on torch CPU tensors. Reference: convsv at
   tol=1e-13, cross-checked by a long power iteration.
2. The time of a zero-padded c=512, n=32 operator_norm.
3. Bracket widths upper/lower of the 20 ResNet-18 CIFAR convolutions (padding 1 for 3x3,
   0 for the 1x1 shortcuts; He init, seed 0).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import convsv
from convsv.cli import resnet18_cifar
from convsv.geometry import layer_geometry


def he(c_out: int, c_in: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k))


def power_iteration(w: torch.Tensor, n: int, iters: int, seed: int = 0) -> float:
    """``iters`` steps of x <- A^T A x / ||.||; returns ||A x|| for the final unit x."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, w.shape[1], n, n), generator=g, dtype=w.dtype)
    x = x / torch.linalg.vector_norm(x)
    for _ in range(iters):
        x = F.conv_transpose2d(F.conv2d(x, w, padding=1), w, padding=1)
        x = x / torch.linalg.vector_norm(x)
    return float(torch.linalg.vector_norm(F.conv2d(x, w, padding=1)))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def section_power(c: int, n: int, rounds: int, long_iters: int) -> list[str]:
    rng = np.random.default_rng(0)
    w = torch.as_tensor(he(c, c, 3, rng))
    ref, ref_info = convsv.operator_norm(w, n, padding=1, tol=1e-13, full_output=True)
    ref = float(ref)
    t_long, p_long = timed(lambda: power_iteration(w, n, long_iters))
    kry: dict[float, list] = {1e-4: [], 1e-8: []}
    pw = []
    # the steps and the proven bracket, untimed (the bracket's periodic upper bound is a
    # second computation that the value does not need)
    infos = {
        tol: convsv.operator_norm(w, n, padding=1, tol=tol, full_output=True)[1] for tol in kry
    }
    for _ in range(rounds):  # interleaved
        for tol, runs in kry.items():
            t, v = timed(lambda tol=tol: convsv.operator_norm(w, n, padding=1, tol=tol))
            runs.append((t, float(v), infos[tol]))
        t, p = timed(lambda: power_iteration(w, n, 100))
        pw.append((t, p))
    tp, vp = min(pw, key=lambda r: r[0])
    lines = [
        f"## operator_norm, zero padding 1, 3x3, c={c}, n={n}, float64 (torch CPU tensors)",
        "",
        (
            f"Reference: convsv tol=1e-13: {ref:.15g} ({ref_info.iterations} Lanczos steps, "
            f"bracket [{ref_info.lower:.15g}, {ref_info.upper:.15g}]); power iteration, "
            f"{long_iters} steps ({t_long:.1f} s): {p_long:.15g} "
            f"(relative difference {abs(p_long - ref) / ref:.1e}; power iteration approaches "
            f"from below)."
        ),
        "",
        f"| contender | time (best of {rounds}) | relative error | Lanczos steps / matvecs |",
        "|---|---|---|---|",
    ]
    for tol, runs in kry.items():
        tk, vk, ik = min(runs, key=lambda r: r[0])
        lines.append(
            f"| convsv.operator_norm(padding=1, tol={tol:g}) | {tk:.2f} s | "
            f"{abs(vk - ref) / ref:.1e} | {ik.single_steps} float32 + "
            f"{ik.iterations} float64 steps |"
        )
    lines += [
        (
            f"| power iteration, 100 steps (F.conv2d + F.conv_transpose2d) | {tp:.2f} s | "
            f"{abs(vp - ref) / ref:.1e} | 201 float64 matvecs |"
        ),
        "",
        (
            "`tol` is the relative residual: the value is within `tol` of a singular value and, "
            "in practice, within about `tol**2` of the norm (the table's error column). The "
            "proven brackets of `full_output=True` (not in the times: the upper bound is the "
            "periodic norm on the 34x34 torus, a separate computation): "
            + ", ".join(
                f"tol={tol:g}: [{min(r, key=lambda x: x[0])[2].lower:.15g}, "
                f"{min(r, key=lambda x: x[0])[2].upper:.15g}]"
                for tol, r in kry.items()
            )
            + "."
        ),
        "",
    ]
    return lines


def section_big(c: int, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    w = torch.as_tensor(he(c, c, 3, rng))
    t, v = timed(lambda: convsv.operator_norm(w, n, padding=1, tol=1e-8))
    t2, (_v2, info) = timed(
        lambda: convsv.operator_norm(w, n, padding=1, tol=1e-8, full_output=True)
    )
    return [
        f"## operator_norm, zero padding 1, 3x3, c={c}, n={n}, float64",
        "",
        (
            f"value {float(v):.12g}: {t:.1f} s; with full_output=True (adds the periodic upper "
            f"bound) {t2:.1f} s, bracket [{info.lower:.12g}, {info.upper:.12g}], "
            f"{info.iterations} Lanczos steps."
        ),
        "",
    ]


def section_resnet() -> list[str]:
    rng = np.random.default_rng(0)
    lines = [
        "## ResNet-18 (CIFAR) bracket widths at the top (Krylov tol=1e-6)",
        "",
        (
            "| layer | c_out x c_in x k, n, stride | padding | norm | lower | upper | "
            "upper/lower | method | time |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layer in resnet18_cifar():
        w = he(layer.c_out, layer.c_in, layer.k, rng)
        pad = 1 if layer.k == 3 else 0
        geom = layer_geometry(w, layer.n, layer.stride, 1, 1, pad, "zeros")
        t0 = time.perf_counter()
        if geom.exact_periodic:  # e.g. 1x1 stride-2 shortcuts: a periodic layer exactly
            lo, hi = convsv.singular_value_bounds(w, layer.n, layer.stride, padding=pad)
            v, lo, hi, method = (
                float(convsv.operator_norm(w, layer.n, layer.stride, padding=pad)),
                float(lo[0]),
                float(hi[0]),
                "exact (periodic)",
            )
        else:
            v, info = convsv.operator_norm(
                w, layer.n, layer.stride, padding=pad, tol=1e-6, full_output=True
            )
            v, lo, hi, method = float(v), info.lower, info.upper, "krylov"
        t = time.perf_counter() - t0
        lines.append(
            f"| {layer.name} | {layer.c_out}x{layer.c_in}x{layer.k}, {layer.n}, "
            f"{layer.stride} | {pad} | {v:.6f} | {lo:.6f} | {hi:.6f} | "
            f"{hi / lo:.4f} | {method} | {t:.2f} s |"
        )
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", type=int, default=300, help="long power iteration steps")
    ap.add_argument("--sections", default="power,big,resnet")
    args = ap.parse_args()
    c, big = (64, 128) if args.quick else (256, 512)
    head = [
        "# Zero-padded layers: Krylov operator_norm vs power iteration",
        "",
        (
            f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
            f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), NumPy {np.__version__}. "
            "**Shared machine** (other jobs running; load average "
            f"{os.getloadavg()[0]:.0f} at the start): absolute times are noisy, the contenders "
            "ran interleaved in one process and the best round is shown. "
            "Script: `asv_benchmarks/padding.py`."
        ),
        "",
    ]
    body = []
    secs = args.sections.split(",")
    if "power" in secs:
        body += section_power(c, 32, args.rounds, args.long)
        print("\n".join(body), flush=True)
    if "big" in secs:
        body += section_big(big, 32)
        print("\n".join(body[-4:]), flush=True)
    if "resnet" in secs:
        body += section_resnet()
        print("\n".join(body[-25:]), flush=True)
    out = ROOT / "docs" / "bench_padding.md"
    out.write_text("\n".join(head + body))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
