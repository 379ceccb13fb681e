"""Singular value clipping of a PyTorch model's layers, in place (and as an optimizer hook)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import convsv

from ._layers import Layer, certified_upper, layer_of, supported
from ._report import Report, report, trace_shapes

__all__ = ["clip_", "register_clip_hook"]


def _check_max(max_sv: Any, min_sv: Any) -> tuple[float, float | None]:
    vals = []
    for label, v in (("max_sv", max_sv), ("min_sv", min_sv)):
        if v is None:
            vals.append(None)
            continue
        if isinstance(v, torch.Tensor) and v.ndim == 0:
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            msg = f"{label} must be a non-negative number, got {v!r}"
            raise ValueError(msg)
        vals.append(float(v))
    if vals[0] is None or vals[0] <= 0 or (vals[1] is not None and vals[1] > vals[0]):
        msg = f"need 0 < max_sv and min_sv <= max_sv, got max_sv={max_sv!r}, min_sv={min_sv!r}"
        raise ValueError(msg)
    return vals[0], vals[1]


def clip_layer_(layer: Layer, max_sv: float, min_sv: float | None = None, **clip_kw: Any) -> None:
    """Clip one layer's weight in place so that the *real* layer's norm is <= ``max_sv``.

    Linear: the matrix's singular values are clipped. A layer that equals a periodic one:
    :func:`convsv.clip_` on it. Any other padding: the periodic layer on the padded torus
    is clipped to ``max_sv / ||P||`` (``P`` the padding map; 1 for zero padding), which
    bounds the real layer (it is a submatrix of that periodic layer composed with ``P``);
    ``min_sv`` cannot be promised there and is refused. The result is checked with a
    certified upper bound and scaled down if clipping stopped short of the bound.
    """
    w = layer.weight
    with torch.no_grad():
        if layer.kind == "linear":
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            s = s.clamp(min=min_sv, max=max_sv) if min_sv is not None else s.clamp(max=max_sv)
            w.copy_((u * s) @ vh)
        else:
            mapped = layer.core_kwargs()
            if mapped is not None and mapped["padding"] == "circular":
                torus, target = layer.n, max_sv
            else:
                if min_sv is not None:
                    name = type(layer.module).__name__
                    msg = (
                        f"min_sv={min_sv} cannot be guaranteed for {name} "
                        f"with padding {layer.pads} (mode {layer.mode!r}): only periodic "
                        f"layers have clipped lower singular values"
                    )
                    raise ValueError(msg)
                torus = tuple(
                    -(-(n + lo + hi) // s) * s
                    for n, (lo, hi), s in zip(layer.n, layer.pads, layer.stride)
                )
                target = max_sv / layer.padding_norm()
            convsv.clip_(
                w,
                torus,
                target,
                layer.stride,
                min_sv=min_sv,
                dilation=layer.dilation,
                groups=layer.groups,
                **clip_kw,
            )
        # the promise: certify, and scale down what is (by rounding or early stop) above it
        upper = certified_upper(layer, w)
        if upper > max_sv:
            eps = float(torch.finfo(w.dtype).eps)
            w.mul_(max_sv / upper * (1 - 4 * eps))


def _layers(model: nn.Module, example_input: Any) -> list[Layer]:
    return [
        layer_of(m, ishape)
        for _, m, ishape, _ in trace_shapes(model, example_input)
        if supported(m)
    ]


def clip_(
    model: nn.Module,
    example_input: Any,
    max_sv: float,
    *,
    min_sv: float | None = None,
    **clip_kw: Any,
) -> Report:
    """Clip every supported layer of ``model`` in place; return the report afterwards.

    Uses :func:`convsv.clip` (Sedghi et al. 2019, Section 3, by ADMM on the kernel's support)
    per layer. Periodic layers (circular padding of ``(k-1)*dilation/2``) are clipped
    exactly. For any other padding the periodic layer on the *padded torus* is clipped to
    ``max_sv / ||P||``, which bounds the real layer: the real layer is a submatrix of that
    periodic layer applied to the padded input (``||P|| = 1`` for zero padding), so its
    norm ends <= ``max_sv`` too, though possibly somewhat below it. ``min_sv`` only for
    periodic layers and Linear.

    Parameters
    ----------
    model : torch.nn.Module
    example_input : torch.Tensor or tuple
        Gives every layer's input size (one forward pass, eval mode, no gradients).
    max_sv, min_sv : float
    **clip_kw
        Passed to :func:`convsv.clip_` (``iterations``, ``tol``, ``memory_limit``, ...).

    Returns
    -------
    Report
        :func:`convsv.torch.report` of the clipped model.
    """
    hi, lo = _check_max(max_sv, min_sv)
    for layer in _layers(model, example_input):
        clip_layer_(layer, hi, lo, **clip_kw)
    return report(model, example_input)


def register_clip_hook(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    example_input: Any,
    max_sv: float,
    *,
    every: int = 100,
    min_sv: float | None = None,
    **clip_kw: Any,
) -> Any:
    """Clip ``model``'s layers after every ``every``-th ``optimizer.step()``.

    As Senderovich et al. (2022, Sec. 5.2) clip every 100 iterations; see :func:`clip_` for
    what is clipped and what is promised. Layer sizes are traced once, here.

    Returns
    -------
    handle
        ``handle.remove()`` unregisters the hook.
    """
    hi, lo = _check_max(max_sv, min_sv)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        msg = f"every must be a positive int, got {every!r}"
        raise ValueError(msg)
    layers = _layers(model, example_input)
    count = [0]

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        count[0] += 1
        if count[0] % every == 0:
            for layer in layers:
                clip_layer_(layer, hi, lo, **clip_kw)

    return optimizer.register_step_post_hook(hook)
