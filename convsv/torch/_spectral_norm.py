"""An exact, certified spectral-norm parametrization of PyTorch layers.

``torch.nn.utils.parametrizations.spectral_norm`` normalises the reshaped kernel matrix,
whose norm is not the layer's (pytorch issues 13505, 99149). This one normalises the
layer's *true* operator -- its own stride, padding and padding mode on the actual input
size -- and keeps a promise after every step: the parametrised layer's norm is at most
``max_sv * (1 + tol)``.

How the promise is kept, at the cost of a few batch-1 convolutions per step. The weight
``W`` is divided by ``d = max(est, U / (1 + tol/2))``:

* ``est = ||A u||`` is the Rayleigh quotient of a warm-started power iteration on the
  true operator (persistent buffer ``_u``, ``n_power_iterations`` steps per training
  forward, as torch's ``_SpectralNorm`` does on the matrix): a lower bound of ``||A||``
  whatever the convergence, so dividing by it alone could overshoot. For zero padding,
  transposed layers and Linear the training forward's last step is fused with it:
  ``v = A u / ||A u||``, ``est = ||A^T v||`` (also a lower bound) through one
  differentiable transposed product.
* ``U >= ||A(W)||`` is a certified upper bound carried from the weight ``W0`` where the
  layer was last certified (:func:`~convsv.torch._layers.certified_upper`: exact for
  periodic layers and Linear, the periodic layer on the padded torus otherwise):
  ``U = U(W0) + b(Ws - W0) + t(W - Ws)`` (the layer is linear in its weight). ``b`` is the
  reshape bound of :mod:`convsv.torch._drift` (Singla & Feizi 2021, within ~1.5x of the
  norm of the change), evaluated at a refresh weight ``Ws``; ``t`` the O(size) per-tap
  Frobenius sum of the few steps since, computed every step.

So ``||A(W)|| / d <= U / d <= 1 + tol/2`` whatever the power iteration does; the other
half of ``tol`` covers rounding (of ``W / d`` included). No solve is needed per step:
when ``U`` is more than ``slack / 2`` above ``est`` (relative to the gap right after the
last certification, and its carried part ``b + t`` exceeds ``slack / 2 * U(W0)``) ``Ws`` is
refreshed, and if the refreshed bound is still ``slack`` loose -- or every ``exact_every``
training steps -- the layer is re-certified at the current weight. A re-certification
first tries to *prove* that the norm is still at most the last full certificate's value
times ``1 + slack/10`` (:func:`~convsv.torch._layers.certified_below`: one Cholesky test
per symbol block, no ranking and no SVD, 1.6-2x cheaper): in training the weights move by
a few % per step while a layer's norm barely does (ResNet-18, SGD 0.01/0.9: the certified
norms of re-certified layers moved <= 0.35% between certifications). The level is
accepted only while the converged estimate says the layer is as tight as at that
certificate (within ``slack/2``); otherwise, and every ``exact_every`` steps, the full
certificate is computed. The level is proven at ``W + 1.5 (W - W_prev)``, where momentum
SGD is headed, and ``W`` is carried from there by the reshape bound: the drift shrinks
before it grows (31 proofs instead of 43 in the ResNet-18 benchmark's 10 steps); a point
ahead that cannot be proven falls back to ``W``.
Between certifications the layer sits in ``[est / d, U / d] * max_sv``: at ``max_sv``
while ``U`` is tight, up to ``slack`` below it when ``U`` binds (the price of soundness;
:func:`normalised_norm_bounds` reports the interval).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from convsv._validation import as_float, as_int

from ._drift import matrix_norm_upper, reshape_bound, tap_frobenius_bound
from ._layers import (
    Layer,
    _custom_forward,
    certified_below,
    certified_upper,
    layer_of,
    supported,
)

__all__ = ["normalised_norm_bounds", "spectral_norm"]


_EPS64 = float(torch.finfo(torch.float64).eps)


def _gamma(n: int, eps: float) -> float:
    return n * eps / (1 - n * eps)


class _ExactSpectralNorm(nn.Module):
    #: a proven level is proven this many training steps ahead (along the last step's
    #: change), not at the current weight: see :meth:`_certify`
    _AHEAD = 1.5

    def __init__(
        self,
        module: nn.Module,
        weight: torch.Tensor,
        input_shape: Any,
        *,
        max_sv: float,
        n_power_iterations: int,
        tol: float,
        slack: float,
        exact_every: int,
    ) -> None:
        super().__init__()
        self._module_type = type(module)
        self._geometry_of = lambda shape: layer_of(module, shape, tuple(weight.shape))
        self.max_sv, self.n_power_iterations = max_sv, n_power_iterations
        self.tol, self.slack, self.exact_every = tol, slack, exact_every
        self.layer: Layer | None = None
        self.certifications = 0  # how often the certified bound was recomputed
        self.verifications = 0  # how often the last one was proven to hold still
        self._base = math.inf  # the last certificate's ||A(W)|| upper bound
        self._gap_base = 1.0  # and its ratio to the converged estimate then
        self.refreshes = 0  # how often the drift bound b(Ws - W0) was recomputed
        self._since_cert = 0
        self._gap0 = 1.0
        self._upper0 = math.inf  # certified ||A(W0)||
        self._drift = 0.0  # certified ||A(Ws - W0)||
        self._tap_ws = 0.0  # ||P|| sum_taps ||Ws_p||_F, for the rounding of W / d
        self._dtype = weight.dtype  # the dtype the stored weights and proofs are in
        self._eps = float(torch.finfo(weight.dtype).eps)
        # terms summed per output entry of the layer (rounding of the Rayleigh quotient)
        ws = tuple(weight.shape)
        groups = getattr(module, "groups", 1)
        self._terms = max(math.prod(ws[1:]), ws[0] // groups * math.prod(ws[2:])) + 2
        self.register_buffer("_u", torch.empty(0, dtype=weight.dtype, device=weight.device))
        self.register_buffer("_v", torch.empty(0, dtype=weight.dtype, device=weight.device))
        # the certification base and the refresh weight: not saved (a loaded weight is
        # simply re-certified)
        # _prev: the weight of the previous training forward (the direction ahead)
        for name in ("_w0", "_ws", "_prev"):
            self.register_buffer(
                name, torch.empty(0, dtype=weight.dtype, device=weight.device), persistent=False
            )
        self._tap_bound_no_shape = _shape_free_bound_factor(module)
        # the adjoint is one differentiable product (zero padding, transposed, Linear)
        self._fused = getattr(module, "padding_mode", "zeros") == "zeros"
        if input_shape is not None:
            self.set_input_shape(input_shape)

    def set_input_shape(self, shape: Any) -> None:
        """Follow the layer's input size (called by the forward pre-hook)."""
        # (a tensor stands for its shape, as everywhere in convsv.torch)
        layer = self._geometry_of(shape if isinstance(shape, torch.Tensor) else tuple(shape))
        if self.layer is not None and self.layer.in_shape == layer.in_shape:
            return
        self.layer = layer
        self._selection = layer.selection_norm()
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
        if self.layer is not None and tuple(self._u.shape[1:]) != self.layer.in_shape:
            # saved for another input size than the one this module now follows: a fresh
            # start vector (the next forward certifies in full anyway)
            self._u, self._v = self._u[:0], self._v[:0]

    # -- the parts of the promise --
    def _certify(self, w: torch.Tensor, *, full: bool = False) -> None:
        assert self.layer is not None
        if self._u.numel() == 0:
            g = torch.Generator(device="cpu").manual_seed(0)
            u = torch.randn((1, *self.layer.in_shape), generator=g, dtype=w.dtype)
            self._u = (u / torch.linalg.vector_norm(u)).to(w.device)
        # converge the estimate too, so that the fresh gap U/est is the certificate's own;
        # a warm vector (tracked by a power step per update) needs only a few more steps
        fresh = self.certifications == 0 or self._w0.numel() == 0
        est = self._converge(w, steps=60 if fresh else 3)
        # In training the weights move by a few % per step while the layer's norm barely
        # does (ResNet-18: the certified norms of re-certified layers moved <= 0.35% between
        # certifications, their carried bounds 5%): first try to prove that the norm is
        # still below the last full certificate's value plus the certificate's own
        # tolerance (one Cholesky test per block, ~1.6-2x cheaper than a certificate),
        # accepted only while the estimate says the layer is still as tight as then (a
        # norm that fell would leave the level loose for good)
        level = self._base * (1 + self.slack / 10)
        anchor = None  # where the level is proven
        if not (fresh or full) and est > 0 and level <= est * self._gap_base * (1 + self.slack / 2):
            # Proven a few steps ahead along the last step's change, where momentum SGD
            # is headed: the carried drift (measured from the proven point) then shrinks
            # before it grows, and the next proof waits about twice as long (the bound is
            # the triangle inequality from *any* point whose norm is proven)
            for point in (self._ahead(w), w.detach()):
                if point is not None and certified_below(self.layer, point, level):
                    anchor = point
                    break
        if anchor is not None:
            self._upper0 = level
            self.verifications += 1
        else:
            # the certificate need only be tight relative to the slack it is compared with
            self._upper0 = certified_upper(self.layer, w, rtol=self.slack / 10)
            self._base = self._upper0
            self._gap_base = max(1.0, self._upper0 / est) if est > 0 else 1.0
            self.certifications += 1
            anchor = w.detach()
        moved = anchor.data_ptr() != w.data_ptr()  # proven ahead, not at W
        self._w0 = anchor.clone()
        self._set_refresh(w, self._drift_from_w0(w) if moved else 0.0)
        self._since_cert = 0
        # looseness is measured against the last full certificate's tightness: a level
        # proven above it does not move the goalposts
        self._gap0 = self._gap_base

    def _ahead(self, w: torch.Tensor) -> torch.Tensor | None:
        """``W + h (W - W_prev)`` in the weight's dtype (the point proven is the point
        stored), ``h = _AHEAD``; None without a previous training forward."""
        if not self._AHEAD or self._prev.shape != w.shape:
            return None
        w64 = w.detach().double()
        return (w64 + self._AHEAD * (w64 - self._prev.double())).to(w.dtype)

    def _drift_from_w0(self, w: torch.Tensor) -> float:
        """A proven bound on ``||A(W - W0)||``: the reshape bound of the change since the
        proven weight, computed from the difference rounded in the weight's dtype.

        ``D_hat = fl(W - W0)`` differs from ``D`` by ``E``, ``|E| <= u |D_hat| / (1 - u)``
        entrywise (``u = eps / 2``), so ``||A(E)|| <= eps * t(D_hat)`` (the per-tap
        Frobenius bound; ``|E|``'s Frobenius norms are those of ``u |D_hat|``). The
        difference in the weight's dtype halves the float64 traffic of two conversions.
        """
        assert self.layer is not None
        diff = w.detach() - self._w0
        d64 = diff.double()
        # a Cholesky certificate within ~1 % of the reshape norms: the drift is a small
        # part of U, and the eigensolver would cost ~10x more
        if self.layer.kind == "linear":
            drift = matrix_norm_upper(d64, rtol=0.02)
        else:
            drift = reshape_bound(d64, self.layer.groups, self._selection, rtol=0.02, reshapes=1)
        return (drift + self._eps * self._tap(diff)) * (1 + 2 * _EPS64)

    def _set_refresh(self, w: torch.Tensor, drift: float) -> None:
        assert self.layer is not None
        # (from w.detach(): a copy_ from a grad-requiring w would put _ws on the graph, and
        # a buffer that is not a leaf cannot be deepcopied -- an EMA copy of the model)
        w = w.detach()
        self._ws = w.clone() if self._ws.shape != w.shape else self._ws.copy_(w)
        self._drift = drift
        self._tap_ws = self._tap(w)

    def _tap(self, w: torch.Tensor) -> float:
        assert self.layer is not None
        return tap_frobenius_bound(w, self._selection)

    def _refresh(self, w: torch.Tensor) -> None:
        """``Ws = W``, ``b(Ws - W0)`` by the reshape bound (float64: the difference is exact
        for float32 weights, within a relative ``eps`` per entry for float64 ones)."""
        assert self.layer is not None
        # both are proven bounds of ||A(W - W0)||: keep the smaller
        carried = self._drift + self._tap(w - self._ws) * (1 + self._eps)
        self._set_refresh(w, min(self._drift_from_w0(w), carried))
        self.refreshes += 1

    def _converge(self, w: torch.Tensor, steps: int, rtol: float = 1e-4) -> float:
        assert self.layer is not None
        est = 0.0
        with torch.no_grad():
            for done in range(0, steps, 5):
                self._power(w, min(5, steps - done))
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

    def _bounds(self, w: torch.Tensor) -> tuple[float, float]:
        """``(U, t)``: the certified bound on ``||A(W)||`` and on ``||P|| sum_p ||W_p||_F``.

        ``W - Ws`` is rounded (relative ``eps/2`` per entry): the factor covers it.
        """
        inc = self._tap(w - self._ws) * (1 + self._eps)
        return self._upper0 + self._drift + inc, self._tap_ws + inc

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled():
            # a validation pass under torch.inference_mode: certifying needs autograd (the
            # adjoints of copying paddings) and buffers that outlive the context, neither
            # of which inference mode allows; no graph is built either way
            with torch.inference_mode(False), torch.no_grad():
                return self._forward(w)
        return self._forward(w)

    def _forward(self, w: torch.Tensor) -> torch.Tensor:
        if w.dtype != self._dtype:
            # the module was converted (.float(), .double()): the stored weights were
            # rounded with it, so the last proof is not about them any more
            self._dtype, self._eps = w.dtype, float(torch.finfo(w.dtype).eps)
            self._w0 = self._w0[:0]
        if self.layer is None:
            # input size not known yet (e.g. torch's check at registration): a bound that
            # holds for every size, so the promise holds even here
            bound = float(torch.sum(torch.sqrt(torch.sum(w.detach().double() ** 2, dim=(0, 1)))))
            bound *= self._tap_bound_no_shape * (1 + 1e-12)
            return w if bound == 0 else w * (self.max_sv / bound)
        if self._w0.numel() == 0:
            self._certify(w)
        if self.training and self._fused:
            # the last power step carries the gradient: v = A u / ||A u|| (no graph), then
            # sigma = ||A^T v|| (a Rayleigh quotient too) through one differentiable
            # transposed product, and u follows A^T v -- two products per step, not three
            self._power(w, self.n_power_iterations - 1)
            with torch.no_grad():
                v = self.layer.apply(w.detach(), self._u)
                v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
            x = self.layer.adjoint(w, v)
            sigma = torch.linalg.vector_norm(x)
            with torch.no_grad():
                self._u = (x / sigma.clamp_min(1e-30)).detach().contiguous()
                self._v = v
            self._since_cert += 1
        else:
            if self.training:
                self._power(w, self.n_power_iterations)
                self._since_cert += 1
            y = self.layer.apply(w, self._u)
            sigma = torch.linalg.vector_norm(y)
            if self.training:  # (an eval forward -- a report, a validation -- changes no state)
                with torch.no_grad():
                    self._v = (y / sigma.clamp_min(1e-30)).detach()
        est = float(sigma.detach())
        upper, tap = self._bounds(w)
        if self.training:
            # refresh the drift bound (no solve) at half the slack, re-certify (a solve)
            # only when even the refreshed bound is a full slack loose: the layer never
            # sits more than ``slack`` below, and solves come about half as often as
            # with one threshold for both
            if self._loose(upper, est, self.slack / 2):
                self._refresh(w)
                upper, tap = self._bounds(w)
                if self._loose(upper, est, self.slack):
                    self._certify(w)
                    upper, tap = self._bounds(w)
            elif self._since_cert >= self.exact_every:
                self._certify(w, full=True)
                upper, tap = self._bounds(w)
        if self.training:  # the direction of the next proof's point ahead
            if self._prev.shape == w.shape:
                self._prev.copy_(w.detach())
            else:
                self._prev = w.detach().clone()
        factor = self._factor(est, upper, tap)
        if est == 0.0:  # u in the kernel of A: divide by the certified bound alone
            return w * (self.max_sv * factor)
        # the constant factor lifts est to the certified floor without cutting gradients
        return w * (self.max_sv / (sigma * factor))

    def _loose(self, upper: float, est: float, slack: float) -> bool:
        """Whether a new bound could tighten ``U`` by ``slack``: its carried part must be
        that large, and ``U`` exceed the estimate by that much more than when certified
        (``est`` alone can lag the norm: the power iteration runs one step per update)."""
        carried = upper - self._upper0
        return carried > slack * self._upper0 and upper > est * self._gap0 * (1 + slack)

    def _factor(self, est: float, upper: float, tap: float) -> float:
        """``d / est`` (``1 / d`` when ``est == 0``), ``d = max(est, U' / (1 + tol/2))``.

        ``U' = U + 2 eps tap``: rounding ``W * scale`` perturbs each entry by <= ``eps |W|
        scale``, in operator norm <= ``eps * tap * scale``. The other ``tol / 2`` covers
        the few roundings of the scalar ``scale`` itself.
        """
        floor = (upper + 2 * self._eps * tap) / (1 + self.tol / 2)
        if est == 0.0:
            return 1.0 / floor if floor > 0 else 1.0
        return max(1.0, floor / est)

    def norm_bounds(self, w: torch.Tensor) -> tuple[float, float]:
        """Proven ``[lower, upper]`` of the norm of the layer with weight ``forward(w)``
        as an eval-mode forward returns it now (no power step, no re-certification)."""
        if self.layer is None or self._w0.numel() == 0:
            return math.nan, math.nan
        w = w.detach()
        est = float(torch.linalg.vector_norm(self.layer.apply(w, self._u)))
        upper, tap = self._bounds(w)
        factor = self._factor(est, upper, tap)
        high = upper + 2 * self._eps * tap
        if est == 0.0:
            return 0.0, self.max_sv * factor * high * (1 + 1e-6)
        d = est * factor
        # a float64 Rayleigh quotient, rounded down: the computed A u is off by
        # <= gamma_m |W| |u| entrywise (m terms per output), in norm <= gamma_m * tap
        u64 = self._u.double()
        nu = float(torch.linalg.vector_norm(u64)) * (1 + 1e-12)
        y64 = float(torch.linalg.vector_norm(self.layer.apply(w.double(), u64)))
        eps64 = float(torch.finfo(torch.float64).eps)
        lower = (y64 * (1 - 1e-12) - _gamma(self._terms, eps64) * tap * 1.01) / nu
        return (self.max_sv * max(0.0, lower) / d * (1 - 1e-6), self.max_sv * high / d * (1 + 1e-6))

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def normalised_norm_bounds(module: nn.Module, name: str = "weight") -> tuple[float, float]:
    """``[lower, upper]`` of the norm of a ``spectral_norm``-parametrised layer.

    Proven bounds on the true operator norm of ``module``'s layer with the normalised
    weight of its last forward (``upper <= max_sv * (1 + tol)`` always; ``lower`` from the
    power iteration's Rayleigh quotient, rounded down). The gap below ``max_sv`` is what
    soundness costs between certifications. ``(nan, nan)`` before the first forward
    with a known input size.
    """
    plist = getattr(getattr(module, "parametrizations", None), name, None)
    params = [p for p in plist or () if isinstance(p, _ExactSpectralNorm)]
    if not params:
        msg = (
            f"module must be parametrised by convsv.torch.spectral_norm on {name!r}, got "
            f"{type(module).__name__}"
        )
        raise ValueError(msg)
    w = plist.original
    with torch.no_grad():
        for p in plist:  # parametrizations before ours transform the weight first
            if p is params[0]:
                break
            w = p(w)
    return params[0].norm_bounds(w)


def _shape_free_bound_factor(module: nn.Module) -> float:
    """``||P||`` for any input size: sqrt(prod(1 + left + right)) for copying paddings."""
    if getattr(module, "padding_mode", "zeros") == "zeros":
        return 1.0
    pad = module.padding
    if isinstance(pad, str):
        pad = [
            0 if pad == "valid" else dl * (k - 1)
            for dl, k in zip(module.dilation, module.kernel_size)
        ]
        return math.sqrt(math.prod(1 + p for p in pad))
    return math.sqrt(math.prod(1 + 2 * p for p in pad))


def spectral_norm(
    module: nn.Module,
    input_shape: Any = None,
    *,
    max_sv: float = 1.0,
    n_power_iterations: int = 1,
    tol: float = 1e-3,
    slack: float = 5e-2,
    exact_every: int = 1000,
    name: str = "weight",
) -> nn.Module:
    """Divide a layer's weight by its true operator norm (a ``torch.nn.utils.parametrize``).

    Unlike ``torch.nn.utils.parametrizations.spectral_norm`` (the reshaped kernel's norm),
    the norm is that of the layer's operator with its own stride, padding, padding mode,
    dilation and groups on the actual input size. Power steps on the true operator run in
    training mode (``F.conv*``, the adjoint by autograd); a certified upper bound (see the
    module docstring) guarantees that after any step the parametrised layer's norm is at
    most ``max_sv * (1 + tol)``. Between certifications the layer sits within ``slack``
    below ``max_sv`` relative to the certificate's own gap. That gap is where soundness
    costs tightness: for zero padding the certificate is the periodic layer on the padded
    torus, a few % above the true norm (~10% for 3x3 kernels on 4x4 inputs); for
    reflect / replicate padding it also carries the padding map's norm ``||P||``, so such
    a layer may sit at ~0.5-0.65 of ``max_sv``;
    :func:`normalised_norm_bounds` gives proven ``[lower, upper]`` of its current norm,
    ``certifications`` / ``verifications`` / ``refreshes`` on the parametrization count
    the full certificates, the re-certifications that proved the last certificate's
    level still holds, and the drift-bound updates.

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
    slack : float
        When the carried bound exceeds the estimate by ``slack / 2`` more than right after
        the last certification, the drift bound is recomputed (the reshape bound, no
        solve) and, if it is still ``slack`` loose, the layer is re-certified (a proof
        that the last certificate times ``1 + slack / 10`` still holds, else one
        certified norm of the periodic layer, to relative accuracy ``slack / 10``).
        Larger: fewer solves, looser normalisation.
    exact_every : int
        Compute the full certificate at least every ``exact_every`` training forwards.
    name : str
        The parameter to parametrize.

    Returns
    -------
    module
        The same module, parametrized; undo with
        ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``.
    """
    if not supported(module):
        why = _custom_forward(module)
        msg = (
            f"module {type(module).__name__} is not supported: {why}"
            if why
            else f"module must be a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear, got "
            f"{type(module).__name__}"
        )
        raise TypeError(msg)
    max_sv = as_float(max_sv, "max_sv", minimum=0.0, min_open=True)
    tol = as_float(tol, "tol", minimum=0.0, maximum=1.0, min_open=True, max_open=True)
    slack = as_float(slack, "slack", minimum=0.0, maximum=1.0, min_open=True, max_open=True)
    n_power_iterations = as_int(n_power_iterations, "n_power_iterations", minimum=1)
    exact_every = as_int(exact_every, "exact_every", minimum=1)
    weight = getattr(module, name)
    param = _ExactSpectralNorm(
        module,
        weight,
        input_shape,
        max_sv=max_sv,
        n_power_iterations=n_power_iterations,
        tol=tol,
        slack=slack,
        exact_every=exact_every,
    )

    d = weight.ndim - 2

    def pre_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        # the parametrization is looked up on the module called, not captured: a deepcopy
        # (an EMA model, say) shares this function but has its own parametrization, which
        # must follow its own input size
        plist = getattr(getattr(mod, "parametrizations", None), name, None)
        params = [p for p in plist or () if isinstance(p, _ExactSpectralNorm)]
        if not params:  # the parametrization was removed: so is this hook
            for key, hook in list(mod._forward_pre_hooks.items()):
                if hook is pre_hook:
                    del mod._forward_pre_hooks[key]
                    mod._forward_pre_hooks_with_kwargs.pop(key, None)
            return
        x = args[0] if args else kwargs.get("input")  # m(x) or m(input=x)
        if isinstance(x, torch.Tensor):
            for p in params:
                p.set_input_shape(tuple(x.shape[-(d + 1) :]) if d else (x.shape[-1],))

    module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    parametrize.register_parametrization(module, name, param)
    return module
