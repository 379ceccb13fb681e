"""One PyTorch layer as a linear operator: geometry read from the module, spectra, bounds.

Everything convsv needs to know about ``nn.Conv{1,2,3}d``, ``nn.ConvTranspose{1,2,3}d`` and
``nn.Linear`` is read here (stride, padding, padding mode, dilation, groups, output
padding) and turned into calls of the core, so the rest of :mod:`convsv.torch` never looks
at module attributes. Bias is excluded throughout: it does not change the Lipschitz
constant, and the layer's linear part is what has a spectrum.

A transposed convolution is the adjoint of the convolution with the same weight
(``conv_transpose`` is defined as the input-gradient of ``conv``), taken on the input size
``n_out`` that the transposed layer produces; the two have the same singular values, so
every transposed layer is handled as that convolution (its "conv view").
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import convsv

__all__ = ["Layer", "layer_of", "operator_norm", "singular_values", "supported"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_EPS64 = float(np.finfo(np.float64).eps)
_F_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def _computable(w: torch.Tensor) -> torch.Tensor:
    """``w`` in a precision the spectra are computed in: float16 / bfloat16 weights are
    read in float32 (exactly: every half value is a float32 value), so their spectra come
    back in float32; float32, float64 and complex weights as they are."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


def supported(module: nn.Module) -> bool:
    """Whether :mod:`convsv.torch` computes spectra for ``module``'s type.

    A subclass that overrides ``forward`` (weight standardisation, a scale, ...) is
    another operator than its weight's layer: not supported, never computed as if it
    were. Subclasses that keep the stock forward (parametrized modules among them) are.
    """
    return _custom_forward(module) is None and isinstance(module, (*_CONV, *_CONVT, nn.Linear))


def _custom_forward(module: nn.Module) -> str | None:
    """Why ``module`` is not the stock layer its base class computes, or None if it is."""
    for base in (*_CONV, *_CONVT, nn.Linear):
        if isinstance(module, base):
            cls = type(module)
            # what the stock forward calls too (a weight standardisation may override
            # _conv_forward and keep forward)
            names = [n for n in ("forward", "_conv_forward", "_output_padding") if hasattr(base, n)]
            own = [n for n in names if getattr(cls, n) is not getattr(base, n)]
            if not own:
                return None
            owner = next((c for c in cls.__mro__ if own[0] in vars(c)), cls)
            return (
                f"its {own[0]} is {owner.__name__}'s own, not torch.nn.{base.__name__}'s: the "
                f"operator is not its weight's layer (pass a plain torch.nn.{base.__name__} "
                f"with the weight that forward uses)"
            )
    return None


def _as_shape(input_shape: Any, d: int, channels: int, module: nn.Module) -> tuple[int, ...]:
    """``(C, *spatial)`` / ``(N, C, *spatial)`` / a tensor -> spatial size.

    Linear (``d = 0``): any shape ending in ``in_features`` -- the layer is its matrix,
    applied to every feature vector of an N-D input alike (same norm, same spectrum up
    to multiplicity).
    """
    tensor = isinstance(input_shape, torch.Tensor)
    shape = tuple(input_shape.shape) if tensor else input_shape
    ok = isinstance(shape, Sequence) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in shape
    )
    if ok and d == 0 and len(shape) >= 1 and shape[-1] == channels:
        return ()
    if ok and len(shape) in (d + 1, d + 2):
        shape = tuple(int(v) for v in shape[-(d + 1) :])
        if shape[0] == channels:
            return shape[1:]
    want = (
        "(..., in_features)"
        if d == 0
        else f"(C, {', '.join('n' + str(i) for i in range(d))}) or (N, C, ...) with C={channels}"
    )
    got = f"a tensor of shape {shape}" if tensor else repr(input_shape)
    msg = f"input_shape for {type(module).__name__} must be {want} (or a tensor), got {got}"
    raise ValueError(msg)


def _slow_single(x: torch.Tensor) -> bool:
    """Whether ``x`` is one small float32 CPU sample: ATen then takes its native (im2col)
    convolution instead of oneDNN's (``use_mkldnn`` wants a batch > 1 or > 20480 input
    entries), measured ~15x slower for a batch-1 ``conv_transpose2d`` of 512 channels on
    4x4; two copies of the sample take the fast path at a fraction of the cost."""
    return (
        x.shape[0] == 1
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x[0].numel() <= 20480
    )


@dataclass(frozen=True)
class Layer:
    """A supported module's operator at one input size.

    ``kind`` is ``"conv"`` or ``"linear"``. For convolutions ``n``, ``pads`` (left, right per
    axis), ``mode``, ``stride``, ``dilation`` and ``groups`` describe the *conv view* (for a
    transposed layer: the convolution it is the adjoint of, on input size ``n``).
    """

    module: nn.Module
    kind: str
    in_shape: tuple[int, ...]  # (C, *spatial) of the module's input (without batch)
    out_shape: tuple[int, ...]
    n: tuple[int, ...] = ()
    pads: tuple[tuple[int, int], ...] = ()
    mode: str = "zeros"
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    transposed: bool = False
    k: tuple[int, ...] = ()

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def d(self) -> int:
        return len(self.n)

    @property
    def size(self) -> tuple[int, int]:
        """(rows, cols) of the operator."""
        return math.prod(self.out_shape), math.prod(self.in_shape)

    # -- the operator itself, in torch (the module's own arithmetic, bias excluded) --
    def apply(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer's linear map with weight ``w`` on a batch ``x`` of inputs."""
        m = self.module
        if self.kind == "linear":
            return F.linear(x, w)
        if self.transposed:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[self.d - 1]
            return fn(x, w, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        fn = (F.conv1d, F.conv2d, F.conv3d)[self.d - 1]
        if self.mode == "zeros" and all(lo == hi for lo, hi in self.pads):
            # the convolution pads by itself (no padded copy of the input)
            pad = tuple(lo for lo, _ in self.pads)
            return fn(x, w, None, self.stride, pad, self.dilation, self.groups)
        pads = [p for pair in reversed(self.pads) for p in pair]
        if any(pads):
            x = F.pad(x, pads, mode=_F_MODE[self.mode])
        return fn(x, w, None, self.stride, 0, self.dilation, self.groups)

    def adjoint(self, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adjoint map on a batch ``y`` of outputs.

        Zero padding and transposed layers: one product, differentiable in ``w`` -- the
        transposed convolution of the conv view with the zero padding cropped off (a
        transposed layer's adjoint is the convolution itself). Copying paddings (reflect,
        replicate, circular) fold several padded pixels onto one input: by autograd of
        :meth:`apply` (exact for every mode, not differentiable in ``w``).
        """
        m = self.module
        if self.kind == "linear":
            return F.linear(y, w.t())
        d = self.d
        if self.transposed:
            fn = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
            return fn(y, w, None, m.stride, m.padding, m.dilation, m.groups)
        if self.mode == "zeros" or not any(p for pair in self.pads for p in pair):
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]
            batch = y.expand(2, *y.shape[1:]) if _slow_single(y) else y
            x = fn(batch, w, None, self.stride, 0, 0, self.groups, self.dilation)[: len(y)]
            # x covers the padded input up to the last sample any output reads: crop the
            # left padding, crop or zero-extend to n on the right
            crop = []
            for a in reversed(range(d)):
                lo = self.pads[a][0]
                crop += [-lo, self.n[a] + lo - x.shape[2 + a]]
            return F.pad(x, crop) if any(crop) else x
        with torch.enable_grad():
            x = torch.zeros(
                (y.shape[0], *self.in_shape), dtype=y.dtype, device=y.device, requires_grad=True
            )
            (g,) = torch.autograd.grad(self.apply(w, x), x, grad_outputs=y)
        return g

    # -- cheap facts used by the certified bounds --
    def padding_norm(self) -> float:
        """Norm of the padding map (input -> padded input): ``sqrt(max copies of a pixel)``."""
        if self.kind == "linear" or self.mode == "zeros" or self.transposed:
            return 1.0
        worst = 1
        for n, (lo, hi) in zip(self.n, self.pads):
            idx = np.pad(
                np.arange(n),
                (lo, hi),
                mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[self.mode],
            )
            worst *= int(np.bincount(idx, minlength=n).max())
        return math.sqrt(worst)

    def selection_norm(self) -> float:
        """``max_p ||S_p P||`` over the taps ``p``: the tap's selection after the padding map.

        Per axis, tap ``p`` reads padded position ``o * s + p * dl`` for output ``o``; after
        the padding map that is an input index (or nothing, for zeros), and the operator's
        norm is ``sqrt`` of the most outputs reading one input. Padding is separable, so the
        norm is the product over axes (of the worst tap per axis: an upper bound of every
        tap's). At most ``||P||``; 1 for zero padding and for circular layers equal to
        periodic ones. Used by the reshape bound of :mod:`convsv.torch._drift`.
        """
        if self.kind == "linear":
            return 1.0
        worst = 1
        for n, (lo, hi), s, dl, k in zip(self.n, self.pads, self.stride, self.dilation, self.k):
            if self.mode == "zeros" or self.transposed:
                idx = np.concatenate([np.full(lo, -1), np.arange(n), np.full(hi, -1)])
            else:
                idx = np.pad(
                    np.arange(n),
                    (lo, hi),
                    mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[self.mode],
                )
            out = (n + lo + hi - dl * (k - 1) - 1) // s + 1
            axis_worst = 1
            for p in range(k):
                read = idx[np.arange(out) * s + p * dl]
                read = read[read >= 0]
                if read.size:
                    axis_worst = max(axis_worst, int(np.bincount(read).max()))
            worst *= axis_worst
        return math.sqrt(worst)

    def tap_sum(self, w: torch.Tensor) -> float:
        """``||P|| * sum_taps ||W[:, :, tap]||_F``, an upper bound on the operator norm.

        The layer is ``sum_p S_p (x) W_p`` composed with the padding map ``P``; every tap's
        shift/selection ``S_p`` has norm <= 1 (grouped layers are block-diagonal per tap).
        Used to bound how far the norm can move when the weight changes.
        """
        w = w.detach().double()
        if self.kind == "linear":
            return float(torch.linalg.matrix_norm(w))
        per_tap = torch.sqrt(torch.sum(w * w, dim=(0, 1)))
        return float(torch.sum(per_tap)) * self.padding_norm() * (1 + 1e-12)

    # -- exact spectra through the core --
    def core_kwargs(self) -> dict[str, Any] | None:
        """Keywords for the core on the periodic / centred-zeros layer this one *equals*.

        ``None`` when the layer is neither (those need the core's real-padding support).
        """
        centred = all(
            lo == hi and 2 * lo == dl * (k - 1)
            for (lo, hi), dl, k in zip(self.pads, self.dilation, self.k)
        )
        if not centred:
            return None
        if self.mode == "circular" and all(n % s == 0 for n, s in zip(self.n, self.stride)):
            # torch pads by (k-1)dl/2 on the left: a cyclic shift of the input, which is
            # orthogonal, so the spectrum is the periodic layer's
            return {"padding": "circular"}
        if self.mode == "zeros" or all(lo == 0 for lo, _ in self.pads):
            return {"padding": "zeros"}
        return None

    def _core(self, fn: Any, w: torch.Tensor, kw: dict[str, Any]) -> Any:
        w = _computable(w)
        base = {"dilation": self.dilation, "groups": self.groups}
        params = inspect.signature(fn).parameters
        if "padding_mode" in params:  # the core knows PyTorch's padding: pass the module's own
            m = self.module
            extra = {"padding": m.padding, "padding_mode": getattr(m, "padding_mode", "zeros")}
            if self.transposed:
                extra.update(transposed=True, output_padding=m.output_padding)
            n = self.in_shape[1:]
            return fn(w, n, self.stride, **base, **extra, **kw)
        mapped = self.core_kwargs()
        if mapped is None:
            msg = (
                f"{type(self.module).__name__} with padding {self.pads} "
                f"(mode {self.mode!r}) needs convsv's real-padding support, which this "
                f"convsv does not have"
            )
            raise ValueError(msg)
        return fn(w, self.n, self.stride, **base, **mapped, **kw)

    def singular_values(self, w: torch.Tensor, **kw: Any) -> torch.Tensor:
        if self.kind == "linear":
            return torch.linalg.svdvals(_computable(w)).contiguous()
        return self._core(convsv.singular_values, w, kw)

    def operator_norm(self, w: torch.Tensor, **kw: Any) -> Any:
        if self.kind == "linear":
            return torch.linalg.matrix_norm(_computable(w), ord=2)
        # every path carries autograd (the Krylov one: u^H A(W) v of the top pair)
        return self._core(convsv.operator_norm, w, kw)

    def full_output_norm(self, w: torch.Tensor, **kw: Any) -> tuple[Any, Any] | None:
        """The core's ``operator_norm(..., full_output=True)`` where it exists, else None."""
        if (
            self.kind == "linear"
            or "full_output" not in inspect.signature(convsv.operator_norm).parameters
        ):
            return None
        return self._core(convsv.operator_norm, w.detach(), {"full_output": True, **kw})

    def torus_upper(self, w: torch.Tensor, *, rtol: float = 1e-6) -> float:
        """Certified upper bound on the norm: the periodic layer on the padded torus.

        The padded input has ``L = n + left + right`` samples per axis; every output of the
        unpadded ("valid") convolution reads only inside it, so the layer equals rows of the
        periodic layer on any torus ``N >= L`` (``N`` a multiple of the stride) applied to the
        zero-extended padded input. Hence ``||A|| <= ||C_N|| * ||P||`` (the first bound of
        the real-padding issue's bracket; Thompson interlacing gives the rest). Computed in
        float64 and rounded up (``rtol``: as in :func:`certified_upper`).
        """
        if self.kind == "linear":
            return float(torch.linalg.matrix_norm(w.detach().double(), ord=2)) * (1 + 1e-12)
        return _periodic_upper(self, w, self.torus(), rtol) * self.padding_norm() * (1 + 4 * _EPS64)

    def torus(self) -> tuple[int, ...]:
        """The smallest torus (a multiple of the stride) holding the padded input."""
        return tuple(
            -(-(n + lo + hi) // s) * s for n, (lo, hi), s in zip(self.n, self.pads, self.stride)
        )

    def periodic_view(self) -> tuple[tuple[int, ...], float]:
        """Where :func:`certified_upper`'s bound lives: the input size and the factor to the layer.

        A periodic layer is its own periodic layer (factor 1) when the stride divides ``n``
        (its polyphase blocks); any other conv is bounded by the periodic layer on the
        padded torus times ``||P||``, rounded up (:meth:`torus_upper`).
        """
        mapped = self.core_kwargs()
        divisible = all(n % s == 0 for n, s in zip(self.n, self.stride))
        if mapped is not None and mapped["padding"] == "circular" and divisible:
            return self.n, 1.0
        return self.torus(), self.padding_norm() * (1 + 4 * _EPS64)

    def periodic_kernel(self, w: torch.Tensor, n: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """``(kg, spec, xp)`` of the periodic layer of ``w`` on ``n`` (float64, detached),
        as :mod:`convsv.norm` takes it."""
        from convsv._validation import grouped
        from convsv.geometry import LayerKeywords, prepare_layer

        k, geom, xp = prepare_layer(
            w.detach().double(), n, LayerKeywords(self.stride, self.dilation, self.groups), None
        )
        if not geom.exact_periodic:  # pragma: no cover - periodic_view's sizes are
            msg = f"n={n} is not a multiple of the stride {self.stride}"
            raise ValueError(msg)
        return grouped(k, geom.conv, xp), geom.conv, xp


def eval_weight(module: nn.Module) -> torch.Tensor:
    """The weight ``module``'s forward uses in eval mode, detached.

    For a parametrized module (``spectral_norm``, ``weight_norm``, ...) that is the
    computed weight, read in eval mode: in training mode torch's and convsv's
    ``spectral_norm`` take a power step whenever it is read. Training flags are restored.
    """
    if not parametrize.is_parametrized(module, "weight"):
        return module.weight.detach()
    flags = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            return module.weight.detach().clone()
    finally:
        for m, t in flags.items():
            m.train(t)


def certified_upper(layer: Layer, w: torch.Tensor, *, rtol: float = 1e-6) -> float:
    """The tightest certified upper bound on the norm that is available cheaply.

    Exact (float64, rounded up) for Linear and for layers equal to a periodic one; else
    :meth:`Layer.torus_upper` (the same periodic-embedding bound as
    :func:`convsv.singular_value_bounds`, computed for the top value only). ``rtol``: how
    far above that value the certificate may stop (a larger one lets the certified-norm
    solver prove more blocks below the top without solving them).
    """
    w64 = w.detach().double()
    if layer.kind == "linear":
        return float(torch.linalg.matrix_norm(w64, ord=2)) * (1 + 1e-12)
    if math.prod(layer.k) == 1:
        # a 1x1 (any stride) layer is a selection of pixels times the channel matrix: its
        # norm is that matrix's (the reshape bound, exact here up to ||P||)
        from ._drift import reshape_bound

        return reshape_bound(w64, layer.groups, layer.selection_norm(), rtol=rtol)
    n, scale = layer.periodic_view()
    return _periodic_upper(layer, w64, n, rtol) * scale


def certified_below(layer: Layer, w: torch.Tensor, bound: float) -> bool:
    """Whether the bound of :func:`certified_upper` is proven to be ``<= bound``.

    The same bound (the periodic layer, on the padded torus where the layer is not
    periodic, times ``||P||``) checked at a level the caller knows instead of computed:
    one Cholesky test per symbol block (:func:`convsv.norm.periodic_norm_below`), no
    ranking and no SVD. False means "not proven", never "above". Linear and 1x1 layers,
    whose exact bounds are cheap, are compared directly.
    """
    if layer.kind == "linear" or math.prod(layer.k) == 1:
        return certified_upper(layer, w, rtol=1e-6) <= bound
    from convsv.norm import periodic_norm_below

    n, scale = layer.periodic_view()
    # bound / scale, rounded down
    level = bound / scale * (1 - 4 * _EPS64)
    return periodic_norm_below(*layer.periodic_kernel(w, n), level)


def _periodic_upper(layer: Layer, w: torch.Tensor, n: tuple[int, ...], rtol: float) -> float:
    """The proven upper end of the certified norm of the periodic layer of ``w`` on ``n``.

    ``rtol`` lets the certified-norm solver prove most blocks below the top without
    solving them; the upper end stays within ``rtol`` of the norm.
    """
    from convsv.norm import periodic_norm

    _, info = periodic_norm(*layer.periodic_kernel(w, n), rtol=rtol)
    return float(info.upper)


def layer_of(module: nn.Module, input_shape: Any, weight_shape: Any = None) -> Layer:
    """Read the geometry of ``module`` at ``input_shape`` (see :func:`singular_values`).

    ``weight_shape`` spares reading ``module.weight`` (inside a parametrization of it).
    """
    custom = _custom_forward(module)
    if custom is not None:
        msg = f"module {type(module).__name__} is not supported: {custom}"
        raise TypeError(msg)
    if isinstance(module, nn.Linear):
        _as_shape(input_shape, 0, module.in_features, module)
        return Layer(module, "linear", (module.in_features,), (module.out_features,))
    if not isinstance(module, (*_CONV, *_CONVT)):
        msg = (
            f"module must be a torch.nn Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear, got "
            f"{type(module).__name__}"
        )
        raise TypeError(msg)
    if weight_shape is None:  # (eval_weight: no training-mode side effect of reading it)
        weight_shape = eval_weight(module).shape
    wshape = tuple(weight_shape)
    d = len(wshape) - 2
    transposed = isinstance(module, _CONVT)
    spatial = _as_shape(input_shape, d, module.in_channels, module)
    k = tuple(int(v) for v in wshape[2:])
    st, dl = tuple(module.stride), tuple(module.dilation)
    if transposed:
        p, op = tuple(module.padding), tuple(module.output_padding)
        n_view = tuple(
            (n - 1) * s - 2 * pp + dd * (kk - 1) + o + 1
            for n, s, pp, dd, kk, o in zip(spatial, st, p, dl, k, op)
        )
        if any(v < 1 for v in n_view):
            msg = f"input_shape {input_shape!r} gives an empty output for {module}"
            raise ValueError(msg)
        return Layer(
            module,
            "conv",
            (module.in_channels, *spatial),
            (module.out_channels, *n_view),
            n_view,
            tuple((pp, pp) for pp in p),
            "zeros",
            st,
            dl,
            module.groups,
            transposed=True,
            k=k,
        )
    if isinstance(module.padding, str):  # "same" (stride 1 only, torch checks) or "valid"
        if module.padding == "valid":
            pads = ((0, 0),) * d
        else:
            tot = [dd * (kk - 1) for dd, kk in zip(dl, k)]
            pads = tuple((t // 2, t - t // 2) for t in tot)
    else:
        pads = tuple((int(p), int(p)) for p in module.padding)
    out = tuple(
        (n + lo + hi - dd * (kk - 1) - 1) // s + 1
        for n, (lo, hi), dd, kk, s in zip(spatial, pads, dl, k, st)
    )
    if any(v < 1 for v in out):
        msg = f"input_shape {input_shape!r} is smaller than the kernel of {module}"
        raise ValueError(msg)
    return Layer(
        module,
        "conv",
        (module.in_channels, *spatial),
        (module.out_channels, *out),
        spatial,
        pads,
        module.padding_mode,
        st,
        dl,
        module.groups,
        k=k,
    )


def singular_values(module: nn.Module, input_shape: Any, **kw: Any) -> torch.Tensor:
    """All singular values of a PyTorch layer's linear operator (bias excluded).

    The geometry (stride, padding, padding_mode, dilation, groups, output_padding) is read
    from ``module``; the values are those of :func:`convsv.singular_values` (Sedghi et al.
    2019, Theorem 6; Senderovich et al. 2022, Theorem 2) for the layer's own padding, or of
    the weight matrix for ``nn.Linear``.

    Parameters
    ----------
    module : torch.nn.Conv1d, Conv2d, Conv3d, ConvTranspose1d/2d/3d or Linear
    input_shape : tuple of int or torch.Tensor
        ``(C, *spatial)`` or ``(N, C, *spatial)`` of the module's input, or an input
        tensor (only its shape is used). For ``Linear``: any shape ending in
        ``in_features`` (the layer is its matrix, applied to every feature vector).
    **kw
        Passed to :func:`convsv.singular_values` (``method``, ``solver``, ``memory_limit``,
        ``progress``).

    Returns
    -------
    torch.Tensor
        1-D, sorted descending, in the weight's dtype and on its device.
    """
    layer = layer_of(module, input_shape)
    return layer.singular_values(module.weight, **kw)


def operator_norm(module: nn.Module, input_shape: Any, **kw: Any) -> Any:
    """Largest singular value of a PyTorch layer (see :func:`singular_values`).

    Differentiable for every layer: periodic layers through their winning symbol block,
    other paddings through the core's matrix-free Krylov path (``u^T A(W) v`` of the
    converged top pair), Linear through its matrix. Returns a 0-d tensor in the
    weight's dtype and device (with ``full_output=True``, where
    the core supports it, ``(value, info)`` as :func:`convsv.operator_norm`).
    """
    layer = layer_of(module, input_shape)
    if kw.pop("full_output", False):
        out = layer.full_output_norm(module.weight, **kw)
        if out is None:
            msg = (
                "full_output=True is for convolutions (it reports the certified bracket); "
                "a Linear layer's norm is its matrix's, computed exactly without one"
            )
            raise ValueError(msg)
        return out
    return layer.operator_norm(module.weight, **kw)


def power_norm(
    layer: Layer,
    w: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    iterations: int = 100,
    rtol: float = 1e-7,
) -> tuple[float, torch.Tensor]:
    """Power iteration on the true operator: ``(||A u|| for the last unit u, u)``.

    ``||A u||`` with ``||u|| = 1`` is a lower bound on the norm (a Rayleigh quotient),
    whatever the convergence; computed in ``w``'s dtype.
    """
    w = w.detach()
    if u is None:
        g = torch.Generator(device="cpu").manual_seed(0)
        u = torch.randn((1, *layer.in_shape), generator=g, dtype=w.dtype).to(w.device)
    u = u / torch.linalg.vector_norm(u)
    value = 0.0
    with torch.no_grad():
        for _ in range(iterations):
            y = layer.apply(w, u)
            new = float(torch.linalg.vector_norm(y))
            x = layer.adjoint(w, y)
            nx = torch.linalg.vector_norm(x)
            if float(nx) == 0.0:
                return new, u
            u = x / nx
            done = abs(new - value) <= rtol * new
            value = new
            if done:
                break
        value = float(torch.linalg.vector_norm(layer.apply(w, u)))
    return value, u
