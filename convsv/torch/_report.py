"""Per-layer spectral report of a PyTorch model (shapes from forward hooks)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ._layers import Layer, eval_weight, layer_of, power_norm, supported

__all__ = ["LayerReport", "Report", "report", "trace_shapes"]

# a dense SVD above this many operator entries is left to the bracket (minutes otherwise)
DENSE_LIMIT = 2**22

# activations that are 1-Lipschitz in the l2 norm (what a chain bound may multiply through)
_ONE_LIPSCHITZ = (
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Softsign,
)


@dataclass(frozen=True)
class LayerReport:
    """One row of a :class:`Report`.

    ``exact=True``: ``sigma_max``/``sigma_min`` are the extreme values of the full exact
    spectrum (``values``); ``lower``/``upper`` are ``sigma_max`` -/+ the SVD's error bound
    ``64 eps s_max``. ``exact=False``: ``sigma_max``
    is an estimate of the top value bracketed by the certified ``lower <= true <= upper``;
    ``sigma_min``, ``condition``, ``stable_rank`` are NaN. Unsupported layers have
    ``method="unsupported"`` and NaN everywhere, never a made-up 1.0.
    """

    name: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    sigma_max: float
    sigma_min: float
    condition: float
    stable_rank: float
    exact: bool
    lower: float
    upper: float
    method: str
    values: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def supported(self) -> bool:
        return self.method != "unsupported"


@dataclass
class Report:
    """Rows of :func:`report`, in the order the forward pass met the layers."""

    rows: list[LayerReport]
    chain: bool = False  # the model is an nn.Sequential of supported / 1-Lipschitz modules

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> LayerReport:
        return self.rows[i]

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (no spectra): for JSON, CSV or pandas."""
        out = []
        for r in self.rows:
            d = asdict(r)
            d.pop("values")
            d["input_shape"], d["output_shape"] = list(r.input_shape), list(r.output_shape)
            out.append(d)
        return out

    def lipschitz_bound(self) -> float | None:
        """Product of the layers' certified upper bounds -- only where that is a bound.

        Valid only when the model is an ``nn.Sequential`` chain whose modules are all
        supported layers or 1-Lipschitz activations (ReLU, Tanh, Sigmoid, Identity,
        Flatten, Dropout, ...), every layer met once, in the l2 norm, bias ignored (biases
        do not change a Lipschitz constant). Residual connections, batch norm, pooling
        or anything unknown make it ``None``: a product of norms is not a bound there.
        """
        if not self.chain or any(not r.supported for r in self.rows):
            return None
        return float(np.prod([r.upper for r in self.rows])) if self.rows else None

    def to_markdown(self) -> str:
        head = (
            "| layer | type | input | output | sigma_max | sigma_min | cond | stable rank | "
            "exact | lower | upper | method |"
        )
        lines = [head, "|" + "---|" * 12]
        for r in self.rows:
            cells = [
                r.name,
                r.type,
                "x".join(map(str, r.input_shape)),
                "x".join(map(str, r.output_shape)),
                _f(r.sigma_max),
                _f(r.sigma_min),
                _f(r.condition),
                _f(r.stable_rank),
                "yes" if r.exact else "no",
                _f(r.lower),
                _f(r.upper),
                r.method,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        bound = self.lipschitz_bound()
        if bound is not None:
            lines.append(
                f"\nLipschitz bound of this Sequential chain (l2, 1-Lipschitz "
                f"activations, product of the upper bounds): {bound:.6g}"
            )
        return "\n".join(lines)

    def plot(self, path: Any, *, title: str | None = None) -> Any:
        """Each layer's sorted spectrum against its relative index (Sedghi et al. 2019, Fig. 4).

        Layers with only a bracket are drawn as a vertical bar at index 0. Needs matplotlib.
        Returns the figure.
        """
        # a bare Figure (no pyplot): the user's backend and open figures are left alone
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 5))
        ax = fig.add_subplot()
        for r in self.rows:
            if r.values is not None and r.values.size:
                x = np.linspace(0.0, 1.0, r.values.size)
                ax.plot(x, r.values, label=r.name, lw=1)
            elif r.supported:
                ax.plot([0, 0], [r.lower, r.upper], lw=3, label=f"{r.name} (bracket)")
        ax.set_xlabel("relative index of the singular value")
        ax.set_ylabel("singular value")
        ax.set_yscale("log")
        ax.set_title(title or "singular values per layer")
        if len(self.rows) <= 24:
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return fig


def _f(v: float) -> str:
    return "inf" if v == math.inf else ("-" if math.isnan(v) else f"{v:.5g}")


def trace_shapes(model: nn.Module, example_input: Any) -> list[tuple[str, nn.Module, tuple, tuple]]:
    """``(name, module, input_shape, output_shape)`` for each leaf module the forward meets.

    Runs one forward pass in eval mode (batch norm statistics are not updated) without
    gradients, then restores every module's training flag.
    """
    if isinstance(example_input, (tuple, list, torch.Size)) and all(
        isinstance(v, int) for v in example_input
    ):
        # a shape where an input belongs: torch would say "forward() takes 2 positional
        # arguments but 5 were given"
        msg = (
            f"example_input must be an input tensor (or a tuple of the forward's tensors), "
            f"got the shape {tuple(example_input)}: pass torch.zeros({tuple(example_input)})"
        )
        raise TypeError(msg)
    names = {m: n for n, m in model.named_modules()}
    seen: dict[nn.Module, tuple] = {}
    order: list[nn.Module] = []

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        if mod in seen or not args or not isinstance(args[0], torch.Tensor):
            return
        oshape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        seen[mod] = (tuple(args[0].shape), oshape)
        order.append(mod)

    # a parametrized layer (spectral_norm, weight_norm, ...) has its parametrizations as
    # children: it is hooked as a layer, the parametrizations (called on the weight, not
    # on the input) are not
    inner = {
        p
        for m in model.modules()
        if parametrize.is_parametrized(m)
        for p in m.parametrizations.modules()
    }
    leaves = [
        m for m in model.modules() if m not in inner and (supported(m) or not list(m.children()))
    ]
    handles = [m.register_forward_hook(hook) for m in leaves]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, t in flags.items():
            m.train(t)
    return [(names[m] or type(m).__name__, m, *seen[m]) for m in order]


def traced_layer(mod: nn.Module, ishape: tuple, oshape: tuple) -> Layer:
    """The layer ``mod`` computed in the traced forward.

    A ConvTranspose called with ``output_size=`` pads its output by other amounts than its
    ``output_padding`` attribute: the traced output size says by how much, and the layer
    is read from a shallow copy of the module with that ``output_padding`` (the copy
    shares the weight, so clip_ still writes into the module's own).
    """
    layer = layer_of(mod, ishape)
    d = len(layer.out_shape) - 1
    if not layer.transposed or len(oshape) < d or tuple(oshape[-d:]) == layer.out_shape[1:]:
        return layer
    op = tuple(
        int(o) - v + p for o, v, p in zip(oshape[-d:], layer.out_shape[1:], mod.output_padding)
    )
    alt = copy.copy(mod)  # (a new __dict__; the same parameters)
    alt.output_padding = op
    return layer_of(alt, ishape)


def _is_chain(model: nn.Module) -> bool:
    # a module met twice (the same layer reused) would have one row for two factors
    if not isinstance(model, nn.Sequential) or len({id(m) for m in model}) != len(model):
        return False
    for m in model:
        if isinstance(m, nn.LeakyReLU):
            if abs(m.negative_slope) > 1:
                return False
        elif not (supported(m) or isinstance(m, _ONE_LIPSCHITZ)):
            return False
    return True


def _exact_row(name: str, layer: Layer, method: str, w: torch.Tensor) -> LayerReport:
    kw = {} if layer.kind == "linear" else {"method": method}
    sv = layer.singular_values(w, **kw).detach().double().cpu().numpy()
    smax, smin = float(sv[0]), float(sv[-1])
    eps = float(torch.finfo(w.dtype).eps)
    cond = math.inf if smin <= eps * smax * max(layer.size) else smax / smin
    stable = float(np.sum(sv**2) / smax**2) if smax > 0 else math.nan
    # the bracket a promise may rest on: the SVD's error (a few eps * s_max), rounded outward
    err = 64 * eps * smax
    return LayerReport(
        name,
        type(layer.module).__name__,
        layer.in_shape,
        layer.out_shape,
        smax,
        smin,
        cond,
        stable,
        True,
        max(smax - err, 0.0),
        smax + err,
        "matrix" if layer.kind == "linear" else method,
        sv,
    )


def _bracket_row(name: str, layer: Layer, w: torch.Tensor, iterations: int) -> LayerReport:
    full = None
    try:
        full = layer.full_output_norm(w)
    except ValueError:
        full = None
    if full is not None:
        value, info = full
        est, lo, hi, method = float(value), float(info.lower), float(info.upper), str(info.method)
    else:
        # Rayleigh quotient of the power iteration (float64: a true lower bound up to
        # 1e-15 relative) and the periodic layer on the padded torus (a certified upper)
        est, _ = power_norm(layer, w.double(), iterations=iterations)
        lo, hi, method = est * (1 - 1e-12), max(layer.torus_upper(w), est), "power+torus"
    nan = math.nan
    return LayerReport(
        name,
        type(layer.module).__name__,
        layer.in_shape,
        layer.out_shape,
        est,
        nan,
        nan,
        nan,
        False,
        lo,
        hi,
        method,
    )


def layer_row(
    name: str, layer: Layer, *, dense_limit: int = DENSE_LIMIT, iterations: int = 300
) -> LayerReport:
    """Exact row when the periodic path or a small dense SVD applies, else a bracket."""
    w = eval_weight(layer.module)  # a parametrized layer's computed weight
    if layer.kind == "linear":
        return _exact_row(name, layer, "matrix", w)
    mapped = layer.core_kwargs()
    if mapped is not None and mapped["padding"] == "circular":
        return _exact_row(name, layer, "lfa", w)
    try:  # a periodic layer up to permutations (e.g. 1x1 stride-2 shortcuts): exact, cheap
        return _exact_row(name, layer, "lfa", w)
    except ValueError:  # refused before any work: not periodic
        pass
    rows, cols = layer.size
    if rows * cols <= dense_limit:
        try:
            return _exact_row(name, layer, "dense", w)
        except ValueError:  # the core cannot express this padding: bracket it
            pass
    return _bracket_row(name, layer, w, iterations)


def report(
    model: nn.Module,
    example_input: Any,
    *,
    dense_limit: int = DENSE_LIMIT,
    iterations: int = 300,
    progress: bool = False,
) -> Report:
    """Spectral report of every layer of ``model`` that ``example_input`` reaches.

    Input and output shapes come from forward hooks (one forward pass in eval mode, no
    gradients). Each supported layer (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear) gets
    its exact full spectrum when the layer is periodic (Sedghi et al. 2019, Theorem 6;
    Senderovich et al. 2022, Theorem 2) or its dense operator has at most ``dense_limit``
    entries; otherwise its top singular value bracketed by certified bounds
    (``exact=False``: the core's ``operator_norm(full_output=True)`` where available, else a
    power-iteration Rayleigh quotient below and the periodic layer on the padded torus
    above). A parametrized layer (``spectral_norm``, ``weight_norm``, ...) is reported
    with the weight its forward computes in eval mode. Other leaf modules with parameters
    are listed as unsupported.

    Parameters
    ----------
    model : torch.nn.Module
    example_input : torch.Tensor or tuple of tensors
        Passed to ``model``; a batch of one is enough.
    dense_limit : int, optional
        Largest dense operator (entries) whose SVD the report computes.
    iterations : int, optional
        Power iterations for the fallback bracket.
    progress : bool, optional
        One line per layer on stderr as it is computed.

    Returns
    -------
    Report
    """
    import sys

    rows = []
    traced = trace_shapes(model, example_input)
    for i, (name, mod, ishape, oshape) in enumerate(traced):
        if progress:
            print(
                f"convsv: layer {i + 1}/{len(traced)} {name} ({type(mod).__name__})",
                file=sys.stderr,
                flush=True,
            )
        if supported(mod):
            rows.append(
                layer_row(
                    name,
                    traced_layer(mod, ishape, oshape),
                    dense_limit=dense_limit,
                    iterations=iterations,
                )
            )
        elif any(True for _ in mod.parameters(recurse=False)):
            nan = math.nan
            rows.append(
                LayerReport(
                    name,
                    type(mod).__name__,
                    ishape[1:],
                    oshape[1:],
                    nan,
                    nan,
                    nan,
                    nan,
                    False,
                    nan,
                    nan,
                    "unsupported",
                )
            )
    return Report(rows, chain=_is_chain(model))
