"""Projection onto operator-norm balls against the dense operator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from helpers import dense_svd, torch_dense
from hypothesis import given
from hypothesis import strategies as st
from strategies import layers

import convsv
import convsv.tt as tt
from convsv.reference import sedghi_clip_operator_norm


def _svs(kernel: np.ndarray, n, stride, dilation, groups) -> np.ndarray:
    return dense_svd(torch_dense(kernel, n, stride, dilation, groups, "circular"))


def _grid_distance(a: np.ndarray, b: np.ndarray, n, stride, dilation, groups) -> float:
    """Frobenius distance of the two layers' operators."""
    d = torch_dense(a - b, n, stride, dilation, groups, "circular")
    return float(np.linalg.norm(d))


class TestClipFull:
    @given(layer=layers(complex_ok=False, max_entries=20_000), data=st.data())
    def test_exact_projection(self, env, layer, data):
        assume_dil = tuple(1 for _ in layer.n)
        k = layer.kernel
        smax = _svs(k, layer.n, layer.stride, assume_dil, layer.groups)[0]
        hi = data.draw(st.floats(0.1, 1.0)) * smax
        lo = data.draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
        lo = None if lo is None else lo * hi
        out = convsv.clip(env.asarray(k), layer.n, hi, layer.stride, min_sv=lo, support="full",
                          groups=layer.groups)
        o = env.to_numpy(out)
        assert o.shape == (*k.shape[:2], *layer.n)
        s = _svs(o, layer.n, layer.stride, assume_dil, layer.groups)
        assert s[0] <= hi * (1 + 1e-9) + 1e-12
        if lo is not None:
            assert s[-1] >= lo * (1 - 1e-9) - 1e-12
        again = env.to_numpy(convsv.clip(out, layer.n, hi, layer.stride, min_sv=lo,
                                          support="full", groups=layer.groups))
        np.testing.assert_allclose(again, o, atol=1e-10 * (1 + np.abs(o).max()))  # idempotent
        # nearest: no feasible competitor is closer (the rescaled kernel)
        scaled = convsv.clip(env.asarray(k * (hi / smax)), layer.n, hi, layer.stride,
                             min_sv=lo, support="full", groups=layer.groups)
        d_out = _grid_distance(o, env.to_numpy(convsv.clip(env.asarray(k), layer.n, 1e300,
                               layer.stride, support="full", groups=layer.groups)),
                               layer.n, layer.stride, assume_dil, layer.groups)
        full_k = env.to_numpy(convsv.clip(env.asarray(k), layer.n, 1e300, layer.stride,
                                          support="full", groups=layer.groups))
        d_scaled = _grid_distance(env.to_numpy(scaled), full_k, layer.n, layer.stride,
                                  assume_dil, layer.groups)
        assert d_out <= d_scaled * (1 + 1e-9) + 1e-9


class TestClipKernel:
    @given(layer=layers(complex_ok=False, max_entries=20_000), frac=st.floats(0.2, 0.9))
    def test_bound_holds_and_beats_rescaling(self, env, layer, frac):
        k = layer.kernel
        kw = dict(dilation=layer.dilation, groups=layer.groups)
        smax = _svs(k, layer.n, layer.stride, layer.dilation, layer.groups)[0]
        hi = frac * smax
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", convsv.ClipWarning)
            out, info = convsv.clip(env.asarray(k), layer.n, hi, layer.stride, tol=1e-2,
                                    iterations=50, full_output=True, **kw)
        o = env.to_numpy(out)
        assert o.shape == k.shape
        s = _svs(o, layer.n, layer.stride, layer.dilation, layer.groups)
        assert s[0] <= hi * (1 + 1e-2) + 1e-12  # converged, or rescaled to the bound
        np.testing.assert_allclose(info.max_sv, s[0], rtol=1e-8, atol=1e-12)
        if info.converged:
            # the projection is never farther than simply rescaling the kernel
            d = _grid_distance(o, k, layer.n, layer.stride, layer.dilation, layer.groups)
            d_scale = _grid_distance(k * frac, k, layer.n, layer.stride, layer.dilation,
                                     layer.groups)
            assert d <= d_scale * (1 + 1e-2) + 1e-9

    def test_one_step_is_not_a_projection_but_clip_is(self, env):
        rng = np.random.default_rng(0)
        k = rng.standard_normal((4, 3, 3, 3))
        once = env.to_numpy(convsv.clip_once(env.asarray(k), 8, 1.0))
        assert _svs(once, (8, 8), (1, 1), (1, 1), 1)[0] > 1.3  # published step misses
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", convsv.ClipWarning)
            out = env.to_numpy(convsv.clip(env.asarray(k), 8, 1.0, iterations=200))
        assert _svs(out, (8, 8), (1, 1), (1, 1), 1)[0] <= 1.0 + 1e-2

    @given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 5), n=st.integers(5, 8),
           clip_to=st.floats(0.1, 3.0))
    def test_clip_once_equals_sedghi_for_k_le_n(self, env, seed, k, n, clip_to):
        kern = np.random.default_rng(seed).standard_normal((3, 2, k, k))
        ours = env.to_numpy(convsv.clip_once(env.asarray(kern), n, clip_to))
        ref = sedghi_clip_operator_norm(np.transpose(kern, (2, 3, 1, 0)), (n, n), clip_to)
        np.testing.assert_allclose(ours, np.transpose(ref, (3, 2, 0, 1)), atol=1e-12)

    def test_nonconvergence_warns_and_input_untouched(self, env):
        rng = np.random.default_rng(1)
        k = rng.standard_normal((4, 3, 3, 3))
        kk = env.asarray(k)
        with pytest.warns(convsv.ClipWarning, match=r"stopped after 1 iterations"):
            convsv.clip(kk, 8, 0.5, iterations=1, tol=0.0)
        np.testing.assert_array_equal(env.to_numpy(kk), k)

    def test_tt_clip(self, env):
        rng = np.random.default_rng(3)
        t = tt.TTKernel(env.asarray(rng.standard_normal((6, 3))),
                        env.asarray(rng.standard_normal((4, 3, 3, 3))),
                        env.asarray(rng.standard_normal((4, 5))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", convsv.ClipWarning)
            c = tt.clip(t, 8, 1.0, 2)
        full = env.to_numpy(c.to_full())
        assert _svs(full, (8, 8), (2, 2), (1, 1), 1)[0] <= 1.0 + 1e-2
        assert float(env.to_numpy(tt.orthogonality_loss(c))) < 1e-25

    def test_inplace_variant(self):
        torch = pytest.importorskip("torch")
        p = torch.nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", convsv.ClipWarning)
            out = convsv.clip_(p, 8, 1.0)
        assert out is p
        assert float(convsv.operator_norm(p.detach(), 8)) <= 1.0 + 1e-2

    def test_bad_bounds(self, env):
        k = env.asarray(np.ones((2, 2, 3, 3)))
        with pytest.raises(ValueError, match=r"max_sv must be a positive number"):
            convsv.clip(k, 4, -1.0)
        with pytest.raises(ValueError, match=r"min_sv must be None or a number in \[0, max_sv"):
            convsv.clip(k, 4, 1.0, min_sv=2.0)
        with pytest.raises(ValueError, match=r"support must be one of"):
            convsv.clip(k, 4, 1.0, support="half")


def test_clip_progress_bar_shows_admm_iterations(env, capsys):
    k = env.asarray(np.random.default_rng(6).standard_normal((4, 4, 3, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", convsv.ClipWarning)
        quiet = env.to_numpy(convsv.clip(k, 8, 1.0, iterations=10))
        assert capsys.readouterr().err == ""
        loud = env.to_numpy(convsv.clip(k, 8, 1.0, iterations=10, progress=True))
    assert "ADMM iterations" in capsys.readouterr().err
    np.testing.assert_array_equal(loud, quiet)
