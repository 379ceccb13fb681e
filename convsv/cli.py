"""``convsv``: a singular-value report for the convolutions of a network.

Without arguments it reports a built-in example (ResNet-18 for CIFAR-10 shapes with
seeded He-initialised weights); ``--kernels file.npy|file.npz`` reports your own
kernels (every array in an ``.npz``) at ``--n`` / ``--stride``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["main"]


@dataclass(frozen=True)
class LayerShape:
    name: str
    c_out: int
    c_in: int
    k: int
    n: int
    stride: int = 1


def resnet18_cifar() -> list[LayerShape]:
    """Convolutions of ResNet-18 on 32x32 inputs (He et al. 2016, CIFAR variant)."""
    out = [LayerShape("conv1", 64, 3, 3, 32)]
    c_in, n = 64, 32
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            s = 2 if stage > 1 and block == 0 else 1
            out.append(LayerShape(f"layer{stage}.{block}.conv1", c, c_in, 3, n, s))
            n_out = n // s
            out.append(LayerShape(f"layer{stage}.{block}.conv2", c, c, 3, n_out))
            if s != 1 or c_in != c:
                out.append(LayerShape(f"layer{stage}.{block}.shortcut", c, c_in, 1, n, s))
            c_in, n = c, n_out
    return out


def wrn_16_10() -> list[LayerShape]:
    """Convolutions of WRN-16-10 on 32x32 inputs (Zagoruyko & Komodakis 2016)."""
    out = [LayerShape("conv1", 16, 3, 3, 32)]
    c_in, n = 16, 32
    for stage, (c, s0) in enumerate(((160, 1), (320, 2), (640, 2)), start=1):
        for block in range(2):
            s = s0 if block == 0 else 1
            out.append(LayerShape(f"block{stage}.{block}.conv1", c, c_in, 3, n, s))
            n_out = n // s
            out.append(LayerShape(f"block{stage}.{block}.conv2", c, c, 3, n_out))
            if c_in != c:
                out.append(LayerShape(f"block{stage}.{block}.shortcut", c, c_in, 1, n, s))
            c_in, n = c, n_out
    return out


EXAMPLES = {"resnet18": resnet18_cifar, "wrn-16-10": wrn_16_10}


def example_kernels(name: str, seed: int = 0) -> Iterator[tuple[LayerShape, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for layer in EXAMPLES[name]():
        fan_in = layer.c_in * layer.k * layer.k
        w = rng.standard_normal((layer.c_out, layer.c_in, layer.k, layer.k)) * math.sqrt(2 / fan_in)
        yield layer, w


def file_kernels(path: str, n: int, stride: int, layout: str) -> Iterator[tuple[LayerShape, np.ndarray]]:
    data = np.load(path)
    items = data.items() if hasattr(data, "items") else [(path, data)]
    for name, w in items:
        w = np.asarray(w)
        if w.dtype not in (np.float32, np.float64):
            w = w.astype(np.float64)
        c_out, c_in = (w.shape[0], w.shape[1]) if layout == "oihw" else (w.shape[-1], w.shape[-2])
        k = w.shape[2] if layout == "oihw" else w.shape[0]
        yield LayerShape(name, c_out, c_in, k, n, stride), w


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convsv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--example", choices=sorted(EXAMPLES), default="resnet18",
                   help="built-in network whose conv shapes are reported (default: resnet18)")
    p.add_argument("--kernels", metavar="FILE", help=".npy or .npz file of kernels")
    p.add_argument("--n", type=int, default=32, help="input size for --kernels (default 32)")
    p.add_argument("--stride", type=int, default=1, help="stride for --kernels (default 1)")
    p.add_argument("--layout", choices=("oihw", "hwio"), default="oihw")
    p.add_argument("--seed", type=int, default=0, help="seed of the example's weights")
    p.add_argument("--backend", default="numpy", help="numpy, torch, cupy or array_api_strict")
    p.add_argument("--progress", action="store_true",
                   help="progress bar over each layer's frequency chunks (stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convsv`` command."""
    import importlib

    import convsv
    from convsv._array_api import to_numpy

    args = _parser().parse_args(argv)
    try:
        xp = importlib.import_module(args.backend)
    except ImportError:
        print(f"convsv: backend {args.backend!r} is not installed", file=sys.stderr)
        return 2
    if args.kernels:
        rows = file_kernels(args.kernels, args.n, args.stride, args.layout)
        title = f"{args.kernels} at n={args.n}, stride={args.stride}"
    else:
        rows = example_kernels(args.example, args.seed)
        title = f"{args.example} (CIFAR shapes, He-initialised, seed {args.seed})"
    print(f"convsv {convsv.__version__}: exact singular values of the periodic convolutions of {title}")
    head = f"{'layer':<24} {'kernel':>16} {'n':>4} {'s':>2} {'#sv':>7} {'sigma_max':>10} " \
           f"{'sigma_min':>10} {'cond':>10} {'sec':>7}"
    print(head)
    print("-" * len(head))
    total = 0.0
    largest = []
    for layer, w in rows:
        t0 = time.perf_counter()
        sv = convsv.singular_values(w, layer.n, layer.stride, layout=args.layout,
                                    progress=args.progress, xp=xp)
        sv = to_numpy(sv) if args.backend != "cupy" else sv.get()
        dt = time.perf_counter() - t0
        total += dt
        smax, smin = float(sv[0]), float(sv[-1])
        cond = smax / smin if smin > 0 else math.inf
        largest.append(smax)
        shape = "x".join(map(str, w.shape))
        print(f"{layer.name:<24} {shape:>16} {layer.n:>4} {layer.stride:>2} {sv.size:>7} "
              f"{smax:>10.4f} {smin:>10.3e} {cond:>10.3g} {dt:>7.3f}", flush=True)
    print("-" * len(head))
    lip = float(np.prod(largest)) if largest else 0.0
    print(f"{len(largest)} layers in {total:.2f} s; product of operator norms "
          f"(Lipschitz bound of the conv stack) {lip:.4g}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
