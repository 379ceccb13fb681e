"""convsv.torch against the modules themselves (bias removed) applied to basis inputs."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import convsv
import convsv.torch as cvt

REAL_PADDING = "padding_mode" in inspect.signature(convsv.singular_values).parameters
EPS64 = float(np.finfo(np.float64).eps)


def plain_copy(module: nn.Module, weight: torch.Tensor | None = None) -> nn.Module:
    """A fresh, unparametrized, bias-free module of the same type and settings.

    (deepcopy of a parametrized module shares its class, and removing the copy's
    parametrization would break the original.) ``weight``: the copy's weight, instead of
    ``module.weight`` -- whose reading, for a module parametrized by
    ``convsv.torch.spectral_norm`` in training mode, is itself a training forward.
    """
    cls = (
        type(module).__bases__[0]
        if torch.nn.utils.parametrize.is_parametrized(module)
        else type(module)
    )
    w = (module.weight if weight is None else weight).detach().clone()
    if cls is nn.Linear:
        plain = nn.Linear(module.in_features, module.out_features, bias=False)
    else:
        kw = {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
            "bias": False,
            "padding_mode": module.padding_mode,
        }
        if "Transpose" in cls.__name__:
            kw["output_padding"] = module.output_padding
        plain = cls(module.in_channels, module.out_channels, module.kernel_size, **kw)
    plain = plain.to(w.dtype)
    with torch.no_grad():
        plain.weight.copy_(w)
    return plain


def module_dense(module: nn.Module, in_shape: tuple[int, ...]) -> np.ndarray:
    """The layer's matrix: the module (bias removed) applied to every basis input."""
    m = plain_copy(module)
    cols = math.prod(in_shape)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own note on even kernels with padding="same" (not the subject of a test)
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        eye = torch.eye(cols, dtype=m.weight.dtype).reshape(cols, *in_shape)
        return m(eye).reshape(cols, -1).T.double().numpy()


def dense_sv(module: nn.Module, in_shape: tuple[int, ...]) -> np.ndarray:
    return np.linalg.svd(module_dense(module, in_shape), compute_uv=False)


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / math.sqrt(p[0].numel()))
    return module


# (module factory, input shape (C, *n), exact with the periodic/centred-zeros core alone)
LAYERS = {
    "conv1d-zeros-stride2-odd": (lambda: nn.Conv1d(3, 5, 3, stride=2, padding=1), (3, 9), True),
    "conv1d-reflect": (
        lambda: nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect"),
        (2, 7),
        False,
    ),
    "conv2d-zeros": (lambda: nn.Conv2d(4, 6, 3, padding=1), (4, 6, 5), True),
    "conv2d-circular": (
        lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"),
        (4, 6, 6),
        True,
    ),
    "conv2d-circular-stride2": (
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
        (3, 8, 6),
        True,
    ),
    "conv2d-replicate": (
        lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="replicate"),
        (3, 5, 5),
        False,
    ),
    "conv2d-reflect-stride2": (
        lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="reflect"),
        (2, 7, 5),
        False,
    ),
    "conv2d-dilated": (lambda: nn.Conv2d(2, 4, 3, padding=2, dilation=2), (2, 7, 6), True),
    "conv2d-grouped": (lambda: nn.Conv2d(4, 8, 3, padding=1, groups=2), (4, 5, 5), True),
    "conv2d-depthwise-circular": (
        lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="circular"),
        (4, 6, 6),
        True,
    ),
    "conv2d-valid": (lambda: nn.Conv2d(3, 4, 3), (3, 6, 6), False),
    "conv2d-even-same": (lambda: nn.Conv2d(2, 3, 4, padding="same"), (2, 5, 5), False),
    "conv3d-zeros": (lambda: nn.Conv3d(2, 3, 3, padding=1), (2, 4, 3, 4), True),
    "convT2d-outpad": (
        lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        (4, 3, 4),
        True,
    ),
    "convT1d-grouped": (
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, groups=2),
        (4, 5),
        True,
    ),
    "convT2d-nopad": (lambda: nn.ConvTranspose2d(2, 3, 2, stride=2), (2, 3, 3), False),
    "linear": (lambda: nn.Linear(12, 7), (12,), True),
}


@pytest.fixture(params=sorted(LAYERS))
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, tuple[int, ...], bool]:
    make, shape, core_ok = LAYERS[request.param]
    return _seeded(make().double()), shape, core_ok


class TestSingularValues:
    @pytest.mark.parametrize("mode", ["zeros", "reflect"])
    def test_operator_norm_is_differentiable_for_every_padding(self, mode):
        conv = _seeded(nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode=mode).double())
        value = cvt.operator_norm(conv, (3, 7, 7), tol=1e-12)
        assert value.requires_grad
        value.backward()
        # torch's autograd through the module's dense matrix and svdvals
        ref = plain_copy(conv)
        eye = torch.eye(147, dtype=torch.float64).reshape(147, 3, 7, 7)
        torch.linalg.svdvals(ref(eye).reshape(147, -1))[0].backward()
        np.testing.assert_allclose(
            conv.weight.grad.numpy(), ref.weight.grad.numpy(), rtol=0, atol=1e-10
        )

    def test_full_spectrum_matches_the_module(self, case):
        module, shape, core_ok = case
        if not (core_ok or REAL_PADDING):
            pytest.skip("needs the core's real-padding support (geometry branch)")
        ref = dense_sv(module, shape)
        sv = cvt.singular_values(module, (1, *shape))
        assert sv.dtype == torch.float64
        assert sv.shape == ref.shape
        got = sv.detach().numpy()
        assert np.all(np.diff(got) <= 0)
        np.testing.assert_allclose(got, ref, rtol=0, atol=64 * EPS64 * ref[0])
        norm = cvt.operator_norm(module, torch.zeros(2, *shape, dtype=torch.float64))
        assert norm.ndim == 0
        assert abs(float(norm.detach()) - ref[0]) <= 64 * EPS64 * ref[0]

    def test_report_row_is_exact_or_a_true_bracket(self, case):
        module, shape, _ = case
        ref = dense_sv(module, shape)
        rows = list(cvt.report(module, torch.zeros(1, *shape, dtype=torch.float64)))
        assert len(rows) == 1
        row = rows[0]
        assert row.input_shape == shape
        assert row.lower <= ref[0] <= row.upper
        if row.exact:
            np.testing.assert_allclose(row.values, ref, rtol=0, atol=64 * EPS64 * ref[0])
            assert row.sigma_min == pytest.approx(ref[-1], abs=64 * EPS64 * ref[0])
            assert row.stable_rank == pytest.approx(np.sum(ref**2) / ref[0] ** 2, rel=1e-12)
        else:
            assert math.isnan(row.sigma_min)
            assert row.lower <= row.sigma_max <= row.upper

    def test_float32_module_gives_float32(self):
        m = _seeded(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"))
        sv = cvt.singular_values(m, (3, 8, 8))
        assert sv.dtype == torch.float32
        assert sv.is_contiguous()
        ref = dense_sv(m, (3, 8, 8))
        np.testing.assert_allclose(
            sv.detach().numpy(), ref, rtol=0, atol=8 * float(np.finfo(np.float32).eps) * ref[0]
        )

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    def test_cuda_module_stays_on_the_gpu(self):
        m = _seeded(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")).cuda()
        sv = cvt.singular_values(m, (3, 8, 8))
        assert sv.is_cuda
        ref = dense_sv(m.cpu(), (3, 8, 8))
        np.testing.assert_allclose(sv.cpu().numpy(), ref, rtol=1e-5, atol=1e-5)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="input_shape"):
            cvt.singular_values(nn.Conv2d(3, 4, 3), (4, 8, 8))
        with pytest.raises(ValueError, match="input_shape"):
            cvt.singular_values(nn.Conv2d(3, 4, 3), (3, 8))
        with pytest.raises(TypeError, match="BatchNorm2d"):
            cvt.operator_norm(nn.BatchNorm2d(3), (3, 8, 8))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(2, 4, 1, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu(self.conv1(x))) + self.shortcut(x)
        return self.head(self.bn(y).flatten(1))


class _Pair(nn.Module):
    """A leaf that returns a tuple (no output shape to report)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class _TwoInputs(nn.Module):
    """Two inputs, a leaf called by keyword, and one returning a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
        self.lin = nn.Linear(6, 4)
        self.pair = _Pair()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, _ = self.pair(self.conv(x).flatten(1)[:, :6])
        return self.lin(input=a + y)


class _Standardised(nn.Conv2d):
    """Weight standardisation (NFNets): the operator is not the raw weight's layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)
        return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class _StandardisedInside(nn.Conv2d):
    """The same, written into _conv_forward (the stock forward calls it)."""

    def _conv_forward(self, x, w, b):
        w = (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)
        return super()._conv_forward(x, w, b)


class _Upsample(nn.Module):
    """A ConvTranspose called with output_size=: padding other than its attribute's."""

    def __init__(self) -> None:
        super().__init__()
        self.ct = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ct(x, output_size=[2 * x.shape[-2], 2 * x.shape[-1]])


class _Tagged(nn.Conv2d):
    """A subclass that keeps the stock forward."""

    tag = "kept"


class TestSubclasses:
    X = torch.zeros(1, 3, 6, 6, dtype=torch.float64)

    def test_a_custom_forward_is_not_computed_as_the_weights_layer(self):
        ws = _seeded(_Standardised(3, 4, 3, padding=1).double())
        rep = cvt.report(nn.Sequential(ws, nn.ReLU()), self.X)
        assert [(r.name, r.method) for r in rep] == [("0", "unsupported")]
        for call in (
            lambda: cvt.singular_values(ws, (3, 6, 6)),
            lambda: cvt.operator_norm(ws, (3, 6, 6)),
            lambda: cvt.spectral_norm(ws),
        ):
            with pytest.raises(TypeError, match=r"_Standardised's own, not torch.nn.Conv2d's"):
                call()

    def test_a_custom_conv_forward_is_not_the_weights_layer_either(self):
        ws = _seeded(_StandardisedInside(3, 4, 3, padding=1).double())
        rep = cvt.report(nn.Sequential(ws), self.X)
        assert [(r.name, r.method) for r in rep] == [("0", "unsupported")]
        with pytest.raises(TypeError, match=r"its _conv_forward is _StandardisedInside's own"):
            cvt.spectral_norm(ws)

    def test_output_size_sets_the_transposed_layers_padding(self):
        net = _seeded(_Upsample().double())
        with torch.no_grad():
            net.ct.bias.zero_()  # (the dense reference applies the module itself)
        x = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
        rep = cvt.report(net, x)
        assert rep[0].output_shape == (4, 10, 10)
        # the operator the forward computes: output_padding 1, not the attribute's 0
        cols = 75
        eye = torch.eye(cols, dtype=torch.float64).reshape(cols, 3, 5, 5)

        def dense_norm() -> float:
            with torch.no_grad():
                y = net.ct(eye, output_size=[10, 10])
            return float(np.linalg.norm(y.reshape(cols, -1).numpy(), 2))

        ref = dense_norm()
        assert rep[0].exact
        assert rep[0].sigma_max == pytest.approx(ref, rel=1e-12)
        assert rep[0].upper >= ref
        cvt.clip_(net, x, 0.5 * ref)
        assert dense_norm() <= 0.5 * ref
        assert net.ct.output_padding == (0, 0)  # the module's own attribute is untouched

    def test_half_precision_layers(self):
        for dt in (torch.float16, torch.bfloat16):
            conv = _seeded(nn.Conv2d(3, 4, 3, padding=1)).to(dt)
            ref = dense_sv(plain_copy(conv).double(), (3, 6, 6))
            s = cvt.singular_values(conv, (3, 6, 6))
            assert s.dtype == torch.float32  # read exactly in float32
            np.testing.assert_allclose(s.detach().numpy(), ref, rtol=0, atol=1e-5 * ref[0])
            x = torch.zeros(1, 3, 6, 6, dtype=dt)
            assert cvt.report(conv, x)[0].sigma_max == pytest.approx(ref[0], rel=1e-5)
            cvt.clip_(conv, x, 0.5)
            assert conv.weight.dtype == dt
            assert dense_sv(plain_copy(conv).double(), (3, 6, 6))[0] <= 0.5

    def test_a_subclass_with_the_stock_forward_is_its_layer(self):
        conv = _seeded(_Tagged(3, 4, 3, padding=1).double())
        rep = cvt.report(conv, self.X)
        ref = dense_sv(plain_copy(conv), (3, 6, 6))
        np.testing.assert_allclose(rep[0].values, ref, rtol=0, atol=64 * EPS64 * ref[0])


class TestReport:
    def test_several_inputs_keyword_calls_and_tuple_outputs(self):
        net = _seeded(_TwoInputs().double())
        x = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
        y = torch.zeros(1, 6, dtype=torch.float64)
        rep = cvt.report(net, (x, y))
        # the Linear called by keyword has no positional input: no shape, so no row
        assert [(r.name, r.method) for r in rep] == [("conv", "lfa")]
        assert rep[0].input_shape == (2, 4, 4)
        ref = dense_sv(net.conv, (2, 4, 4))
        np.testing.assert_allclose(rep[0].values, ref, rtol=0, atol=64 * EPS64 * ref[0])

    def test_a_bare_module_is_named_by_its_type(self):
        rep = cvt.report(_seeded(nn.Linear(4, 3).double()), torch.zeros(1, 4, dtype=torch.float64))
        assert [(r.name, r.method) for r in rep] == [("Linear", "matrix")]
        # a 1x1 stride-2 layer is periodic up to a permutation of its input: exact by LFA
        conv = _seeded(nn.Conv2d(2, 3, 1, stride=2).double())
        rep = cvt.report(conv, torch.zeros(1, 2, 4, 4, dtype=torch.float64))
        assert [(r.name, r.method) for r in rep] == [("Conv2d", "lfa")]
        ref = dense_sv(conv, (2, 4, 4))
        np.testing.assert_allclose(rep[0].values, ref, rtol=0, atol=64 * EPS64 * ref[0])

    def test_chain_bounds_need_one_lipschitz_modules(self):
        def chain(*mods):
            net = _seeded(nn.Sequential(*mods).double())
            return cvt.report(net, torch.zeros(1, 2, 4, 4, dtype=torch.float64))

        conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")
        assert chain(conv, nn.LeakyReLU(0.1), nn.Flatten()).lipschitz_bound() is not None
        # slope 2 doubles negative inputs; nearest upsampling copies each pixel 4 times
        # (norm 2): no product of the layers' norms bounds either chain
        assert chain(conv, nn.LeakyReLU(2.0), nn.Flatten()).lipschitz_bound() is None
        assert chain(conv, nn.Upsample(scale_factor=2), nn.Flatten()).lipschitz_bound() is None

    def test_residual_net_against_each_module(self):
        net = _seeded(_Residual().double())
        net.train()
        before = net.bn.running_mean.clone()
        rep = cvt.report(net, torch.zeros(1, 2, 5, 5, dtype=torch.float64))
        assert net.training
        assert torch.equal(net.bn.running_mean, before)
        names = [r.name for r in rep]
        assert names == ["conv1", "conv2", "shortcut", "bn", "head"]
        assert [r.method for r in rep] == ["dense", "dense", "dense", "unsupported", "matrix"]
        shapes = {"conv1": (2, 5, 5), "conv2": (4, 5, 5), "shortcut": (2, 5, 5), "head": (36,)}
        for r in rep:
            if r.name == "bn":
                assert not r.supported
                assert math.isnan(r.sigma_max)
                assert r.type == "BatchNorm2d"
                continue
            ref = dense_sv(getattr(net, r.name), shapes[r.name])
            assert r.exact
            np.testing.assert_allclose(r.values, ref, rtol=0, atol=64 * EPS64 * ref[0])
        assert rep.lipschitz_bound() is None  # residual: no product is claimed
        md = rep.to_markdown()
        assert "unsupported" in md
        assert "Lipschitz" not in md
        recs = rep.to_records()
        assert recs[0]["name"] == "conv1"
        assert "values" not in recs[0]

    def test_sequential_chain_bound_holds(self):
        net = _seeded(
            nn.Sequential(
                nn.Conv2d(2, 3, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(3, 3, 3, stride=2, padding=1),
                nn.Flatten(),
                nn.Linear(27, 4),
            ).double()
        )
        rep = cvt.report(net, torch.zeros(1, 2, 6, 6, dtype=torch.float64))
        bound = rep.lipschitz_bound()
        assert bound is not None
        # the linear chain (ReLU -> identity) is one matrix: the bound must cover its norm
        lin = nn.Sequential(net[0], net[2], net[3], net[4])
        cols = 2 * 36
        eye = torch.eye(cols, dtype=torch.float64).reshape(cols, 2, 6, 6)
        with torch.no_grad():
            for m in (net[0], net[2], net[4]):
                m.bias.zero_()
            mat = lin(eye).reshape(cols, -1).numpy()
        assert np.linalg.norm(mat, 2) <= bound
        assert "Lipschitz bound of this Sequential chain" in rep.to_markdown()

    def test_rank_deficient_condition_is_inf(self):
        lin = _seeded(nn.Linear(6, 4).double())
        conv = _seeded(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double())
        with torch.no_grad():
            lin.weight[1] = 2 * lin.weight[0]
            conv.weight[:, 0] = 0
        assert cvt.report(lin, torch.zeros(6, dtype=torch.float64))[0].condition == math.inf
        assert (
            cvt.report(conv, torch.zeros(1, 2, 4, 4, dtype=torch.float64))[0].condition == math.inf
        )

    def test_bracket_for_layers_too_large_for_dense(self):
        m = _seeded(nn.Conv2d(3, 4, 3, padding=1).double())
        rep = cvt.report(m, torch.zeros(1, 3, 6, 6, dtype=torch.float64), dense_limit=10)
        ref = dense_sv(m, (3, 6, 6))
        row = rep[0]
        assert (row.name, row.method) == ("Conv2d", "krylov")
        assert not row.exact
        assert row.lower <= ref[0] <= row.upper
        assert row.sigma_max == pytest.approx(ref[0], rel=1e-3)

    def test_parametrized_layers_are_reported_with_their_computed_weight(self):
        torch.manual_seed(1)
        conv = cvt.spectral_norm(nn.Conv2d(3, 4, 3, padding=1).double(), max_sv=3.0)
        wn = nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 3, padding=1).double())
        head = nn.Linear(144, 2).double()
        net = nn.Sequential(conv, nn.ReLU(), wn, nn.Flatten(), head)
        x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
        net.train()
        net(x)  # conv certifies at (3, 6, 6)
        u = conv.parametrizations.weight[0]._u.clone()
        state = {k: v.clone() for k, v in net.state_dict().items()}
        rep = cvt.report(net, x)
        # a report changes no state (an eval forward of spectral_norm kept _v before)
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
        assert [r.name for r in rep] == ["0", "2", "4"]
        assert net.training
        assert conv.parametrizations.weight[0].training
        # read in eval mode: no power step of spectral_norm's
        assert torch.equal(conv.parametrizations.weight[0]._u, u)
        net.eval()
        with torch.no_grad():
            weights = {"0": conv.weight.clone(), "2": wn.weight.clone()}
        shapes = {"0": (3, 6, 6), "2": (4, 6, 6)}
        norms = []
        for r in rep.rows[:2]:
            mod = net[int(r.name)]
            ref = dense_sv(plain_copy(mod, weights[r.name]), shapes[r.name])
            np.testing.assert_allclose(r.values, ref, rtol=0, atol=64 * EPS64 * ref[0])
            norms.append(ref[0])
        norms.append(np.linalg.norm(head.weight.detach().numpy(), 2))
        assert float(np.prod(norms)) <= rep.lipschitz_bound()

    def test_a_shape_for_the_example_input_is_refused_clearly(self):
        net = nn.Sequential(nn.Conv2d(3, 4, 3))
        with pytest.raises(TypeError, match=r"torch.zeros\(\(1, 3, 6, 6\)\)"):
            cvt.report(net, (1, 3, 6, 6))
        with pytest.raises(TypeError, match="example_input"):
            cvt.clip_(net, torch.Size([1, 3, 6, 6]), 1.0)

    def test_a_layer_met_twice_claims_no_chain_bound(self):
        lin = nn.Linear(4, 4, bias=False).double()
        with torch.no_grad():
            lin.weight.copy_(3 * torch.eye(4))
        rep = cvt.report(nn.Sequential(lin, nn.ReLU(), lin), torch.ones(1, 4, dtype=torch.float64))
        # x -> 9 x on positive inputs: one row of 3 is no bound of the chain
        assert rep.lipschitz_bound() is None

    def test_linear_on_an_nd_input_is_its_matrix(self):
        net = _seeded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 5)).double())
        with torch.no_grad():
            for m in net:
                m.bias.zero_()
        rep = cvt.report(net, torch.zeros(1, 3, 6, 6, dtype=torch.float64))
        ref = np.linalg.svd(net[1].weight.detach().numpy(), compute_uv=False)
        np.testing.assert_allclose(rep[1].values, ref, rtol=1e-13)
        # the chain bound holds for the whole map (the Linear acts on every position)
        cols = 3 * 36
        eye = torch.eye(cols, dtype=torch.float64).reshape(cols, 3, 6, 6)
        with torch.no_grad():
            mat = net(eye).reshape(cols, -1).numpy()
        assert np.linalg.norm(mat, 2) <= rep.lipschitz_bound()
        assert float(cvt.operator_norm(net[1], (2, 7, 4)).detach()) == pytest.approx(
            ref[0], rel=1e-13
        )

    def test_plot(self, tmp_path):
        pytest.importorskip("matplotlib")
        net = _seeded(_Residual())
        rep = cvt.report(net, torch.zeros(1, 2, 5, 5))
        rep.plot(tmp_path / "spectra.png")
        assert (tmp_path / "spectra.png").stat().st_size > 1000


def _true_norm(module: nn.Module, shape: tuple[int, ...]) -> float:
    return float(np.linalg.norm(module_dense(module, shape), 2))


class TestSpectralNorm:
    def test_training_keeps_the_promise_each_step(self):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="circular"),
            nn.Tanh(),
            nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1),
            nn.Flatten(),
            nn.Linear(2 * 6 * 6, 3),
        ).double()
        shapes = {0: (2, 6, 6), 2: (4, 6, 6), 4: (4, 3, 3), 6: (72,)}
        max_sv = 0.8
        for i in shapes:
            cvt.spectral_norm(net[i], max_sv=max_sv)
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
        target = torch.randn(8, 3, dtype=torch.float64)
        for _ in range(6):
            opt.zero_grad()
            loss = ((net(x) - target) ** 2).sum()
            loss.backward()
            grad = net[0].parametrizations.weight.original.grad
            assert grad is not None
            assert float(grad.abs().sum()) > 0
            opt.step()
            for i, shape in shapes.items():
                assert _true_norm(net[i], shape) <= max_sv * (1 + 1e-3), i
        # the certificate is exact for periodic and Linear layers: normalised, not just bounded
        for i in (2, 6):
            assert _true_norm(net[i], shapes[i]) >= max_sv / (1 + 5e-2) / (1 + 1e-3)

    def test_unconverged_estimate_is_still_safe(self):
        torch.manual_seed(1)
        m = _seeded(nn.Conv2d(3, 3, 3, padding=1).double())
        cvt.spectral_norm(m, (3, 5, 5), max_sv=1.0, n_power_iterations=1)
        opt = torch.optim.SGD(m.parameters(), lr=5.0)  # large, rotating steps
        x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
        for _ in range(6):
            opt.zero_grad()
            (m(x) ** 3).sum().backward()
            opt.step()
            assert _true_norm(m, (3, 5, 5)) <= 1 + 1e-3

    def test_follows_input_size_and_is_removable(self):
        m = _seeded(nn.Conv2d(2, 3, 3, padding=1).double())
        cvt.spectral_norm(m, max_sv=2.0)
        assert _true_norm(m, (2, 6, 6)) <= 2.0 * (1 + 1e-3)  # before any forward
        m(torch.zeros(1, 2, 6, 6, dtype=torch.float64))
        assert _true_norm(m, (2, 6, 6)) <= 2.0 * (1 + 1e-3)
        m(torch.zeros(1, 2, 3, 3, dtype=torch.float64))
        assert _true_norm(m, (2, 3, 3)) <= 2.0 * (1 + 1e-3)
        assert m.parametrizations.weight[0].layer.in_shape == (2, 3, 3)
        assert "parametrizations.weight.original" in m.state_dict()
        assert "parametrizations.weight.0._u" in m.state_dict()
        fresh = _seeded(nn.Conv2d(2, 3, 3, padding=1).double(), seed=5)
        cvt.spectral_norm(fresh, max_sv=2.0)
        fresh.load_state_dict(m.state_dict())
        assert torch.equal(fresh.parametrizations.weight[0]._u, m.parametrizations.weight[0]._u)
        assert _true_norm(fresh, (2, 3, 3)) <= 2.0 * (1 + 1e-3)
        torch.nn.utils.parametrize.remove_parametrizations(m, "weight")
        assert not torch.nn.utils.parametrize.is_parametrized(m)
        m(torch.zeros(1, 2, 6, 6, dtype=torch.float64))
        assert not m._forward_pre_hooks

    def test_bad_input(self):
        with pytest.raises(TypeError, match="BatchNorm"):
            cvt.spectral_norm(nn.BatchNorm2d(3))
        with pytest.raises(ValueError, match="max_sv"):
            cvt.spectral_norm(nn.Conv2d(2, 2, 3), max_sv=0)
        with pytest.raises(ValueError, match="max_sv"):  # it would divide by inf: NaN
            cvt.spectral_norm(nn.Conv2d(2, 2, 3), max_sv=math.inf)
        with pytest.raises(TypeError, match="n_power_iterations"):
            cvt.spectral_norm(nn.Conv2d(2, 2, 3), n_power_iterations=1.0)

    def test_numpy_scalars_and_an_input_tensor_are_accepted(self):
        m = _seeded(nn.Conv2d(2, 3, 3, padding=1).double())
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
        cvt.spectral_norm(m, x, max_sv=np.float32(0.5), n_power_iterations=np.int64(2))
        m(x)
        m.eval()
        assert _true_norm(m, (2, 5, 5)) <= 0.5 * (1 + 1e-3)


class TestClip:
    def _net(self) -> nn.Module:
        return _seeded(
            nn.Sequential(
                nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),
                nn.ReLU(),
                nn.Conv2d(4, 4, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect"),
                nn.Flatten(),
                nn.Linear(27, 5),
            ).double(),
            seed=3,
        )

    SHAPES = {0: (2, 6, 6), 2: (4, 6, 6), 4: (4, 3, 3), 6: (27,)}

    def test_clip_bounds_every_real_layer(self):
        net = self._net()
        before = {i: net[i].weight.detach().clone() for i in self.SHAPES}
        norms = {i: _true_norm(net[i], s) for i, s in self.SHAPES.items()}
        max_sv = 0.5 * min(norms.values())
        rep = cvt.clip_(net, torch.zeros(1, 2, 6, 6, dtype=torch.float64), max_sv, iterations=300)
        for i, shape in self.SHAPES.items():
            assert _true_norm(net[i], shape) <= max_sv * (1 + 1e-9), i
        assert all(r.upper <= max_sv * (1 + 1e-9) for r in rep)
        # the periodic layer is projected: nearer to the original than a plain rescale
        w0, w = before[0], net[0].weight.detach()
        rescaled = w0 * (max_sv / norms[0])
        assert torch.linalg.vector_norm(w - w0) < torch.linalg.vector_norm(rescaled - w0)
        assert _true_norm(net[0], self.SHAPES[0]) >= max_sv * (1 - 1e-2)

    def test_min_sv_refused_for_zero_padding(self):
        with pytest.raises(ValueError, match=r"min_sv=0.1 cannot be guaranteed for Conv2d"):
            cvt.clip_(self._net(), torch.zeros(1, 2, 6, 6, dtype=torch.float64), 1.0, min_sv=0.1)

    def test_both_ends_for_periodic_layers_and_linear(self):
        net = _seeded(
            nn.Sequential(
                nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
                nn.Flatten(),
                nn.Linear(75, 6),
            ).double(),
            seed=4,
        )
        x = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
        lin0 = np.linalg.svd(net[2].weight.detach().numpy(), compute_uv=False)
        lo, hi = float(np.quantile(lin0, 0.3)), float(np.quantile(lin0, 0.7))
        cvt.clip_(net, x, hi, min_sv=lo, iterations=300)
        # the matrix: its singular values clipped to [lo, hi] (then certified: <= 1e-12 off)
        lin = np.linalg.svd(net[2].weight.detach().numpy(), compute_uv=False)
        np.testing.assert_allclose(lin, np.clip(lin0, lo, hi), rtol=1e-9)
        conv = dense_sv(net[0], (2, 5, 5))
        assert conv[0] <= hi
        # min_sv: to within the clip's tol (convsv.clip: not convex with a lower bound)
        assert conv[-1] >= lo * (1 - 1e-2)

    def test_the_layer_settings_and_options_reach_the_core(self, monkeypatch):
        # a strided, dilated, grouped, reflect-padded layer: the periodic layer on the
        # padded torus, clipped to max_sv / ||P|| with the user's options
        conv = _seeded(
            nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect")
        ).double()
        calls = []
        real = convsv.clip_

        def spy(*args, **kw):
            calls.append((args, kw))
            return real(*args, **kw)

        monkeypatch.setattr(convsv, "clip_", spy)
        x = torch.zeros(1, 4, 7, 6, dtype=torch.float64)
        # (the hook hands its options on too)
        opt = torch.optim.SGD(conv.parameters(), lr=0.0)
        cvt.register_clip_hook(opt, nn.Sequential(conv), x, 0.5, every=1, tol=2e-3)
        opt.step()
        assert calls.pop()[1]["tol"] == 2e-3
        cvt.clip_(nn.Sequential(conv), x, 0.5, tol=3e-3)
        (args, kw) = calls[0]
        layer = convsv.torch._layers.layer_of(conv, (4, 7, 6))
        assert args[1] == (12, 10)  # 7 + 2 + 2 -> 12 (a multiple of the stride), 6 + 4
        assert args[2] == pytest.approx(0.5 / layer.padding_norm())
        assert args[3] == (2, 2)
        assert kw["dilation"] == (2, 2)
        assert kw["groups"] == 2
        assert kw["tol"] == 3e-3
        assert _true_norm(conv, (4, 7, 6)) <= 0.5

    def test_bad_bounds_name_themselves(self):
        x = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
        with pytest.raises(ValueError, match=r"max_sv must be in \(0, inf\), got 0.0"):
            cvt.clip_(self._net(), x, 0.0)
        with pytest.raises(ValueError, match=r"min_sv must be in \[0, 1\], got 2.0"):
            cvt.clip_(self._net(), x, 1.0, min_sv=2.0)
        with pytest.raises(ValueError, match=r"min_sv must be in \[0, 1\], got -0.5"):
            cvt.clip_(self._net(), x, 1.0, min_sv=-0.5)
        opt = torch.optim.SGD(self._net().parameters(), lr=0.0)
        with pytest.raises(ValueError, match=r"every must be >= 1, got 0"):
            cvt.register_clip_hook(opt, self._net(), x, 1.0, every=0)

    def test_hook_clips_every_k_steps_until_removed(self):
        net = self._net()
        x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        max_sv = 0.3
        handle = cvt.register_clip_hook(opt, net, x[:1], max_sv, every=2, iterations=300)
        opt.step()
        assert _true_norm(net[2], self.SHAPES[2]) > max_sv  # not yet
        opt.step()
        for i, shape in self.SHAPES.items():
            assert _true_norm(net[i], shape) <= max_sv * (1 + 1e-9)
        handle.remove()
        with torch.no_grad():
            net[2].weight.mul_(10)
        opt.step()
        opt.step()
        assert _true_norm(net[2], self.SHAPES[2]) > max_sv


class _UnitFrobenius(nn.Module):
    """A parametrization that renormalises whatever it is given (right_inverse: identity)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w / torch.linalg.vector_norm(w)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


class _Doubled(nn.Module):
    """A parametrization without right_inverse."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


class TestClipParametrized:
    X = torch.zeros(1, 3, 6, 6, dtype=torch.float64)

    def test_a_parametrized_layer_is_clipped_through_right_inverse(self):
        conv = _seeded(nn.Conv2d(3, 4, 3, padding=1).double())
        conv = nn.utils.parametrizations.weight_norm(conv)
        with torch.no_grad():
            conv.parametrizations.weight.original1.mul_(5)
        rep = cvt.clip_(nn.Sequential(conv), self.X, 0.5)
        assert [r.name for r in rep] == ["0"]
        with torch.no_grad():
            w = conv.weight.clone()
        assert _true_norm(plain_copy(conv, w), (3, 6, 6)) <= 0.5

    def test_a_parametrization_that_undoes_the_clip_is_refused(self):
        conv = _seeded(nn.Conv2d(3, 4, 3, padding=1).double())
        torch.nn.utils.parametrize.register_parametrization(conv, "weight", _UnitFrobenius())
        # a unit-Frobenius 3x3 layer has norm <= 3: above 0.01 whatever is set
        with pytest.raises(ValueError, match="Conv2d's weight is computed by a parametrization"):
            cvt.clip_(nn.Sequential(conv), self.X, 0.01)
        conv = _seeded(nn.Conv2d(3, 4, 3, padding=1).double())
        torch.nn.utils.parametrize.register_parametrization(conv, "weight", _Doubled())
        with pytest.raises(ValueError, match="Conv2d's .* without right_inverse"):
            cvt.clip_(nn.Sequential(conv), self.X, 0.01)

    def test_hook_based_norms_and_convsv_spectral_norm_are_refused(self):
        # torch.nn.utils' hooks rebuild weight on every forward (an in-place clip would be
        # thrown away); convsv's spectral_norm divides any weight by its norm again
        for wrap, needle in (
            (nn.utils.spectral_norm, "SpectralNorm hook"),
            (nn.utils.weight_norm, "WeightNorm hook"),
            (lambda m: cvt.spectral_norm(m, (3, 6, 6)), "set that parametrization's max_sv"),
        ):
            with warnings.catch_warnings():  # (torch deprecates its hook-based weight_norm)
                warnings.simplefilter("ignore", FutureWarning)
                conv = wrap(
                    _seeded(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")).double()
                )
            conv(self.X)
            before = {k: v.clone() for k, v in conv.state_dict().items()}
            with pytest.raises(ValueError, match=needle):
                cvt.clip_(nn.Sequential(conv), self.X, 0.01)
            after = conv.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before)

    def test_a_refused_parametrization_is_left_as_it_was(self):
        conv = _seeded(nn.Conv2d(3, 4, 3, padding=1).double())
        nn.utils.parametrizations.spectral_norm(conv)  # the reshaped kernel's norm: 1
        conv.eval()
        with torch.no_grad():
            w0 = conv.weight.clone()
        before = {k: v.clone() for k, v in conv.state_dict().items()}
        with pytest.raises(ValueError, match="does not keep the clipped weight"):
            cvt.clip_(nn.Sequential(conv), self.X, 0.5)
        after = conv.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        with torch.no_grad():
            assert torch.equal(conv.weight, w0)

    def test_a_compliant_parametrized_layer_is_not_rewritten(self):
        conv = _seeded(nn.Conv2d(3, 4, 3, padding=1).double())
        conv = nn.utils.parametrizations.weight_norm(conv)
        before = {k: v.clone() for k, v in conv.state_dict().items()}
        cvt.clip_(nn.Sequential(conv), self.X, 1e3)
        after = conv.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)

    def test_options_are_checked_when_the_hook_is_registered(self):
        net = _seeded(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).double())
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        with pytest.raises(TypeError, match="itrations"):
            cvt.register_clip_hook(opt, net, self.X, 1.0, itrations=50)
        with pytest.raises(TypeError, match="itrations"):
            cvt.clip_(net, self.X, 1.0, itrations=50)
        with pytest.raises(ValueError, match="max_sv"):
            cvt.clip_(net, self.X, -1.0)
        handle = cvt.register_clip_hook(opt, net, self.X, np.float32(0.1), every=np.int64(1))
        opt.step()
        assert _true_norm(net[0], (3, 6, 6)) <= 0.1
        handle.remove()
        # min_sv reaches the hook's clips too (a Linear: its matrix exactly)
        lin = _seeded(nn.Linear(5, 4).double())
        opt = torch.optim.SGD(lin.parameters(), lr=0.0)
        s0 = np.linalg.svd(lin.weight.detach().numpy(), compute_uv=False)
        handle = cvt.register_clip_hook(
            opt,
            lin,
            torch.zeros(5, dtype=torch.float64),
            float(s0[1]),
            min_sv=float(s0[2]),
            every=2,
        )
        opt.step()
        opt.step()
        s = np.linalg.svd(lin.weight.detach().numpy(), compute_uv=False)
        np.testing.assert_allclose(s, np.clip(s0, s0[2], s0[1]), rtol=1e-9)
        handle.remove()


def test_import_convsv_does_not_import_torch():
    code = "import sys, convsv; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
