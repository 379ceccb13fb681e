"""PyTorch padding geometry (issue 11): every layer against the torch MODULE itself.

The reference matrix is built by applying ``torch.nn.Conv{d}d`` / ``ConvTranspose{d}d``
(bias=False, our kernel copied into ``.weight``) to basis signals: independent of convsv.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Env
from helpers import assert_array, dense_svd
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convsv
from convsv.geometry import layer_geometry

MODES = ("zeros", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class TorchLayer:
    kernel: np.ndarray  # torch weight layout: Conv (c_out, c_in/g, *k), ConvT (c_in, c_out/g, *k)
    n: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding: Any
    padding_mode: str
    transposed: bool
    output_padding: tuple[int, ...]
    dtype: str

    @property
    def d(self) -> int:
        return len(self.n)

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            dilation=self.dilation,
            groups=self.groups,
            padding=self.padding,
            transposed=self.transposed,
        )
        if self.transposed:
            kw["output_padding"] = self.output_padding
        else:
            kw["padding_mode"] = self.padding_mode
        return kw

    def module(self) -> torch.nn.Module:
        k = torch.as_tensor(self.kernel.astype(self.dtype))
        kshape = tuple(k.shape[2:])
        if self.transposed:
            cls = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)[
                self.d - 1
            ]
            m = cls(
                k.shape[0],
                k.shape[1] * self.groups,
                kshape,
                stride=self.stride,
                padding=self.padding,
                output_padding=self.output_padding,
                dilation=self.dilation,
                groups=self.groups,
                bias=False,
                dtype=k.dtype,
            )
        else:
            cls = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[self.d - 1]
            m = cls(
                k.shape[1] * self.groups,
                k.shape[0],
                kshape,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                groups=self.groups,
                bias=False,
                padding_mode=self.padding_mode,
                dtype=k.dtype,
            )
        with torch.no_grad():
            m.weight.copy_(k)
        return m

    def c_in(self) -> int:
        return self.kernel.shape[0] if self.transposed else self.kernel.shape[1] * self.groups


def _forward(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference module's output (torch's own performance note for padding='same'
    with even kernels is not what these tests check)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using padding='same'", category=UserWarning)
        return m(x)


def geometry_of(layer: TorchLayer):
    """convsv's :class:`~convsv.geometry.Geometry` of ``layer`` (which path it should take)."""
    return layer_geometry(
        layer.kernel,
        layer.n,
        layer.stride,
        layer.dilation,
        layer.groups,
        layer.padding,
        None if layer.transposed else layer.padding_mode,
        layer.transposed,
        layer.output_padding if layer.transposed else 0,
    )


def module_dense(layer: TorchLayer) -> np.ndarray:
    """The layer's matrix, column j = module(e_j), computed in float64 / complex128."""
    wide = layer.dtype.replace("float32", "float64").replace("complex64", "complex128")
    # the kernel's values rounded to the layer's dtype, then the product in double
    m = TorchLayer(
        **{**layer.__dict__, "kernel": layer.kernel.astype(layer.dtype), "dtype": wide}
    ).module()
    c_in = layer.c_in()
    cols = c_in * math.prod(layer.n)
    eye = torch.eye(cols, dtype=m.weight.dtype).reshape(cols, c_in, *layer.n)
    y = _forward(m, eye)
    return y.reshape(cols, -1).T.numpy()


def torch_refuses(layer: TorchLayer) -> bool:
    try:
        m = layer.module()
        _forward(m, torch.zeros((1, layer.c_in(), *layer.n), dtype=m.weight.dtype))
    except (ValueError, RuntimeError):
        return True
    return False


@st.composite
def torch_layers(
    draw: st.DrawFn, *, max_entries: int = 40_000, complex_ok: bool = True, big: bool = False
) -> TorchLayer:
    d = draw(st.sampled_from([1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2]))
    if big:  # >= 16 x 16 symbol blocks: many channels
        c_a, c_b = groups * draw(st.integers(16, 20)), draw(st.integers(16, 20))
    else:
        c_a, c_b = groups * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    k = tuple(draw(st.integers(1, 3 if d == 3 else 5)) for _ in range(d))
    dilation = tuple(draw(st.sampled_from([1, 1, 2])) for _ in range(d))
    kind = draw(
        st.sampled_from(["int", "tuple", "same", "valid"] if not transposed else ["int", "tuple"])
    )
    stride = tuple(draw(st.integers(1, 3)) for _ in range(d))
    if kind == "same":
        stride = (1,) * d
    if big:
        d = 1
        k, dilation, stride = k[:1], dilation[:1], stride[:1]
    n = tuple(draw(st.integers(1, 4 if d == 3 else (6 if big else 9))) for _ in range(d))
    if kind == "int":
        padding: Any = draw(st.integers(0, 3))
    elif kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(d))
    else:
        padding = kind
    mode = "zeros" if transposed else draw(st.sampled_from(MODES))
    op = (
        tuple(draw(st.integers(0, max(s, dl) - 1)) for s, dl in zip(stride, dilation))
        if transposed
        else (0,) * d
    )
    dtype = draw(
        st.sampled_from(
            ["float32", "float64"] + (["complex64", "complex128"] if complex_ok else [])
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (c_a, c_b, *k)
    kernel = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        kernel = kernel + 1j * rng.standard_normal(shape)
    layer = TorchLayer(kernel, n, stride, dilation, groups, padding, mode, transposed, op, dtype)
    assume(not torch_refuses(layer))
    rows_cols = module_dense_size(layer)
    assume(0 < rows_cols <= max_entries)
    return layer


def module_dense_size(layer: TorchLayer) -> int:
    m = layer.module()
    y = _forward(m, torch.zeros((1, layer.c_in(), *layer.n), dtype=m.weight.dtype))
    return y.numel() * layer.c_in() * math.prod(layer.n)


def _eps(dtype: str) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def _entry_bound(layer: TorchLayer, ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Rounding bound of ``ref @ x`` per entry: (terms) * eps * (|ref| @ |x|)."""
    terms = math.prod(layer.kernel.shape[1:]) * (layer.kernel.shape[0] if layer.transposed else 1)
    return 2.0 * terms * _eps(layer.dtype) * (np.abs(ref) @ np.abs(x)) + 1e-300


class TestDenseOperator:
    @given(layer=torch_layers(max_entries=12_000))
    def test_matches_torch_module(self, env: Env, layer: TorchLayer) -> None:
        ref = module_dense(layer)
        a = convsv.dense_operator(
            env.asarray(layer.kernel.astype(layer.dtype)), layer.n, layer.stride, **layer.kwargs()
        )
        assert_array(env, a, dtype=getattr(env.xp, layer.dtype), shape=ref.shape)
        got = env.to_numpy(a)
        # every entry is one tap, or a sum of <= prod(k) taps sharing a padded position:
        # bounded by the same sum of |taps| (the module applied with |kernel|)
        absolute = module_dense(
            TorchLayer(
                **{
                    **layer.__dict__,
                    "kernel": np.abs(layer.kernel.astype(layer.dtype)),
                    "dtype": "float64",
                }
            )
        )
        bound = math.prod(layer.kernel.shape[2:]) * _eps(layer.dtype) * absolute + 1e-300
        assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref))

    def test_big_blocks_2d(self, env: Env) -> None:
        rng = np.random.default_rng(7)
        layer = TorchLayer(
            rng.standard_normal((32, 16, 3, 3)),
            (7, 5),
            (2, 1),
            (1, 1),
            1,
            1,
            "reflect",
            False,
            (0, 0),
            "float64",
        )
        ref = module_dense(layer)
        got = env.to_numpy(
            convsv.dense_operator(
                env.asarray(layer.kernel), layer.n, layer.stride, **layer.kwargs()
            )
        )
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14 * np.abs(ref).max())


class TestApply:
    @given(layer=torch_layers(max_entries=12_000))
    def test_apply_and_adjoint(self, env: Env, layer: TorchLayer) -> None:
        ref = module_dense(layer)
        rng = np.random.default_rng(0)
        kern = env.asarray(layer.kernel.astype(layer.dtype))
        x = rng.standard_normal((2, ref.shape[1])).astype(layer.dtype)
        out_shape = module_out_shape(layer)
        xs = env.asarray(x.reshape(2, layer.c_in(), *layer.n))
        y = convsv.apply(kern, xs, layer.stride, **layer.kwargs())
        assert_array(env, y, dtype=getattr(env.xp, layer.dtype), shape=(2, *out_shape))
        got = env.to_numpy(y).reshape(2, -1)
        want = x @ ref.T
        assert np.all(np.abs(got - want) <= _entry_bound(layer, ref, x.T).T)
        w = rng.standard_normal((2, ref.shape[0])).astype(layer.dtype)
        xa = convsv.apply_adjoint(
            kern, env.asarray(w.reshape(2, *out_shape)), layer.stride, n=layer.n, **layer.kwargs()
        )
        assert_array(env, xa, dtype=getattr(env.xp, layer.dtype), shape=(2, layer.c_in(), *layer.n))
        got_a = env.to_numpy(xa).reshape(2, -1)
        want_a = w @ ref.conj()
        assert np.all(np.abs(got_a - want_a) <= _entry_bound(layer, ref.conj().T, w.T).T)

    def test_type_promotion(self, env: Env) -> None:
        """Issue 14 item 4: float32 kernel + float64 x -> float64; complex x -> complex."""
        rng = np.random.default_rng(1)
        k32 = env.asarray(rng.standard_normal((3, 2, 3)).astype(np.float32))
        x64 = rng.standard_normal((2, 8))
        for padding in ("circular", 1):
            y = convsv.apply(k32, env.asarray(x64), 2, padding=padding)
            assert y.dtype == env.xp.float64
            ref = module_dense(
                TorchLayer(
                    env.to_numpy(k32).astype(np.float64),
                    (8,),
                    (2,),
                    (1,),
                    1,
                    1 if padding == 1 else 0,
                    "zeros" if padding == 1 else "circular",
                    False,
                    (0,),
                    "float64",
                )
            )
            if padding == 1:  # float64 accuracy, not float32's
                np.testing.assert_allclose(
                    env.to_numpy(y).reshape(-1),
                    ref @ x64.reshape(-1),
                    rtol=0,
                    atol=1e-14 * np.abs(ref).sum(),
                )
            yc = convsv.apply(k32, env.asarray(x64.astype(np.complex128)), 2, padding=padding)
            assert yc.dtype == env.xp.complex128
            ya = convsv.apply_adjoint(k32, env.asarray(env.to_numpy(y)), 2, padding=padding, n=8)
            assert ya.dtype == env.xp.float64


def module_out_shape(layer: TorchLayer) -> tuple[int, ...]:
    m = layer.module()
    y = _forward(m, torch.zeros((1, layer.c_in(), *layer.n), dtype=m.weight.dtype))
    return tuple(y.shape[1:])


class TestSingularValues:
    @given(layer=torch_layers(max_entries=12_000))
    def test_against_dense_svd(self, env: Env, layer: TorchLayer) -> None:
        ref = dense_svd(module_dense(layer))
        sv, info = convsv.singular_values(
            env.asarray(layer.kernel.astype(layer.dtype)),
            layer.n,
            layer.stride,
            full_output=True,
            **layer.kwargs(),
        )
        rdt = env.xp.float32 if layer.dtype in ("float32", "complex64") else env.xp.float64
        assert_array(env, sv, dtype=rdt, shape=ref.shape)
        geom = geometry_of(layer)
        assert info.method == ("lfa" if geom.exact_periodic else "dense")
        s_max = float(ref[0]) if ref.size else 0.0
        # measured worst over 300 examples: 13.4 eps s_max (complex128, dense), <= 1.3 else
        np.testing.assert_allclose(
            env.to_numpy(sv), ref, rtol=0, atol=32 * _eps(layer.dtype) * s_max + 1e-300
        )

    @pytest.mark.parametrize(
        ("n", "stride", "padding"), [((8, 6), 2, 1), ((6, 6), 1, (1, 1)), ((9,), 3, 1)]
    )
    def test_circular_mode_takes_the_exact_spectral_path(
        self, env: Env, n: tuple, stride: int, padding: Any
    ) -> None:
        """padding_mode='circular' with torch's out = n/s is a shifted periodic layer."""
        rng = np.random.default_rng(3)
        d = len(n)
        kernel = rng.standard_normal((16, 16, *(3,) * d))
        layer = TorchLayer(
            kernel, n, (stride,) * d, (1,) * d, 1, padding, "circular", False, (0,) * d, "float64"
        )
        sv, info = convsv.singular_values(
            env.asarray(kernel), n, stride, full_output=True, **layer.kwargs()
        )
        assert info.method == "lfa"
        ref = dense_svd(module_dense(layer))
        np.testing.assert_allclose(env.to_numpy(sv), ref, rtol=0, atol=64 * 2.3e-16 * ref[0])


class TestBounds:
    @given(layer=torch_layers(max_entries=20_000))
    def test_brackets_contain_every_singular_value(self, env: Env, layer: TorchLayer) -> None:
        self._check(env, layer)

    @settings(max_examples=8)  # each example is a 16-20 channel layer on three backends
    @given(layer=torch_layers(max_entries=12_000, big=True))
    def test_brackets_big_blocks(self, env: Env, layer: TorchLayer) -> None:
        self._check(env, layer)

    @staticmethod
    def _check(env: Env, layer: TorchLayer) -> None:
        ref = dense_svd(module_dense(layer))
        lo, up = convsv.singular_value_bounds(
            env.asarray(layer.kernel.astype(layer.dtype)), layer.n, layer.stride, **layer.kwargs()
        )
        rdt = env.xp.float32 if layer.dtype in ("float32", "complex64") else env.xp.float64
        assert_array(env, lo, dtype=rdt, shape=ref.shape)
        assert_array(env, up, dtype=rdt, shape=ref.shape)
        lo, up = env.to_numpy(lo), env.to_numpy(up)
        # the float64 reference SVD itself errs by a few eps64 s_max (a true zero comes out
        # as ~1e-16 s_max); nothing else is allowed, float32 brackets included
        slack = 8 * 2.3e-16 * (float(ref[0]) if ref.size else 0.0)
        assert np.all(lo <= ref + slack), np.min(ref - lo)
        assert np.all(ref <= up + slack), np.min(up - ref)
        assert np.all(np.diff(lo) <= 0)
        assert np.all(np.diff(up) <= 0)

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_exact_when_periodic_up_to_permutation(self, env: Env, dtype: str) -> None:
        """Circular padding 1, stride 2, n = 8: a shifted periodic layer; brackets collapse."""
        rng = np.random.default_rng(5)
        kernel = rng.standard_normal((16, 8, 3, 3)).astype(dtype)
        layer = TorchLayer(kernel, (8, 8), (2, 2), (1, 1), 1, 1, "circular", False, (0, 0), dtype)
        ref = dense_svd(module_dense(layer))
        lo, up = convsv.singular_value_bounds(
            env.asarray(kernel), 8, 2, padding=1, padding_mode="circular"
        )
        lo, up = env.to_numpy(lo), env.to_numpy(up)
        assert np.all(lo <= ref)
        assert np.all(ref <= up)
        # only the worst-case rounding margin (bounds.periodic_error) separates them
        assert np.max(up - lo) <= 800 * _eps(dtype) * ref[0]  # measured 371

    def test_zero_padding_interlaces(self) -> None:
        """Zero padding 1, n = 6, k = 3: torus 7, one row and one column per axis removed."""
        kernel = np.random.default_rng(2).standard_normal((2, 2, 3, 3))
        geom = layer_geometry(kernel, (6, 6), 1, 1, 1, 1, None, False, 0)
        assert geom.conv.n == (7, 7)
        assert (geom.removed_rows, geom.removed_cols) == (2 * (49 - 36), 2 * (49 - 36))
        assert geom.embed_norm == 1.0
        assert not geom.exact_periodic


class TestSvd:
    @pytest.mark.parametrize("transposed", [False, True])
    def test_exact_periodic_vectors(self, env: Env, transposed: bool) -> None:
        rng = np.random.default_rng(4)
        kernel = rng.standard_normal((16, 8, 3)) + 1j * rng.standard_normal((16, 8, 3))
        kw: dict[str, Any] = (
            {"padding": "circular", "transposed": True}
            if transposed
            else {"padding": 1, "padding_mode": "circular"}
        )
        n = 6 if transposed else 12
        u, s, vh = convsv.svd(env.asarray(kernel), n, 2, k=5, **kw)
        layer = TorchLayer(kernel, (n,), (2,), (1,), 1, 1, "circular", False, (0,), "complex128")
        a = convsv.dense_operator(kernel, n, 2, **kw) if transposed else module_dense(layer)
        ref = dense_svd(a)
        s_h, u_h, v_h = env.to_numpy(s), env.to_numpy(u), env.to_numpy(vh)
        np.testing.assert_allclose(s_h, ref[:5], rtol=0, atol=32 * 2.3e-16 * ref[0])
        for i in range(5):
            np.testing.assert_allclose(
                a @ v_h[i].reshape(-1), s_h[i] * u_h[i].reshape(-1), rtol=0, atol=1e-13 * ref[0]
            )

    def test_nonperiodic_goes_to_krylov(self) -> None:  # tests/test_real_layers.py: values
        kernel = np.random.default_rng(0).standard_normal((2, 2, 3))
        u, s, v = convsv.svd(kernel, 8, padding=1, k=2)
        assert u.shape == (2, 2, 8)
        assert v.shape == (2, 2, 8)
        assert float(s[0]) >= float(s[1]) > 0


class TestOperatorNorm:
    @pytest.mark.parametrize(("padding", "mode"), [(1, "zeros"), (1, "circular"), (2, "reflect")])
    def test_against_module(self, env: Env, padding: int, mode: str) -> None:
        kernel = np.random.default_rng(6).standard_normal((4, 3, 3, 3))
        layer = TorchLayer(
            kernel, (6, 8), (2, 2), (1, 1), 1, padding, mode, False, (0, 0), "float64"
        )
        ref = dense_svd(module_dense(layer))[0]
        got = convsv.operator_norm(
            env.asarray(kernel), (6, 8), 2, padding=padding, padding_mode=mode
        )
        assert abs(float(got) - ref) <= 16 * 2.3e-16 * ref


class TestLegacyZeros:
    def test_centred_zero_padding_is_torch_same_for_odd_kernels(self) -> None:
        """padding='zeros' (convsv's own): PyTorch's padding=dilation*(k-1)//2, out=ceil(n/s)."""
        kernel = np.random.default_rng(8).standard_normal((3, 2, 5, 3))
        for stride in (1, 2):
            layer = TorchLayer(
                kernel,
                (7, 6),
                (stride, stride),
                (1, 2),
                1,
                (2, 2),
                "zeros",
                False,
                (0, 0),
                "float64",
            )
            ref = module_dense(layer)
            got = convsv.dense_operator(kernel, (7, 6), stride, dilation=(1, 2), padding="zeros")
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-15 * np.abs(ref).max())
            got2 = convsv.dense_operator(kernel, (7, 6), stride, dilation=(1, 2), padding=(2, 2))
            np.testing.assert_allclose(got2, ref, rtol=0, atol=1e-15 * np.abs(ref).max())


class TestRefusals:
    @pytest.mark.parametrize(
        "case",
        [
            dict(padding="same", stride=2),
            dict(padding=3, padding_mode="reflect"),  # reflect needs pad < n = 3
            dict(padding=4, padding_mode="circular"),  # circular needs pad <= n
            dict(padding=1, padding_mode="wrap"),
            dict(padding="full"),
            dict(padding=-1),
            dict(padding=1, transposed=True, output_padding=2, stride=2),
            dict(padding=1, transposed=True, padding_mode="reflect"),
            dict(padding="same", transposed=True),
            dict(padding=0, kernel_size=9),  # kernel larger than padded input
            dict(padding="circular", padding_mode="zeros"),
            dict(padding=1, output_padding=1),  # output_padding without transposed
        ],
    )
    def test_value_errors_match_torch(self, case: dict) -> None:
        case = dict(case)
        ks = case.pop("kernel_size", 3)
        stride = case.pop("stride", 1)
        kernel = np.ones((2, 2, ks))
        tkw = {k: v for k, v in case.items() if k not in ("transposed", "output_padding")}
        if (
            case.get("padding") not in ("circular",)
            and case.get("padding_mode") != "wrap"
            and case.get("padding") != "full"
            and case.get("padding") != -1
        ):
            cls = torch.nn.ConvTranspose1d if case.get("transposed") else torch.nn.Conv1d
            extra = (
                {"output_padding": case["output_padding"]}
                if "output_padding" in case and case.get("transposed")
                else {}
            )
            if "output_padding" in case and not case.get("transposed"):
                pass  # torch's Conv1d has no output_padding at all
            else:
                with pytest.raises((ValueError, RuntimeError, TypeError)):
                    cls(2, 2, ks, stride=stride, **tkw, **extra)(torch.zeros(1, 2, 3))
        with pytest.raises(ValueError, match=r"padding|output_padding|kernel"):
            layer_geometry(
                kernel,
                3,
                stride,
                1,
                1,
                case.get("padding", 0),
                case.get("padding_mode"),
                case.get("transposed", False),
                case.get("output_padding", 0),
            )
        with pytest.raises(ValueError, match=r"padding|output_padding|kernel"):
            convsv.singular_values(kernel, 3, stride, **case)

    def test_apply_adjoint_asks_for_n_when_ambiguous(self) -> None:
        with pytest.raises(ValueError, match=r"pass n="):
            convsv.apply_adjoint(np.ones((2, 2, 3)), np.ones((2, 4)), 2, padding=1)

    def test_dense_too_big_names_the_alternatives(self) -> None:
        kernel = np.ones((64, 64, 3, 3))
        with pytest.raises(ValueError, match=r"singular_value_bounds.*svd\(k=\.\.\.\)"):
            convsv.singular_values(kernel, 32, padding=1)
