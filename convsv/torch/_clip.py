"""Singular value clipping of a PyTorch model's layers, in place (and as an optimizer hook)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

import convsv
from convsv._validation import as_float, as_int

from ._layers import Layer, certified_upper, eval_weight, supported
from ._report import Report, report, trace_shapes, traced_layer

__all__ = ["clip_", "register_clip_hook"]


def _check_max(max_sv: Any, min_sv: Any) -> tuple[float, float | None]:
    hi = as_float(max_sv, "max_sv", minimum=0.0, min_open=True)
    lo = as_float(min_sv, "min_sv", minimum=0.0, maximum=hi, allow_none=True)
    return hi, lo


# what ``**clip_kw`` may pass on to convsv.clip_ (the rest is set per layer here)
_CLIP_OPTIONS = frozenset(inspect.signature(convsv.clip).parameters) - {
    "kernel",
    "n",
    "max_sv",
    "stride",
    "min_sv",
    "dilation",
    "groups",
    "layout",
    "full_output",
    "support",
}


def _check_clip_kw(clip_kw: dict[str, Any]) -> None:
    unknown = sorted(set(clip_kw) - _CLIP_OPTIONS)
    if unknown:
        msg = (
            f"clip_kw got unexpected option(s) {', '.join(map(repr, unknown))}; accepted: "
            f"{', '.join(sorted(_CLIP_OPTIONS))}"
        )
        raise TypeError(msg)


def clip_layer_(layer: Layer, max_sv: float, min_sv: float | None = None, **clip_kw: Any) -> None:
    """Clip one layer's weight in place so that the *real* layer's norm is <= ``max_sv``.

    Linear: the matrix's singular values are clipped. A layer that equals a periodic one:
    :func:`convsv.clip_` on it. Any other padding: the periodic layer on the padded torus
    is clipped to ``max_sv / ||P||`` (``P`` the padding map; 1 for zero padding), which
    bounds the real layer (it is a submatrix of that periodic layer composed with ``P``);
    ``min_sv`` cannot be promised there and is refused. The result is checked with a
    certified upper bound and scaled down if clipping stopped short of the bound.
    """
    module = layer.module
    _refuse_recomputed(module)
    # a parametrized layer (weight_norm, ...): its computed weight is clipped and set
    # back through the parametrization's right_inverse; then checked like any other
    tied = parametrize.is_parametrized(module, "weight")
    if tied:
        plist = module.parametrizations.weight
        saved = {k: v.detach().clone() for k, v in plist.state_dict().items()}
        before = eval_weight(module)
        if min_sv is None and certified_upper(layer, before) <= max_sv:
            return  # nothing to clip: the parametrization is not rewritten
    w = before.clone() if tied else layer.weight
    # float16 / bfloat16: clipped in float32, rounded back, then certified as rounded
    work = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    with torch.no_grad():
        if layer.kind == "linear":
            u, s, vh = torch.linalg.svd(work, full_matrices=False)
            s = s.clamp(min=min_sv, max=max_sv) if min_sv is not None else s.clamp(max=max_sv)
            work.copy_((u * s) @ vh)
        else:
            mapped = layer.core_kwargs()
            if mapped is not None and mapped["padding"] == "circular":
                torus, target = layer.n, max_sv
            else:
                if min_sv is not None:
                    name = type(module).__name__
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
                work,
                torus,
                target,
                layer.stride,
                min_sv=min_sv,
                dilation=layer.dilation,
                groups=layer.groups,
                **clip_kw,
            )
        if work is not w:
            w.copy_(work)
        eps = float(torch.finfo(w.dtype).eps)
        for attempt in range(3):
            if tied:
                _set_weight(module, w)
            # the promise: certify the weight the layer now uses, and scale down what is
            # (by rounding or an early stop) above it -- then certify again: the scaled
            # weight is rounded entry by entry, which moves the norm by up to eps times
            # the per-tap Frobenius sum, not eps times the norm
            upper = certified_upper(layer, eval_weight(module))
            if upper <= max_sv:
                return
            w.mul_(max_sv / upper * (1 - 4 * 4**attempt * eps))
        if tied:
            plist.load_state_dict(saved)  # refused: the layer is left as it was
            msg = (
                f"{type(module).__name__}'s weight is computed by a parametrization that "
                f"does not keep the clipped weight (its norm is {upper:.6g} > "
                f"max_sv={max_sv}); remove the parametrization "
                f"(torch.nn.utils.parametrize.remove_parametrizations) to clip it"
            )
            raise ValueError(msg)
        if certified_upper(layer, eval_weight(module)) > max_sv:  # pragma: no cover
            msg = f"clip_ could not certify {type(module).__name__} at max_sv={max_sv}"
            raise FloatingPointError(msg)


def _refuse_recomputed(module: nn.Module) -> None:
    """Refuse layers whose weight is rebuilt on every forward from something clip_ cannot
    set: torch's hook-based ``nn.utils.spectral_norm`` / ``weight_norm`` (an in-place clip
    of ``weight`` would be thrown away by the next forward), and convsv's own
    ``spectral_norm``, which divides whatever it is given by its norm again in training."""
    name = type(module).__name__
    hooks = [type(h).__name__ for h in module._forward_pre_hooks.values()]
    for cls, where, undo in (
        ("SpectralNorm", "weight_orig", "torch.nn.utils.remove_spectral_norm"),
        ("WeightNorm", "weight_g and weight_v", "torch.nn.utils.remove_weight_norm"),
    ):
        if cls in hooks:
            msg = (
                f"{name}'s weight is rebuilt from {where} by torch.nn.utils's {cls} hook on "
                f"every forward: clip_ cannot set it (use {undo}, or the parametrization in "
                f"torch.nn.utils.parametrizations)"
            )
            raise ValueError(msg)
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if any(type(p).__name__ == "_ExactSpectralNorm" for p in plist or ()):
        msg = (
            f"{name} is normalised by convsv.torch.spectral_norm, which divides any weight by "
            f"its norm again: set that parametrization's max_sv instead of clipping"
        )
        raise ValueError(msg)


def _set_weight(module: nn.Module, w: torch.Tensor) -> None:
    """Set a parametrized ``module.weight`` to ``w`` (through ``right_inverse``)."""
    try:
        module.weight = w
    except (NotImplementedError, RuntimeError) as exc:  # no right_inverse
        msg = (
            f"{type(module).__name__}'s weight is computed by a parametrization without "
            f"right_inverse: clip_ cannot set it ({exc})"
        )
        raise ValueError(msg) from exc


def _layers(model: nn.Module, example_input: Any) -> list[Layer]:
    return [
        traced_layer(m, ishape, oshape)
        for _, m, ishape, oshape in trace_shapes(model, example_input)
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
    periodic layers and Linear: exactly for Linear, to within the clip's ``tol`` for
    periodic layers (as :func:`convsv.clip`; with a lower bound the problem is not
    convex).

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
    _check_clip_kw(clip_kw)
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
    every = as_int(every, "every", minimum=1)
    _check_clip_kw(clip_kw)
    layers = _layers(model, example_input)
    count = [0]

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        count[0] += 1
        if count[0] % every == 0:
            for layer in layers:
                clip_layer_(layer, hi, lo, **clip_kw)

    return optimizer.register_step_post_hook(hook)
