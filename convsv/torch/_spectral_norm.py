"""An exact, certified spectral-norm parametrization of PyTorch layers.

``torch.nn.utils.parametrizations.spectral_norm`` normalises the reshaped kernel matrix,
whose norm is not the layer's (pytorch issues 13505, 99149). This one normalises the
layer's *true* operator -- its own stride, padding and padding mode on the actual input
size -- and keeps a promise after every step: the parametrised layer's norm is at most
``max_sv * (1 + tol)``.

How the promise is kept. The weight is divided by ``sigma = max(est, U / (1 + tol/2))``:

* ``est`` is the Rayleigh quotient ``||A u||`` of a warm-started power iteration on the
  true operator (persistent buffer ``_u``, one or more steps per training forward, as
  torch's ``_SpectralNorm`` does on the matrix). It is a lower bound of ``||A||``, so
  dividing by it alone could overshoot while the iteration has not converged.
* ``U`` is a certified upper bound: computed exactly, or from the periodic layer on the
  padded torus, at a base weight ``W0`` (:func:`certified_upper`), then carried to the
  current weight by ``||A(W)|| <= ||A(W0)|| + ||P|| sum_taps ||W - W0||_F`` (every tap's
  shift has norm <= 1, ``P`` the padding map). No solve is needed per step.

Since ``U >= ||A||``, the layer's norm ``max_sv ||A|| / sigma <= max_sv (1 + tol/2)``. When
``U`` drifts so far that it, rather than the estimate, sets ``sigma`` by more than
``slack`` (relative to right after the last certification) -- or every ``exact_every``
steps -- ``U`` is recomputed at the current weight ("exact recomputation every so often").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._layers import Layer, certified_upper, layer_of, supported

__all__ = ["spectral_norm"]


class _ExactSpectralNorm(nn.Module):
    def __init__(self, module: nn.Module, weight: torch.Tensor, input_shape: Any, *,
                 max_sv: float, n_power_iterations: int, tol: float, slack: float,
                 exact_every: int) -> None:
        super().__init__()
        self._module_type = type(module)
        self._geometry_of = lambda shape: layer_of(module, shape, tuple(weight.shape))
        self.max_sv, self.n_power_iterations = max_sv, n_power_iterations
        self.tol, self.slack, self.exact_every = tol, slack, exact_every
        self.layer: Layer | None = None
        self._step_count = 0
        self.certifications = 0  # how often the certified bound was recomputed
        self._gap0 = 1.0
        self._upper0 = math.inf
        self.register_buffer("_u", torch.empty(0, dtype=weight.dtype, device=weight.device))
        self.register_buffer("_v", torch.empty(0, dtype=weight.dtype, device=weight.device))
        # the certification base: not saved (a loaded weight is simply re-certified)
        self.register_buffer("_w0", torch.empty(0, dtype=weight.dtype, device=weight.device),
                             persistent=False)
        self._tap_bound_no_shape = _shape_free_bound_factor(module)
        if input_shape is not None:
            self.set_input_shape(input_shape)

    def set_input_shape(self, shape: Any) -> None:
        """Follow the layer's input size (called by the forward pre-hook)."""
        layer = self._geometry_of(tuple(shape))
        if self.layer is not None and self.layer.in_shape == layer.in_shape:
            return
        self.layer = layer
        self._w0 = self._w0[:0]  # forces a certification
        if tuple(self._u.shape[1:]) != layer.in_shape:  # a loaded _u of this size is kept
            self._u = self._u[:0]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # _u/_v take the saved input size (they start empty until the size is known)
        for name in ("_u", "_v"):
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=self._u.device))
        self._w0 = self._w0[:0]
        super()._load_from_state_dict(state_dict, prefix, *args)

    # -- the parts of the promise --
    def _certify(self, w: torch.Tensor) -> None:
        assert self.layer is not None
        if self._u.numel() == 0:
            g = torch.Generator(device="cpu").manual_seed(0)
            u = torch.randn((1, *self.layer.in_shape), generator=g, dtype=w.dtype)
            self._u = (u / torch.linalg.vector_norm(u)).to(w.device)
        # converge the estimate too, so that the fresh gap U/est is the certificate's own
        est = self._converge(w)
        self._upper0 = certified_upper(self.layer, w)
        self._w0 = w.detach().clone()
        self._step_count = 0
        self.certifications += 1
        self._gap0 = max(1.0, self._upper0 / est) if est > 0 else 1.0

    def _converge(self, w: torch.Tensor, steps: int = 100, rtol: float = 1e-4) -> float:
        assert self.layer is not None
        est = 0.0
        with torch.no_grad():
            for _ in range(steps // 5):
                self._power(w, 5)
                new = float(torch.linalg.vector_norm(self.layer.apply(w.detach(), self._u)))
                if abs(new - est) <= rtol * new:
                    return new
                est = new
        return est

    def _power(self, w: torch.Tensor, steps: int) -> None:
        assert self.layer is not None
        w = w.detach()
        with torch.no_grad():
            u = self._u
            for _ in range(steps):
                v = self.layer.apply(w, u)
                v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
                u = self.layer.adjoint(w, v)
                u = u / torch.linalg.vector_norm(u).clamp_min(1e-30)
            self._u = u.contiguous()

    def _upper(self, w: torch.Tensor) -> float:
        assert self.layer is not None
        return self._upper0 + self.layer.tap_sum(w - self._w0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            # input size not known yet (e.g. torch's check at registration): a bound that
            # holds for every size, so the promise holds even here
            bound = float(torch.sum(torch.sqrt(torch.sum(w.detach().double() ** 2, dim=(0, 1)))))
            bound *= self._tap_bound_no_shape * (1 + 1e-12)
            return w if bound == 0 else w * (self.max_sv / bound)
        if self._w0.numel() == 0:
            self._certify(w)
        if self.training:
            self._power(w, self.n_power_iterations)
            self._step_count += 1
        y = self.layer.apply(w, self._u)
        sigma = torch.linalg.vector_norm(y)
        est = float(sigma.detach())
        if est == 0.0:
            return w
        upper = self._upper(w)
        if self.training and (self._step_count >= self.exact_every
                              or upper / est > self._gap0 * (1 + self.slack)):
            self._certify(w)
            upper = self._upper0
        with torch.no_grad():
            self._v = (y / sigma).detach()
        # the constant factor lifts sigma to the certified floor without cutting gradients
        factor = max(1.0, upper / ((1 + self.tol / 2) * est))
        return w * (self.max_sv / (sigma * factor))

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def _shape_free_bound_factor(module: nn.Module) -> float:
    """``||P||`` for any input size: sqrt(prod(1 + left + right)) for copying paddings."""
    if getattr(module, "padding_mode", "zeros") == "zeros":
        return 1.0
    pad = module.padding
    if isinstance(pad, str):
        pad = [0 if pad == "valid" else dl * (k - 1)
               for dl, k in zip(module.dilation, module.kernel_size)]
        return math.sqrt(math.prod(1 + p for p in pad))
    return math.sqrt(math.prod(1 + 2 * p for p in pad))


def spectral_norm(module: nn.Module, input_shape: Any = None, *, max_sv: float = 1.0,
                  n_power_iterations: int = 1, tol: float = 1e-3, slack: float = 5e-2,
                  exact_every: int = 1000, name: str = "weight") -> nn.Module:
    """Divide a layer's weight by its true operator norm (a ``torch.nn.utils.parametrize``).

    Unlike ``torch.nn.utils.parametrizations.spectral_norm`` (the reshaped kernel's norm),
    the norm is that of the layer's operator with its own stride, padding, padding mode,
    dilation and groups on the actual input size. Power steps on the true operator run in
    training mode (``F.conv*``, the adjoint by autograd); a certified upper bound (see the
    module docstring) guarantees that after any step the parametrised layer's norm is at
    most ``max_sv * (1 + tol)``, and is tight to ``slack`` when the certificate is exact
    (periodic layers, Linear) -- for zero padding it is the periodic layer on the padded
    torus (Thompson interlacing), so the result may sit somewhat below ``max_sv``.

    Parameters
    ----------
    module : Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear
    input_shape : tuple or torch.Tensor, optional
        ``(C, *spatial)`` or ``(N, C, *spatial)``. None: learnt from the first forward; in
        any case the parametrization follows later changes of the input size.
    max_sv : float
        Target operator norm.
    n_power_iterations : int
        Power steps per training forward.
    tol : float
        The promise's tolerance (relative).
    slack, exact_every : float, int
        Re-certify when the drifted bound exceeds its fresh value (relative to the
        estimate) by ``slack``, and at least every ``exact_every`` training forwards.
    name : str
        The parameter to parametrize.

    Returns
    -------
    module
        The same module, parametrized; undo with
        ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``.
    """
    if not supported(module):
        msg = (f"module must be a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear, got "
               f"{type(module).__name__}")
        raise TypeError(msg)
    if isinstance(max_sv, torch.Tensor):
        max_sv = float(max_sv)
    if isinstance(max_sv, bool) or not isinstance(max_sv, (int, float)) or not max_sv > 0:
        msg = f"max_sv must be a positive number, got {max_sv!r}"
        raise ValueError(msg)
    for label, val in (("n_power_iterations", n_power_iterations), ("exact_every", exact_every)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            msg = f"{label} must be a positive int, got {val!r}"
            raise ValueError(msg)
    weight = getattr(module, name)
    param = _ExactSpectralNorm(module, weight, input_shape, max_sv=float(max_sv),
                               n_power_iterations=n_power_iterations, tol=float(tol),
                               slack=float(slack), exact_every=exact_every)

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        plist = getattr(getattr(mod, "parametrizations", None), name, None)
        if plist is None or not any(p is param for p in plist):
            handle.remove()  # the parametrization was removed: so is this hook
            return
        if args and isinstance(args[0], torch.Tensor):
            d = weight.ndim - 2
            x = args[0]
            param.set_input_shape(tuple(x.shape[-(d + 1):]) if d else (x.shape[-1],))

    handle = module.register_forward_pre_hook(pre_hook)
    parametrize.register_parametrization(module, name, param)
    return module
