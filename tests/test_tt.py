"""TT / Tucker-2 reduction (Senderovich et al.) and Tucker rank adaptivity (TDLRT)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_array, dense_svd, tol, torch_dense
from hypothesis import given
from hypothesis import strategies as st

import convsv
import convsv.tt as tt
import convsv.tucker as tucker


def _full(k1: np.ndarray, k2: np.ndarray, k3: np.ndarray) -> np.ndarray:
    """Senderovich et al. eq. (4) written out: K[o,i,p] = sum K1[i,a] K2[b,a,p] K3[b,o]."""
    return np.einsum("ia,ba...,bo->oi...", k1, k2, k3)


def _tucker_full(core: np.ndarray, factors: list[np.ndarray]) -> np.ndarray:
    letters = "abcdefgh"[: core.ndim]
    spec = f"{letters}," + ",".join(f"{x.upper()}{x}" for x in letters) + "->" + letters.upper()
    return np.einsum(spec, core, *factors)


@st.composite
def tt_layers(draw):
    d = draw(st.sampled_from([1, 2, 3]))
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    r1, r2 = draw(st.integers(1, 4)), draw(st.integers(1, 4))  # may exceed channels
    k = tuple(draw(st.integers(1, 3 if d == 3 else 4)) for _ in range(d))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(d))
    n = tuple(s * draw(st.integers(1, 2 if d == 3 else 3)) for s in stride)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cores = (
        rng.standard_normal((c_in, r1)),
        rng.standard_normal((r2, r1, *k)),
        rng.standard_normal((r2, c_out)),
    )
    return cores, n, stride, draw(st.sampled_from(["float32", "float64"]))


class TestTTSingularValues:
    @given(case=tt_layers())
    def test_equals_dense_svd_of_the_full_kernel(self, env, case):
        cores, n, stride, dtype = case
        t = tt.TTKernel(*(env.asarray(c.astype(dtype)) for c in cores))
        sv = tt.singular_values(t, n, stride)
        full64 = _full(*(c.astype(dtype).astype(np.float64) for c in cores))
        ref = dense_svd(torch_dense(full64, n, stride, (1,) * len(n), 1, "circular"))
        rdt = getattr(env.xp, dtype)
        assert_array(env, sv, dtype=rdt, shape=ref.shape)
        scale = max(float(ref[0]), 1e-30)
        np.testing.assert_allclose(
            env.to_numpy(sv), ref, atol=tol(env.xp, rdt, scale * 10, ref.size)
        )

    @given(seed=st.integers(0, 2**32 - 1), r1=st.integers(1, 5), r2=st.integers(1, 6))
    def test_decompose_error_is_the_discarded_singular_values(self, env, seed, r1, r2):
        k = np.random.default_rng(seed).standard_normal((6, 5, 3, 2))
        s_in = np.linalg.svd(np.moveaxis(k, 1, 0).reshape(5, -1), compute_uv=False)
        s_out = np.linalg.svd(k.reshape(6, -1), compute_uv=False)
        t = tt.decompose(env.asarray(k), ranks=(r1, 6))  # only the input mode truncated
        err = np.linalg.norm(_full(*(env.to_numpy(c) for c in (t.k1, t.k2, t.k3))) - k)
        np.testing.assert_allclose(
            env.to_numpy(t.to_full()),
            _full(*(env.to_numpy(c) for c in (t.k1, t.k2, t.k3))),
            atol=1e-12,
        )
        np.testing.assert_allclose(err, np.sqrt((s_in[r1:] ** 2).sum()), atol=1e-10)
        t = tt.decompose(env.asarray(k), ranks=(r1, r2))
        err = np.linalg.norm(_full(*(env.to_numpy(c) for c in (t.k1, t.k2, t.k3))) - k)
        assert err <= np.sqrt((s_in[r1:] ** 2).sum() + (s_out[r2:] ** 2).sum()) + 1e-10
        assert float(env.to_numpy(tt.orthogonality_loss(t))) < 1e-28

    @given(seed=st.integers(0, 2**32 - 1), tau=st.floats(0.0, 0.9))
    def test_tolerance_rule_holds_and_ranks_are_minimal(self, env, seed, tau):
        rng = np.random.default_rng(seed)
        # a kernel with decaying channel spectra, so that tolerances matter
        k = np.einsum(
            "ia,ba...,bo->oi...",
            rng.standard_normal((6, 6)) * 0.5 ** np.arange(6),
            rng.standard_normal((6, 6, 3, 3)),
            rng.standard_normal((6, 6)),
        )
        t = tt.decompose(env.asarray(k), tol=tau)
        err = np.linalg.norm(_full(*(env.to_numpy(c) for c in (t.k1, t.k2, t.k3))) - k)
        assert err <= tau * np.linalg.norm(k) + 1e-10
        s_in = np.linalg.svd(np.moveaxis(k, 1, 0).reshape(6, -1), compute_uv=False)
        budget = tau**2 * np.linalg.norm(k) ** 2 / 2
        r1, _ = t.ranks
        assert r1 == 1 or (s_in[r1 - 1 :] ** 2).sum() > budget  # one less would break the rule

    def test_orthogonality_loss_is_positive_for_non_orthonormal_cores(self, env):
        rng = np.random.default_rng(0)
        t = tt.TTKernel(
            env.asarray(rng.standard_normal((4, 2))),
            env.asarray(rng.standard_normal((3, 2, 3, 3))),
            env.asarray(rng.standard_normal((3, 5))),
        )
        assert float(env.to_numpy(tt.orthogonality_loss([t, t]))) > 0.1

    def test_gradients_flow_under_torch(self):
        torch = pytest.importorskip("torch")
        g = torch.Generator().manual_seed(0)
        k1 = torch.randn(4, 2, dtype=torch.float64, generator=g, requires_grad=True)
        k2 = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
        k3 = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
        t = tt.TTKernel(k1, k2, k3)
        loss = tt.orthogonality_loss(t) + tt.singular_values(t, 4)[0]
        loss.backward()
        assert all(float(x.grad.abs().sum()) > 0 for x in (k1, k2, k3))
        assert torch.autograd.gradcheck(
            lambda a, b: tt.orthogonality_loss(tt.TTKernel(a, k2, b)), (k1, k3)
        )

    def test_bad_input(self, env):
        with pytest.raises(ValueError, match=r"TT ranks disagree"):
            tt.TTKernel(
                env.asarray(np.ones((4, 2))),
                env.asarray(np.ones((3, 3, 3, 3))),
                env.asarray(np.ones((3, 5))),
            )
        with pytest.raises(ValueError, match=r"exactly one of ranks"):
            tt.decompose(env.asarray(np.ones((4, 4, 3, 3))))
        with pytest.raises(ValueError, match=r"r1 <= c_in=4"):
            tt.decompose(env.asarray(np.ones((4, 4, 3, 3))), ranks=(5, 2))
        with pytest.raises(TypeError, match=r"tt_kernel must be a convsv.tt.TTKernel"):
            tt.singular_values(np.ones((4, 4, 3, 3)), 4)


class TestTucker:
    @given(seed=st.integers(0, 2**32 - 1), tau=st.floats(0.0, 0.9))
    def test_tolerance_and_reconstruction(self, env, seed, tau):
        rng = np.random.default_rng(seed)
        k = np.einsum(
            "abcd,oa,ib,hc,wd->oihw",
            rng.standard_normal((3, 3, 2, 2)),
            rng.standard_normal((6, 3)),
            rng.standard_normal((5, 3)),
            rng.standard_normal((3, 2)),
            rng.standard_normal((3, 2)),
        )
        k = k + 1e-3 * rng.standard_normal(k.shape)
        t = tucker.decompose(env.asarray(k), tol=tau)
        full = t.to_full()
        assert_array(env, full, dtype=env.xp.float64, shape=k.shape)
        ref = _tucker_full(env.to_numpy(t.core), [env.to_numpy(u) for u in t.factors])
        np.testing.assert_allclose(env.to_numpy(full), ref, atol=1e-12 * np.abs(k).max())
        assert np.linalg.norm(ref - k) <= tau * np.linalg.norm(k) + 1e-10
        if tau > 0.01:
            assert t.compression_ratio > 1.0
        budget = tau**2 * np.linalg.norm(k) ** 2 / 4
        for mode, r in enumerate(t.ranks):
            s = np.linalg.svd(np.moveaxis(k, mode, 0).reshape(k.shape[mode], -1), compute_uv=False)
            assert r == 1 or (s[r - 1 :] ** 2).sum() > budget

    @pytest.mark.parametrize("scale", [1e-200, 1e160, 1e200])
    def test_tol_ranks_do_not_depend_on_the_scale(self, env, scale):
        # (helper-36) the squared singular values under/overflowed: rank 1 everywhere, or
        # an OverflowError
        k = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
        for mod in (tt, tucker):
            t = mod.decompose(env.asarray(k * scale), tol=1e-6)
            assert t.ranks == mod.decompose(env.asarray(k), tol=1e-6).ranks
            full = env.to_numpy(t.to_full()) / scale
            assert np.linalg.norm(full - k) <= 1e-6 * np.linalg.norm(k)

    def test_ranks_name_the_mode_they_do_not_fit(self, env):
        k = env.asarray(np.ones((6, 5, 3, 3)))
        with pytest.raises(ValueError, match=r"one per mode of the kernel, oihw order"):
            tucker.decompose(k, ranks=(2, 2))
        with pytest.raises(ValueError, match=r"ranks\[2\]=4 exceeds mode 2's size 3"):
            tucker.decompose(k, ranks=(3, 3, 4, 2))
        # an int is a cap: "this rank where the mode allows"
        assert tucker.decompose(k, ranks=4).ranks == (4, 4, 3, 3)

    def test_rank_adjustment_step_augments_and_truncates(self, env):
        rng = np.random.default_rng(2)
        k = rng.standard_normal((6, 5, 3, 3))
        t = tucker.decompose(env.asarray(k), ranks=(3, 3, 2, 2))
        new = [
            env.asarray(env.to_numpy(u) + 0.3 * rng.standard_normal(tuple(u.shape)))
            for u in t.factors
        ]
        same = tucker.rank_adjustment_step(t, new, tol=1e-10)
        assert same.ranks == t.ranks  # the represented tensor is unchanged
        np.testing.assert_allclose(
            env.to_numpy(same.to_full()), env.to_numpy(t.to_full()), atol=1e-10
        )
        for u in same.factors:
            un = env.to_numpy(u)
            np.testing.assert_allclose(un.T @ un, np.eye(un.shape[1]), atol=1e-12)
        coarse = tucker.rank_adjustment_step(t, new, tol=0.5)
        assert all(a <= b for a, b in zip(coarse.ranks, t.ranks))
        assert (
            np.linalg.norm(env.to_numpy(coarse.to_full() - t.to_full()))
            <= 0.5 * np.linalg.norm(env.to_numpy(t.to_full())) + 1e-10
        )


def test_tt_compression_counts():
    t = tt.decompose(np.random.default_rng(0).standard_normal((16, 8, 3, 3)), ranks=(4, 8))
    assert t.n_params == 8 * 4 + 4 * 8 * 9 + 8 * 16
    assert t.compression_ratio == pytest.approx(16 * 8 * 9 / t.n_params)
    assert convsv.tt.TTKernel is tt.TTKernel


def test_to_full_in_both_layouts(env):
    # the full kernel against eq. (4) written out, in PyTorch and in HWIO layout
    rng = np.random.default_rng(2)
    cores = (
        rng.standard_normal((4, 2)),
        rng.standard_normal((3, 2, 3, 2)),
        rng.standard_normal((3, 5)),
    )
    t = tt.TTKernel(*(env.asarray(c) for c in cores))
    ref = _full(*cores)  # (c_out, c_in, 3, 2)
    np.testing.assert_allclose(env.to_numpy(t.to_full()), ref, rtol=0, atol=1e-13)
    np.testing.assert_allclose(
        env.to_numpy(t.to_full("hwio")), ref.transpose(2, 3, 1, 0), rtol=0, atol=1e-13
    )
    with pytest.raises(ValueError, match=r"layout must be one of 'oihw', 'hwio', got 'ohwi'"):
        t.to_full("ohwi")


def test_decompose_refuses_tolerances_outside_0_1_and_complex_kernels(env):
    k = env.asarray(np.random.default_rng(3).standard_normal((4, 3, 3, 3)))
    for bad in (1.0, -0.1, 1.5):  # [0, 1): tol=1 would discard everything
        with pytest.raises(ValueError, match=r"tol \(a relative tolerance\) must be in \[0, 1\)"):
            tt.decompose(k, tol=bad)
    assert tt.decompose(k, tol=0.0).ranks == (3, 4)  # the closed end: nothing discarded
    kc = env.asarray(np.ones((4, 3, 3, 3)) + 1j)
    with pytest.raises((TypeError, ValueError), match="complex"):
        tt.decompose(kc, ranks=(2, 2))


def test_orthogonality_loss_of_several_layers_is_eq_11(env):
    # eq. (11) written out for two non-orthonormal layers (different ranks), and its errors
    rng = np.random.default_rng(4)
    shapes = [((5, 2), (3, 2, 3, 3), (3, 4)), ((3, 3), (1, 3, 1, 1), (1, 6))]
    cores = [[rng.standard_normal(s) for s in layer] for layer in shapes]
    num = sum(
        np.sum((k1.T @ k1 - np.eye(k1.shape[1])) ** 2)
        + np.sum((k3 @ k3.T - np.eye(k3.shape[0])) ** 2)
        for k1, _, k3 in cores
    )
    want = num / (2**2 + 3**2 + 3**2 + 1**2)
    layers = [tt.TTKernel(*(env.asarray(c) for c in layer)) for layer in cores]
    got = tt.orthogonality_loss(layers)
    assert_array(env, got, dtype=env.xp.float64, shape=())
    np.testing.assert_allclose(float(got), want, rtol=1e-13)
    k1, _, k3 = cores[1]  # one layer alone: r1 = 3, r2 = 1
    one = (np.sum((k1.T @ k1 - np.eye(3)) ** 2) + np.sum((k3 @ k3.T - 1) ** 2)) / 10
    np.testing.assert_allclose(float(tt.orthogonality_loss(layers[1])), one, rtol=1e-13)
    for bad in ([], [layers[0], "k"]):
        with pytest.raises(TypeError, match="non-empty sequence"):
            tt.orthogonality_loss(bad)


def test_singular_values_pass_dilation_and_options_on(env):
    # dilation against the dense SVD of the full kernel; method, solver and memory_limit
    # reach convsv.singular_values (their errors come back)
    rng = np.random.default_rng(6)
    cores = (
        rng.standard_normal((3, 2)),
        rng.standard_normal((2, 2, 3, 2)),
        rng.standard_normal((2, 4)),
    )
    t = tt.TTKernel(*(env.asarray(c) for c in cores))
    ref = dense_svd(torch_dense(_full(*cores), (8, 6), (2, 1), (2, 3), 1, "circular"))
    sv = tt.singular_values(t, (8, 6), (2, 1), dilation=(2, 3))
    np.testing.assert_allclose(env.to_numpy(sv), ref, rtol=0, atol=64e-16 * ref[0])
    ref1 = dense_svd(torch_dense(_full(*cores), (6, 6), (1, 1), (1, 1), 1, "circular"))
    np.testing.assert_allclose(
        env.to_numpy(tt.singular_values(t, 6)), ref1, rtol=0, atol=64e-16 * ref1[0]
    )  # the default stride is 1
    with pytest.raises(ValueError, match="method must be one of"):
        tt.singular_values(t, 8, method="bogus")
    with pytest.raises(ValueError, match="solver must be one of"):
        tt.singular_values(t, 8, solver="bogus")
    with pytest.raises(ValueError, match="memory_limit=1000 bytes"):
        tt.singular_values(t, 64, memory_limit=1000)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_ttkernel_refuses_cores_of_the_wrong_rank(env, which):
    good = [np.ones((3, 2)), np.ones((2, 2, 3, 3)), np.ones((2, 4))]
    bad = [np.ones((3, 2, 1)), np.ones((2, 2)), np.ones((2, 4, 1))][which]
    cores = [env.asarray(bad if i == which else c) for i, c in enumerate(good)]
    with pytest.raises(ValueError, match=r"TTKernel needs k1 \(c_in, r1\)"):
        tt.TTKernel(*cores)
