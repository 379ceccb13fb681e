"""``convsv``: a singular-value report for the layers of a network.

Without arguments it reports a built-in example (ResNet-18 for CIFAR-10 shapes, seeded
He-initialised weights, periodic layers: exact spectra). ``--kernels file.npy|file.npz``
reports your own kernels (every array of an ``.npz``) with per-layer settings from
``--manifest file.json|file.toml`` or the common ``--n/--stride/--padding/...``;
``--model pkg.module:factory`` builds a PyTorch model (needs torch) whose layer settings
are read from the modules (:mod:`convsv.torch`). Errors are one line on stderr, exit 2.

Manifest (JSON or TOML): a table per kernel name with any of ``n``, ``stride``,
``padding``, ``padding_mode``, ``dilation``, ``groups``, ``layout``, ``transposed``,
``output_padding``; a table ``"*"`` gives defaults. Example (JSON)::

    {"*": {"n": 32}, "conv1": {"padding": 1}, "down": {"stride": 2, "groups": 4}}
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["main"]

# a dense SVD above this many operator entries is left to the bracket
DENSE_LIMIT = 2**22

FIELDS = (
    "name",
    "type",
    "kernel",
    "input_shape",
    "output_shape",
    "sigma_max",
    "sigma_min",
    "condition",
    "stable_rank",
    "exact",
    "lower",
    "upper",
    "method",
    "seconds",
)


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit status 2."""


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
_SETTINGS = (
    "n",
    "stride",
    "padding",
    "padding_mode",
    "dilation",
    "groups",
    "layout",
    "transposed",
    "output_padding",
)


def example_kernels(name: str, seed: int = 0) -> Iterator[tuple[str, np.ndarray, dict]]:
    rng = np.random.default_rng(seed)
    for layer in EXAMPLES[name]():
        fan_in = layer.c_in * layer.k * layer.k
        w = rng.standard_normal((layer.c_out, layer.c_in, layer.k, layer.k)) * math.sqrt(2 / fan_in)
        yield layer.name, w, {"n": layer.n, "stride": layer.stride}


def _load_manifest(path: str | None) -> dict[str, dict]:
    if path is None:
        return {}
    try:
        if path.endswith(".toml"):
            import tomllib

            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path) as f:
                data = json.load(f)
    except OSError as exc:
        msg = f"cannot read manifest {path!r}: {exc.strerror or exc}"
        raise CLIError(msg) from exc
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError
        msg = f"manifest {path!r} is not valid: {exc}"
        raise CLIError(msg) from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        msg = f"manifest {path!r} must map kernel names to tables of settings"
        raise CLIError(msg)
    for name, table in data.items():
        bad = sorted(set(table) - set(_SETTINGS))
        if bad:
            msg = (
                f"manifest {path!r}: unknown setting(s) {bad} for {name!r}; "
                f"known: {', '.join(_SETTINGS)}"
            )
            raise CLIError(msg)
    return data


def file_kernels(
    path: str, common: dict, manifest: dict[str, dict]
) -> Iterator[tuple[str, np.ndarray, dict]]:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        msg = f"no such file: {path!r}"
        raise CLIError(msg) from exc
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path!r} as .npy/.npz: {exc}"
        raise CLIError(msg) from exc
    items = list(data.items()) if hasattr(data, "items") else [(path.rsplit("/", 1)[-1], data)]
    unknown = sorted(set(manifest) - {"*"} - {name for name, _ in items})
    if unknown:
        msg = f"manifest names {unknown} not in {path!r}"
        raise CLIError(msg)
    for name, w in items:
        w = np.asarray(w)
        if w.ndim not in (3, 4, 5):
            msg = (
                f"kernel {name!r} in {path!r} has shape {w.shape}: a kernel needs 3-5 "
                f"dimensions (two channel axes, 1-3 spatial)"
            )
            raise CLIError(msg)
        if not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.complexfloating)):
            msg = f"kernel {name!r} has dtype {w.dtype}; need float or complex"
            raise CLIError(msg)
        if w.dtype not in (np.float32, np.float64, np.complex64, np.complex128):
            w = w.astype(np.complex128 if np.iscomplexobj(w) else np.float64)
        yield name, w, {**common, **manifest.get("*", {}), **manifest.get(name, {})}


def _cond(smax: float, smin: float, size: int, eps: float) -> float:
    """Condition number; inf when rank-deficient (``smin <= eps * smax * size``)."""
    return math.inf if smin <= eps * smax * size else smax / smin


def kernel_row(
    name: str, w: Any, settings: dict, *, xp: Any, progress: bool, method: str, solver: str
) -> tuple[dict, np.ndarray | None]:
    """One report row for a kernel file / example layer, computed by the core."""
    import convsv
    from convsv._array_api import to_numpy
    from convsv.geometry import layer_geometry

    kw = {
        k: settings[k]
        for k in ("padding", "padding_mode", "transposed", "output_padding")
        if k in settings
    }
    layout = settings.get("layout", "oihw")
    n, stride = settings.get("n", 32), settings.get("stride", 1)
    dil, groups = settings.get("dilation", 1), settings.get("groups", 1)
    if layout == "oihw":
        k_oihw = w
    else:  # (*k, c_in, c_out) -> (c_out, c_in, *k), in the kernel's own namespace
        from array_api_compat import array_namespace

        nd = len(w.shape)
        k_oihw = array_namespace(w).permute_dims(w, (nd - 1, nd - 2, *range(nd - 2)))
    geom = layer_geometry(
        k_oihw,
        n,
        stride,
        dil,
        groups,
        kw.get("padding", "circular"),
        kw.get("padding_mode"),
        kw.get("transposed", False),
        kw.get("output_padding", 0),
    )
    rows, cols = geom.shape
    common = {"dilation": dil, "groups": groups, "layout": layout, "xp": xp, **kw}
    t0 = time.perf_counter()
    exact = geom.exact_periodic or rows * cols <= DENSE_LIMIT
    row = {
        "name": name,
        "type": "kernel",
        "kernel": "x".join(map(str, w.shape)),
        "input_shape": list(geom.in_shape),
        "output_shape": list(geom.out_shape),
    }
    # (str: a torch dtype is no NumPy dtype, and compared unequal to every one of them)
    single = str(w.dtype).endswith(("float32", "complex64"))
    eps = float(np.finfo(np.float32 if single else np.float64).eps)
    if exact:
        sv = convsv.singular_values(
            w,
            n,
            stride,
            method=method if geom.exact_periodic else "dense",
            solver=solver,
            progress=progress,
            **common,
        )
        sv = np.asarray(to_numpy(sv), dtype=np.float64)
        smax, smin = float(sv[0]), float(sv[-1])
        err = 64 * eps * smax
        row.update(
            sigma_max=smax,
            sigma_min=smin,
            condition=_cond(smax, smin, max(rows, cols), eps),
            stable_rank=float(np.sum(sv**2) / smax**2) if smax > 0 else math.nan,
            exact=True,
            lower=max(smax - err, 0.0),
            upper=smax + err,
            method=(method if method != "auto" else "lfa") if geom.exact_periodic else "dense",
        )
    else:
        lo, up = convsv.singular_value_bounds(w, n, stride, progress=progress, **common)
        lo, up = float(to_numpy(lo)[0]), float(to_numpy(up)[0])
        row.update(
            sigma_max=math.nan,
            sigma_min=math.nan,
            condition=math.nan,
            stable_rank=math.nan,
            exact=False,
            lower=lo,
            upper=up,
            method="bounds",
        )
        sv = None
    row["seconds"] = time.perf_counter() - t0
    return row, sv


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        msg = f"must be a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return v


def _shape(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if not parts or any(p < 1 for p in parts):
        msg = f"must be positive integers separated by commas (e.g. 3,32,32), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return parts


def _padding(text: str) -> Any:
    if text in ("circular", "zeros", "same", "valid"):
        return text
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = (-1,)
    if any(p < 0 for p in parts):
        msg = (
            f"must be circular, zeros, same, valid, or non-negative integers "
            f"separated by commas, got {text!r}"
        )
        raise argparse.ArgumentTypeError(msg)
    return parts[0] if len(parts) == 1 else parts


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not usage + message
        raise CLIError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="convsv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("what to report (default: the built-in example)")
    src.add_argument(
        "--example",
        choices=sorted(EXAMPLES),
        default="resnet18",
        help="built-in network whose conv shapes are reported (default: resnet18)",
    )
    src.add_argument("--seed", type=int, default=0, help="seed of the example's weights")
    src.add_argument("--kernels", metavar="FILE", help=".npy or .npz file of kernels")
    src.add_argument(
        "--manifest",
        metavar="FILE",
        help="JSON or TOML: per-kernel n, stride, padding, groups, ...",
    )
    src.add_argument(
        "--model",
        metavar="PKG.MODULE:FACTORY",
        help="a callable returning a torch.nn.Module (needs torch)",
    )
    src.add_argument(
        "--weights", metavar="FILE", help="state dict for --model (torch.load(weights_only=True))"
    )
    src.add_argument(
        "--input-shape",
        type=_shape,
        metavar="C,H,W",
        help="input shape of --model, without the batch axis",
    )
    lay = p.add_argument_group("layer settings for --kernels (the manifest overrides them)")
    lay.add_argument("--n", type=_shape, default=None, metavar="N[,N..]", help="input size (32)")
    lay.add_argument("--stride", type=_shape, default=None, metavar="S[,S..]")
    lay.add_argument("--dilation", type=_shape, default=None, metavar="D[,D..]")
    lay.add_argument("--groups", type=_positive_int, default=None)
    lay.add_argument(
        "--padding",
        type=_padding,
        default=None,
        help="circular (periodic, default), zeros, same, valid, or P[,P..]",
    )
    lay.add_argument("--padding-mode", choices=("zeros", "reflect", "replicate", "circular"))
    lay.add_argument("--layout", choices=("oihw", "hwio"), default=None)
    how = p.add_argument_group("how")
    how.add_argument(
        "--method",
        choices=("auto", "lfa", "fft"),
        default="auto",
        help="periodic layers' symbol method",
    )
    how.add_argument("--solver", choices=("svd", "gram"), default="svd")
    how.add_argument("--backend", default="numpy", help="numpy, torch, cupy or array_api_strict")
    how.add_argument("--device", default=None, help="torch device (e.g. cuda) for torch/--model")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=("table", "json", "csv"), default="table")
    out.add_argument("--plot", metavar="FILE.png", help="per-layer spectra (needs matplotlib)")
    out.add_argument(
        "--progress",
        action="store_true",
        help="name each layer on stderr as it starts (plain lines)",
    )
    return p


def _tuple_or_int(v: tuple[int, ...] | None) -> Any:
    return None if v is None else (v[0] if len(v) == 1 else v)


def _common(args: argparse.Namespace) -> dict:
    out = {"n": _tuple_or_int(args.n) or 32}
    for key, val in (
        ("stride", _tuple_or_int(args.stride)),
        ("dilation", _tuple_or_int(args.dilation)),
        ("groups", args.groups),
        ("padding", args.padding),
        ("padding_mode", args.padding_mode),
        ("layout", args.layout),
    ):
        if val is not None:
            out[key] = val
    return out


def _load_factory(spec: str) -> Any:
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr.isidentifier():
        msg = f"--model must look like pkg.module:factory, got {spec!r}"
        raise CLIError(msg)
    try:
        module = importlib.import_module(mod)
    except ImportError as exc:
        msg = f"--model: cannot import {mod!r}: {exc}"
        raise CLIError(msg) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        msg = f"--model: {mod!r} has no callable {attr!r}"
        raise CLIError(msg)
    return factory


def model_rows(args: argparse.Namespace) -> tuple[list[dict], dict[str, np.ndarray], str]:
    try:
        import torch
    except ImportError as exc:
        msg = "--model needs torch (pip install torch)"
        raise CLIError(msg) from exc
    factory = _load_factory(args.model)
    if args.input_shape is None:
        msg = "--model needs --input-shape C,H,W"
        raise CLIError(msg)
    import convsv.torch as cvt

    try:
        model = factory()
    except Exception as exc:  # the user's code: its failure is said in one line
        msg = f"--model {args.model!r} raised {type(exc).__name__}: {exc}".splitlines()[0]
        raise CLIError(msg) from exc
    if not isinstance(model, torch.nn.Module):
        msg = f"--model {args.model!r} returned {type(model).__name__}, not an nn.Module"
        raise CLIError(msg)
    if args.weights:
        try:
            state = torch.load(args.weights, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            msg = f"no such file: {args.weights!r}"
            raise CLIError(msg) from exc
        except Exception as exc:
            raise CLIError(
                f"cannot load --weights {args.weights!r}: {exc}".splitlines()[0]
            ) from exc
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CLIError(f"--weights do not fit the model: {exc}".splitlines()[0]) from exc
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    # torch says what is wrong with a device (RuntimeError) or a build without CUDA
    # (AssertionError): the user's mistake, said in one line
    try:
        device = torch.device(args.device) if args.device else torch.device("cpu")
        if device.type == "meta":
            msg = "--device meta holds shapes but no values: there is no spectrum to compute"
            raise CLIError(msg)
        model = model.to(device)
        x = torch.zeros((1, *args.input_shape), dtype=dtype, device=device)
    except (RuntimeError, AssertionError) as exc:
        msg = f"--device {args.device!r}: {exc}".splitlines()[0]
        raise CLIError(msg) from exc
    from convsv.torch._report import trace_shapes

    try:
        trace_shapes(model, x)  # the example input must fit the model
    except Exception as exc:  # the model's own forward (its asserts, shape errors, ...)
        msg = (
            f"--model {args.model!r} does not run on an input of shape "
            f"{tuple(x.shape)} (--input-shape {','.join(map(str, args.input_shape))}): "
            f"{type(exc).__name__}: {exc}"
        ).splitlines()[0]
        raise CLIError(msg) from exc
    rep = cvt.report(model, x, progress=args.progress)
    rows, spectra = [], {}
    for r, rec in zip(rep.rows, rep.to_records()):
        rec["kernel"] = r.type
        rec["seconds"] = math.nan
        rows.append(rec)
        if r.values is not None:
            spectra[r.name] = r.values
    title = f"model {args.model} on input {','.join(map(str, args.input_shape))}"
    return rows, spectra, title


def _csv_value(v: Any) -> str:
    if isinstance(v, float) and not isinstance(v, bool):
        return repr(v)
    return _fmt(v)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "inf" if v == math.inf else ("-" if math.isnan(v) else f"{v:.5g}")
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return str(v)


def render(rows: list[dict], fmt: str, title: str, total: float) -> str:
    if fmt == "json":
        clean = [
            {
                k: (
                    None
                    if isinstance(v, float) and math.isnan(v)
                    else ("inf" if v == math.inf else v)
                )
                for k, v in r.items()
            }
            for r in rows
        ]
        return json.dumps({"title": title, "layers": clean}, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            # full precision: a machine-readable row (lower and upper differ in digits the
            # table's 5 would round away)
            w.writerow({k: _csv_value(r.get(k, "")) for k in FIELDS})
        return buf.getvalue().rstrip("\n")
    # the table leaves out what the kernel column already says
    cols = tuple(f for f in FIELDS if f not in ("type", "output_shape"))
    heads = (
        "layer",
        "kernel",
        "input",
        "sigma_max",
        "sigma_min",
        "cond",
        "st.rank",
        "exact",
        "lower",
        "upper",
        "method",
        "sec",
    )
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    line = lambda vals: "  ".join(
        v.ljust(w) if i in (0, 1, 2, 10) else v.rjust(w)
        for i, (v, w) in enumerate(zip(vals, widths))
    )
    out = [f"convsv: singular values of {title}", line(heads), "-" * len(line(heads))]
    out += [line(c) for c in cells]
    out.append(
        f"{len(rows)} layers in {total:.2f} s. Per-layer values only: a product of "
        f"these norms is not a Lipschitz bound of a network with residual connections."
    )
    return "\n".join(out)


def plot(spectra: dict[str, np.ndarray], rows: list[dict], path: str, title: str) -> None:
    try:
        import matplotlib as mpl
    except ImportError as exc:
        msg = "--plot needs matplotlib (pip install matplotlib)"
        raise CLIError(msg) from exc
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        sv = spectra.get(r["name"])
        if sv is not None and sv.size:
            ax.plot(np.linspace(0, 1, sv.size), sv, lw=1, label=r["name"])
        elif not math.isnan(r["lower"]):
            ax.plot([0, 0], [r["lower"], r["upper"]], lw=3, label=f"{r['name']} (bracket)")
    ax.set_yscale("log")
    ax.set_xlabel("relative index of the singular value")
    ax.set_ylabel("singular value")
    ax.set_title(title, fontsize=9)
    if len(rows) <= 24:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        msg = f"cannot write --plot {path!r}: {exc.strerror or exc}"
        raise CLIError(msg) from exc
    finally:
        plt.close(fig)


def _run(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.perf_counter()
    if args.model:
        rows, spectra, title = model_rows(args)
    else:
        try:
            xp = importlib.import_module(args.backend)
        except ImportError as exc:
            msg = f"backend {args.backend!r} is not installed"
            raise CLIError(msg) from exc
        if args.device and args.backend != "torch":
            msg = f"--device needs --backend torch or --model (backend is {args.backend!r})"
            raise CLIError(msg)
        if args.kernels:
            kernels = file_kernels(args.kernels, _common(args), _load_manifest(args.manifest))
            title = args.kernels
        else:
            if args.manifest:
                msg = "--manifest needs --kernels"
                raise CLIError(msg)
            kernels = example_kernels(args.example, args.seed)
            title = f"{args.example} (CIFAR shapes, He-initialised, seed {args.seed}, periodic)"
        rows, spectra = [], {}
        kernels = list(kernels)
        for i, (name, w, settings) in enumerate(kernels):
            if args.progress:
                print(f"convsv: layer {i + 1}/{len(kernels)} {name}", file=sys.stderr, flush=True)
            if args.backend == "torch":
                try:
                    w = xp.asarray(w, device=args.device or "cpu")
                except (RuntimeError, AssertionError, TypeError, ValueError) as exc:
                    msg = f"--device {args.device!r}: {exc}".splitlines()[0]
                    raise CLIError(msg) from exc
            try:
                row, sv = kernel_row(
                    name,
                    w,
                    settings,
                    xp=xp,
                    method=args.method,
                    solver=args.solver,
                    progress=args.progress and sys.stderr.isatty(),
                )
            except (ValueError, TypeError) as exc:
                msg = f"layer {name!r}: {exc}"
                raise CLIError(msg) from exc
            rows.append(row)
            if sv is not None:
                spectra[name] = sv
    total = time.perf_counter() - t0
    print(render(rows, args.format, title, total), flush=True)
    if args.plot:
        plot(spectra, rows, args.plot, title)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``convsv`` command (exit status 2 on a user error)."""
    try:
        return _run(argv)
    except CLIError as exc:
        print(f"convsv: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, MemoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"convsv: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
