"""Non-periodic layers through the Krylov solver (issue 11): operator_norm and svd against
the dense SVD of the torch MODULE's matrix (tests/test_padding.py's independent reference).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from conftest import Env
from helpers import assert_array, dense_svd, torch_dense
from hypothesis import assume, given, settings
from test_padding import TorchLayer, geometry_of, module_dense, torch_layers

import convsv
from convsv.real_layers import KrylovNormInfo, KrylovWarning


def _eps(dtype: str) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def _single(dtype: str) -> bool:
    return dtype in ("float32", "complex64")


def _nonperiodic(layer: TorchLayer) -> bool:
    return not geometry_of(layer).exact_periodic


def _kernel(env: Env, layer: TorchLayer):
    return env.asarray(layer.kernel.astype(layer.dtype))


def _rdt(env: Env, dtype: str):
    return env.xp.float32 if _single(dtype) else env.xp.float64


# explicit layers with >= 16 x 16 blocks, groups, odd sizes with strides, every mode
BIG = [
    TorchLayer(
        np.random.default_rng(1).standard_normal((16, 16, 3, 3)),
        (9, 7),
        (2, 2),
        (1, 1),
        1,
        1,
        "zeros",
        False,
        (0, 0),
        "float64",
    ),
    TorchLayer(
        np.random.default_rng(2).standard_normal((24, 8, 3, 3)),
        (6, 7),
        (1, 2),
        (1, 1),
        2,
        (1, 2),
        "reflect",
        False,
        (0, 0),
        "float32",
    ),
    TorchLayer(
        np.random.default_rng(3).standard_normal((16, 12, 3)),
        (13,),
        (3,),
        (2,),
        1,
        2,
        "replicate",
        False,
        (0,),
        "float64",
    ),
    TorchLayer(
        np.random.default_rng(4).standard_normal((16, 16, 3, 3)),
        (5, 6),
        (2, 2),
        (1, 1),
        1,
        1,
        "zeros",
        True,
        (1, 0),
        "float64",
    ),
    TorchLayer(
        np.random.default_rng(5).standard_normal((8, 8, 3, 3, 3)),
        (4, 3, 4),
        (1, 1, 1),
        (1, 1, 1),
        1,
        1,
        "zeros",
        False,
        (0, 0, 0),
        "complex128",
    ),
]


def _check_norm(env: Env, layer: TorchLayer, tol: float | None) -> KrylovNormInfo:
    ref = dense_svd(module_dense(layer))
    value, info = convsv.operator_norm(
        _kernel(env, layer), layer.n, layer.stride, tol=tol, full_output=True, **layer.kwargs()
    )
    assert_array(env, value, dtype=_rdt(env, layer.dtype), shape=())
    assert info.method == "krylov"
    assert info.converged
    eps = _eps(layer.dtype)
    t = math.sqrt(eps) if tol is None else tol
    got = float(env.to_numpy(value))
    # the Ritz value is within its residual (<= tol * value) of a singular value, and
    # below the norm by interlacing (rounding of the value itself aside)
    assert abs(got - ref[0]) <= t * ref[0] + 8 * eps * ref[0], (got, ref[0])
    # a PROMISED BOUND ALWAYS HOLDS
    assert info.lower <= ref[0] <= info.upper, (info.lower, ref[0], info.upper)
    # lower: the Ritz vector's ||A v|| gives up no more than the residual and rounding
    assert info.lower >= ref[0] * (1 - t) - 1e-10 * ref[0]
    return info


class TestOperatorNorm:
    @given(layer=torch_layers(max_entries=10_000))
    def test_against_dense_svd(self, env: Env, layer: TorchLayer) -> None:
        assume(_nonperiodic(layer))
        _check_norm(env, layer, None)

    @pytest.mark.parametrize(
        "layer",
        BIG,
        ids=lambda L: f"{L.padding_mode}-{L.dtype}-{'T' if L.transposed else 'C'}{len(L.n)}d",
    )
    def test_big_blocks(self, env: Env, layer: TorchLayer) -> None:
        _check_norm(env, layer, None)

    @pytest.mark.parametrize("tol", [1e-3, 1e-12])
    def test_tol_is_honoured(self, env: Env, tol: float) -> None:
        layer = BIG[0]
        info = _check_norm(env, layer, tol)
        assert info.residual <= tol * info.lower * (1 + 1e-6)
        assert info.tol == tol

    @pytest.mark.parametrize("layer", [BIG[0], BIG[4]], ids=["float64", "complex128"])
    @pytest.mark.parametrize("tol", [1e-3, None])
    def test_single_precision_warmup(self, env: Env, layer: TorchLayer, tol: float | None) -> None:
        # double-precision layers start from a single-precision Ritz vector; the value and
        # its certificate still come from (and are as accurate as) the double-precision run
        info = _check_norm(env, layer, tol)
        assert info.single_steps > 0
        if tol is not None:  # the start already has the residual: one short basis verifies
            assert info.iterations <= 10

    def test_huge_kernel_is_scaled_and_still_warms_up(self, env: Env) -> None:
        # the norm (~1e41) would overflow float32: the run works on the kernel scaled by a
        # power of two (exact), so the single-precision warm-up is safe and runs
        layer = BIG[0]
        big = dataclasses.replace(layer, kernel=layer.kernel * 1e40)
        info = _check_norm(env, big, None)
        assert info.single_steps > 0

    def test_memory_limit_before_any_work(self, env: Env, monkeypatch) -> None:
        import convsv.real_layers as rl

        def no_warmup(*args, **kwargs):
            msg = "the warm-up ran before the memory check"
            raise AssertionError(msg)

        monkeypatch.setattr(rl, "_warmup", no_warmup)
        layer = BIG[0]
        with pytest.raises(ValueError, match="Krylov bases"):
            convsv.operator_norm(
                _kernel(env, layer), layer.n, layer.stride, memory_limit=10_000, **layer.kwargs()
            )

    @pytest.mark.parametrize("maxiter", ["100", 100.0, 0])
    def test_bad_maxiter(self, env: Env, maxiter) -> None:
        layer = BIG[0]
        with pytest.raises(ValueError, match=f"maxiter must be an int.*{maxiter!r}"):
            convsv.operator_norm(
                _kernel(env, layer), layer.n, layer.stride, maxiter=maxiter, **layer.kwargs()
            )

    def test_no_warmup_in_single_precision(self, env: Env) -> None:
        assert _check_norm(env, BIG[1], None).single_steps == 0

    def test_maxiter_warns(self, env: Env) -> None:
        layer = BIG[0]
        with pytest.warns(KrylovWarning, match="maxiter"):
            _, info = convsv.operator_norm(
                _kernel(env, layer),
                layer.n,
                layer.stride,
                tol=1e-15,
                maxiter=20,
                full_output=True,
                **layer.kwargs(),
            )
        assert not info.converged
        ref = dense_svd(module_dense(layer))[0]
        assert info.lower <= ref <= info.upper  # the bracket holds regardless

    def test_bad_tol(self, env: Env) -> None:
        layer = BIG[0]
        with pytest.raises(ValueError, match="tol"):
            convsv.operator_norm(
                _kernel(env, layer), layer.n, layer.stride, tol=-1.0, **layer.kwargs()
            )

    def test_dense_method_still_available(self, env: Env) -> None:
        layer = BIG[2]
        ref = dense_svd(module_dense(layer))[0]
        value = convsv.operator_norm(
            _kernel(env, layer), layer.n, layer.stride, method="dense", **layer.kwargs()
        )
        assert abs(float(env.to_numpy(value)) - ref) <= 64 * _eps(layer.dtype) * ref


class TestSvd:
    @settings(max_examples=12)  # the norm test above covers the layer space more widely
    @given(layer=torch_layers(max_entries=6_000))
    def test_top_triplets(self, env: Env, layer: TorchLayer) -> None:
        assume(_nonperiodic(layer))
        a = module_dense(layer)
        ref = dense_svd(a)
        k = min(3, ref.size)
        _check_svd(env, layer, a, ref, k, "largest")

    @pytest.mark.parametrize(
        "layer", BIG[:4], ids=lambda L: f"{L.padding_mode}-{L.dtype}-{'T' if L.transposed else 'C'}"
    )
    def test_big_blocks(self, env: Env, layer: TorchLayer) -> None:
        a = module_dense(layer)
        _check_svd(env, layer, a, dense_svd(a), 4, "largest")

    # BIG[1] is left out: its bottom is a float32 cluster of exact zeros (rank-deficient
    # grouped reflect layer), where "smallest" stagnates (krylov module docstring)
    @pytest.mark.parametrize(
        "layer",
        [BIG[0], BIG[2], BIG[3]],
        ids=lambda L: f"{L.padding_mode}-{'T' if L.transposed else 'C'}",
    )
    def test_smallest(self, env: Env, layer: TorchLayer) -> None:
        a = module_dense(layer)
        _check_svd(env, layer, a, dense_svd(a), 4, "smallest")


def _check_svd(
    env: Env, layer: TorchLayer, a: np.ndarray, ref: np.ndarray, k: int, which: str
) -> None:
    u, s, v = convsv.svd(
        _kernel(env, layer), layer.n, layer.stride, k=k, which=which, **layer.kwargs()
    )
    eps = _eps(layer.dtype)
    tol = math.sqrt(eps)
    dt = getattr(env.xp, layer.dtype)
    rows, cols = a.shape
    assert_array(env, s, dtype=_rdt(env, layer.dtype), shape=(k,))
    assert u.dtype == dt
    assert v.dtype == dt
    assert math.prod(u.shape) == k * rows
    assert math.prod(v.shape) == k * cols
    got = env.to_numpy(s).astype(np.float64)
    want = ref[:k] if which == "largest" else ref[ref.size - k :]
    assert np.all(np.diff(got) <= 0)
    smax = ref[0]
    assert np.abs(got - want).max() <= tol * smax + 8 * eps * smax * math.sqrt(k)
    un = env.to_numpy(u).reshape(k, rows).astype(np.complex128)
    vn = env.to_numpy(v).reshape(k, cols).astype(np.complex128)
    # the module's matrix maps V[i] to S[i] U[i] (and back, up to the residual)
    r = np.linalg.norm(vn @ a.T - got[:, None] * un, axis=1)
    assert r.max() <= (tol + 16 * eps) * smax
    r2 = np.linalg.norm(un @ a.conj() - got[:, None] * vn, axis=1)
    assert r2.max() <= (tol + 16 * eps) * smax
    assert np.abs(un.conj() @ un.T - np.eye(k)).max() <= 64 * eps
    assert np.abs(vn.conj() @ vn.T - np.eye(k)).max() <= 64 * eps


def _module_top_grad(layer: TorchLayer) -> tuple[float, np.ndarray]:
    """sigma_max of the module's dense matrix and its gradient in the kernel, by torch's
    autograd through the module applied to basis inputs and ``svdvals`` (independent)."""
    import torch

    m = layer.module().double()
    c_in = layer.c_in()
    cols = c_in * math.prod(layer.n)
    eye = torch.eye(cols, dtype=torch.float64).reshape(cols, c_in, *layer.n)
    top = torch.linalg.svdvals(m(eye).reshape(cols, -1))[0]
    top.backward()
    return float(top.detach()), m.weight.grad.numpy()


class TestGradient:
    """The Krylov path's value carries the derivative of sigma_max (u v^H of the top pair)."""

    @pytest.mark.parametrize(
        "layer", [BIG[0], BIG[2], BIG[3]], ids=["s2", "replicate", "transposed"]
    )
    def test_operator_norm_gradient_is_the_modules(self, env: Env, layer: TorchLayer) -> None:
        if env.backend.value not in ("torch", "torch-cuda"):
            pytest.skip("autograd: torch only")
        import torch

        top, ref = _module_top_grad(layer)
        w = torch.tensor(layer.kernel, dtype=torch.float64, device=env.device, requires_grad=True)
        # the vectors are good to about the residual tolerance (the value to its square)
        value = convsv.operator_norm(w, layer.n, layer.stride, tol=1e-12, **layer.kwargs())
        assert value.requires_grad
        value.backward()
        assert float(value.detach()) == pytest.approx(top, rel=1e-12)
        got = w.grad.cpu().numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * np.abs(ref).max())

    def test_svd_values_carry_their_gradients(self, env: Env) -> None:
        if env.backend.value not in ("torch", "torch-cuda"):
            pytest.skip("autograd: torch only")
        import torch

        layer = BIG[0]
        w = torch.tensor(layer.kernel, dtype=torch.float64, device=env.device, requires_grad=True)
        _, s, _ = convsv.svd(w, layer.n, layer.stride, k=2, **layer.kwargs())
        s[0].backward()
        _, ref = _module_top_grad(layer)
        # default tol sqrt(eps): the vectors, hence the gradient, to ~1e-8
        np.testing.assert_allclose(w.grad.cpu().numpy(), ref, rtol=0, atol=1e-7 * np.abs(ref).max())


class TestReviewFindings:
    """helper-31's review: the Krylov path's options (each fails without its fix)."""

    def test_maxiter_bounds_the_first_basis(self, env: Env) -> None:
        layer = BIG[0]
        with pytest.warns(KrylovWarning, match=r"after 5 steps.*a larger maxiter"):
            convsv.svd(_kernel(env, layer), layer.n, layer.stride, k=2, maxiter=5, **layer.kwargs())
        with pytest.warns(KrylovWarning):
            _, info = convsv.operator_norm(
                _kernel(env, layer),
                layer.n,
                layer.stride,
                maxiter=4,
                full_output=True,
                **layer.kwargs(),
            )
        assert info.iterations <= 4

    def test_krylov_on_a_periodic_layer_is_honoured(self, env: Env) -> None:
        kern = np.random.default_rng(7).standard_normal((4, 3, 3, 3))
        ref = dense_svd(torch_dense(kern, (6, 6), (1, 1), (1, 1), 1, "circular"))
        value, info = convsv.operator_norm(env.asarray(kern), 6, method="krylov", full_output=True)
        assert info.method == "krylov"
        assert float(env.to_numpy(value)) == pytest.approx(ref[0], rel=1e-12)
        assert info.lower <= ref[0] <= info.upper

    def test_memory_limit_strings_everywhere(self, env: Env) -> None:
        kern = env.asarray(np.random.default_rng(8).standard_normal((3, 3, 3, 3)))
        convsv.clip(kern, 6, 1.0, memory_limit="100MB")
        convsv.singular_value_bounds(kern, 6, padding=1, memory_limit="100MB")
        convsv.svd(kern, 6, k=2, memory_limit="100MiB")
        with pytest.raises(ValueError, match=r"memory_limit must be .* got 'lots'"):
            convsv.clip(kern, 6, 1.0, memory_limit="lots")
        with pytest.raises(TypeError, match=r"full_output must be True or False, got 1"):
            convsv.clip(kern, 6, 1.0, full_output=1)


class TestExtremeScales:
    """helper-35: the Krylov path at kernels of 1e-300..1e300 (float64), 1e+-19.. (float32)."""

    @pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1e200, 1e300])
    def test_values_and_brackets_scale_exactly(self, env: Env, scale: float) -> None:
        layer = BIG[0]
        ref = dense_svd(module_dense(layer))[0]
        k = env.asarray(layer.kernel * scale)
        value, info = convsv.operator_norm(
            k, layer.n, layer.stride, full_output=True, **layer.kwargs()
        )
        assert float(env.to_numpy(value)) / scale == pytest.approx(ref, rel=1e-12)
        assert info.lower / scale <= ref * (1 + 1e-15) <= info.upper / scale * (1 + 1e-15)
        _, s, _ = convsv.svd(k, layer.n, layer.stride, k=1, **layer.kwargs())
        assert float(env.to_numpy(s)[0]) / scale == pytest.approx(ref, rel=1e-12)

    @pytest.mark.parametrize("scale", [1e-22, 1e19, 1e30])
    def test_single_precision_at_the_ends_of_its_range(self, env: Env, scale: float) -> None:
        layer = dataclasses.replace(BIG[0], dtype="float32")
        k32 = (layer.kernel * scale).astype(np.float32)
        # the float32 kernel's own layer, in float64 (exact products of its entries)
        ref = dense_svd(
            module_dense(dataclasses.replace(layer, kernel=k32.astype(np.float64) / scale))
        )[0]
        value, info = convsv.operator_norm(
            env.asarray(k32), layer.n, layer.stride, full_output=True, **layer.kwargs()
        )
        assert float(env.to_numpy(value)) / scale == pytest.approx(ref, rel=1e-5)
        assert info.lower / scale <= ref * (1 + 1e-12)

    def test_bounds_and_clip_at_huge_entries(self, env: Env) -> None:
        kern = np.random.default_rng(2).standard_normal((3, 2, 3, 3))
        ref = dense_svd(torch_dense(kern, (6, 6), (1, 1), (1, 1), 1, "circular"))
        for scale in (1e154, 1e300):
            lo, up = convsv.singular_value_bounds(env.asarray(kern * scale), 6)
            lo, up = env.to_numpy(lo) / scale, env.to_numpy(up) / scale
            assert np.all(lo <= ref * (1 + 1e-15))
            assert np.all(ref <= up * (1 + 1e-15))
            assert up[0] <= ref[0] * (1 + 1e-10)  # a bracket, not [0, inf]
            for support in ("full", "kernel"):
                out = convsv.clip(
                    env.asarray(kern * scale), 6, 0.5 * ref[0] * scale, support=support
                )
                s = dense_svd(
                    torch_dense(env.to_numpy(out) / scale, (6, 6), (1, 1), (1, 1), 1, "circular")
                )
                assert 0.5 * ref[0] * (1 - 1e-8) <= s[0] <= 0.5 * ref[0]
