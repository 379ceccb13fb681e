"""Certified operator_norm of periodic layers (convsv.norm) against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_array, dense_svd, torch_dense
from hypothesis import given
from hypothesis import strategies as st
from strategies import layers

import convsv


def _real(xp, dtype):
    return xp.float32 if dtype in ("float32", "complex64") else xp.float64


def _check_certificate(info, true, value, rtol):
    # the promise: lower <= true <= upper, width <= max(rtol, floor + rtol/2) * value (+ ulps)
    assert info.lower <= true <= info.upper, (info, true)
    assert info.upper - info.lower <= max(rtol, info.floor + rtol / 2) * value * (1 + 1e-12), info
    assert info.method == "gram-cholesky"
    assert 1 <= info.blocks_exact <= info.blocks


class TestAgainstDense:
    @given(layer=layers(divisible=True, max_entries=40_000))
    def test_interval_holds_and_value_is_exact(self, env, layer):
        k = env.asarray(layer.cast())
        value, info = convsv.operator_norm(
            k, layer.n, layer.stride, dilation=layer.dilation, groups=layer.groups, full_output=True
        )
        rdt = _real(env.xp, layer.dtype)
        assert_array(env, value, dtype=rdt, shape=())
        # the reference uses the kernel's values as cast (float32 values are exact in f64)
        cast = layer.cast().astype(np.complex128 if "complex" in layer.dtype else np.float64)
        true = dense_svd(
            torch_dense(cast, layer.n, layer.stride, layer.dilation, layer.groups, "circular")
        )[0]
        rtol = 1e-6 if rdt == env.xp.float32 else 1e-12
        _check_certificate(info, true, float(env.to_numpy(value)), rtol)
        # measured worst case ~2 eps s_max (the block SVD) plus the float32 rounding
        eps = float(np.finfo(np.float32 if rdt == env.xp.float32 else np.float64).eps)
        assert abs(float(env.to_numpy(value)) - true) <= 8 * eps * true + 1e-300


def _block_reference(kernel, n, stride=1, groups=1):
    """Largest singular value over the symbol blocks, from NumPy's FFT of the padded
    polyphase kernel (written here, independent of convsv's evaluation)."""
    c_out, c_in_g, kh, kw = kernel.shape
    s = stride
    m = n // s
    best = 0.0
    for g in range(groups):
        kg = kernel[g * (c_out // groups) : (g + 1) * (c_out // groups)]
        poly = np.zeros((c_out // groups, c_in_g, s, s, m, m))
        for p in range(kh):
            for q in range(kw):
                poly[:, :, p % s, q % s, (p // s) % m, (q // s) % m] += kg[:, :, p, q]
        sym = np.fft.ifft2(poly, axes=(-2, -1)) * m * m  # e^{+i theta a}
        blocks = np.moveaxis(sym.reshape(c_out // groups, c_in_g * s * s, m, m), (2, 3), (0, 1))
        best = max(best, float(np.linalg.svd(blocks, compute_uv=False).max()))
    return best


@pytest.mark.parametrize(
    ("c_out", "c_in", "n", "stride", "groups"),
    [(64, 64, 6, 1, 1), (48, 16, 8, 2, 1), (70, 70, 5, 1, 2), (16, 80, 6, 1, 1)],
)
def test_large_blocks(env, c_out, c_in, n, stride, groups):
    # >= 64 x 64 blocks (or 64 wide after the polyphase split), odd grids, groups
    rng = np.random.default_rng(c_out + n)
    kern = rng.standard_normal((c_out, c_in // groups, 3, 3))
    value, info = convsv.operator_norm(
        env.asarray(kern), n, stride, groups=groups, full_output=True
    )
    true = _block_reference(kern, n, stride, groups)
    _check_certificate(info, true, float(env.to_numpy(value)), 1e-12)
    assert abs(float(env.to_numpy(value)) - true) <= 8 * np.finfo(np.float64).eps * true


def _smooth_kernel(c, rng):
    # trained-like: strongly low-pass taps, so the top block is near theta = 0
    base = rng.standard_normal((c, c, 1, 1))
    taps = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])[None, None]
    return base * taps + 0.05 * rng.standard_normal((c, c, 3, 3))


def test_pruning_skips_blocks(env):
    kern = _smooth_kernel(24, np.random.default_rng(1))
    value, info = convsv.operator_norm(env.asarray(kern), 16, full_output=True)
    true = _block_reference(kern, 16)
    _check_certificate(info, true, float(env.to_numpy(value)), 1e-12)
    # one block of each conjugate pair {w, -w}: (16^2 + 4 self-conjugate) / 2
    assert info.blocks == (16 * 16 + 4) // 2
    # far fewer blocks solved than exist, and most certified by the free trace bound
    assert info.blocks_exact <= 12
    assert info.blocks_cholesky < info.blocks // 2


@pytest.mark.parametrize("twin", [0, 3])
def test_two_blocks_within_1e14(env, twin):
    # four groups with the same kernel, one scaled by 1 + 1e-14: the top blocks tie to
    # 45 ulps (no ranking can order them); the larger one must be returned, not merely
    # one inside the certified interval
    rng = np.random.default_rng(7)
    quarter = rng.standard_normal((12, 12, 3, 3))
    scale = [1.0] * 4
    scale[twin] = 1.0 + 1e-14
    kern = np.concatenate([quarter * f for f in scale])
    value, info = convsv.operator_norm(env.asarray(kern), 8, groups=4, full_output=True)
    true = _block_reference(kern, 8, groups=4)
    _check_certificate(info, true, float(env.to_numpy(value)), 1e-12)
    assert info.group == twin
    assert abs(float(env.to_numpy(value)) - true) <= 4 * np.finfo(np.float64).eps * true


def test_orthogonal_layer(env):
    # P(theta) = Q + (I - Q) e^{i theta_2} is unitary for a projection Q: every singular
    # value is 1, the worst case for pruning
    rng = np.random.default_rng(3)
    u = np.linalg.qr(rng.standard_normal((32, 32)))[0][:, :13]
    q = u @ u.T
    kern = np.zeros((32, 32, 1, 2))
    kern[:, :, 0, 0], kern[:, :, 0, 1] = q, np.eye(32) - q
    value, info = convsv.operator_norm(env.asarray(kern), 12, full_output=True)
    _check_certificate(info, 1.0, float(env.to_numpy(value)), 1e-12)
    assert abs(float(env.to_numpy(value)) - 1.0) <= 8 * np.finfo(np.float64).eps


def test_orthogonal_layer_needs_no_factorisation(monkeypatch):
    # an isometric block's Gram matrix is I to rounding: mu + ||G - mu I||_F with mu the
    # mean eigenvalue settles it in O(r^2), so no block of an orthogonal layer needs a
    # Cholesky factorisation (r^3) at the default rtol
    import convsv.norm as norm_module

    factored = []
    real = norm_module.cholesky_succeeds

    def spy(a, xp):
        factored.append(int(a.shape[0]))
        return real(a, xp)

    monkeypatch.setattr(norm_module, "cholesky_succeeds", spy)
    u = np.linalg.qr(np.random.default_rng(3).standard_normal((32, 32)))[0][:, :13]
    kern = np.zeros((32, 32, 1, 2))
    kern[:, :, 0, 0], kern[:, :, 0, 1] = u @ u.T, np.eye(32) - u @ u.T
    _, info = convsv.operator_norm(kern, 12, full_output=True)
    assert factored == []
    assert info.blocks_cholesky == info.blocks  # all tested beyond the trace bound
    assert info.lower <= 1.0 <= info.upper


@given(rtol=st.sampled_from([1e-3, 1e-6, 1e-9]), seed=st.integers(0, 2**16))
def test_loose_rtol_still_proven(env, rtol, seed):
    kern = _smooth_kernel(8, np.random.default_rng(seed))
    value, info = convsv.operator_norm(env.asarray(kern), 8, rtol=rtol, full_output=True)
    true = _block_reference(kern, 8)
    _check_certificate(info, true, float(env.to_numpy(value)), rtol)
    if rtol == 1e-3:  # the loose target is used, not the floor
        assert info.upper - info.lower > 1e-6 * true


def test_float32_interval_is_proven_for_the_float32_values(env):
    rng = np.random.default_rng(5)
    kern = rng.standard_normal((40, 20, 3, 3)).astype(np.float32)
    value, info = convsv.operator_norm(env.asarray(kern), 8, 2, full_output=True)
    assert_array(env, value, dtype=env.xp.float32, shape=())
    true = _block_reference(kern.astype(np.float64), 8, 2)
    _check_certificate(info, true, float(env.to_numpy(value)), 1e-6)
    assert abs(float(env.to_numpy(value)) - true) <= np.finfo(np.float32).eps * true


def test_memory_limit_chunks_give_the_same_certificate(env):
    rng = np.random.default_rng(9)
    kern = rng.standard_normal((16, 16, 3, 3))
    a, ia = convsv.operator_norm(env.asarray(kern), 8, full_output=True)
    b, ib = convsv.operator_norm(env.asarray(kern), 8, full_output=True, memory_limit=2**17)
    true = _block_reference(kern, 8)
    for value, info in ((a, ia), (b, ib)):
        _check_certificate(info, true, float(env.to_numpy(value)), 1e-12)
        assert abs(float(env.to_numpy(value)) - true) <= 8 * np.finfo(np.float64).eps * true


def test_arguments_are_checked(env):
    k = env.asarray(np.ones((2, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"rtol must be a real number in \[0, 1\) or None, got -1"):
        convsv.operator_norm(k, 8, rtol=-1)
    with pytest.raises(TypeError, match=r"full_output must be True or False, got 1"):
        convsv.operator_norm(k, 8, full_output=1)
    with pytest.raises(ValueError, match=r"full_output=True needs a certified path"):
        convsv.operator_norm(k, 8, padding="zeros", method="dense", full_output=True)
    with pytest.raises(ValueError, match=r"full_output=True needs a certified path"):
        convsv.operator_norm(k, 8, method="fft", full_output=True)
    # rtol accepts NumPy scalars
    convsv.operator_norm(k, 8, rtol=np.float32(1e-3))


def test_winning_frequency_of_a_complex_tall_layer(env):
    # c_out > c_in: the Gram block lives on the input side (P^H P at -theta); for a
    # complex kernel P(theta) and P(-theta) differ, so the reported frequency must be
    # the block that holds the norm
    rng = np.random.default_rng(13)
    kern = rng.standard_normal((9, 3, 3, 3)) + 1j * rng.standard_normal((9, 3, 3, 3))
    value, info = convsv.operator_norm(env.asarray(kern), 6, full_output=True)
    m = 6
    poly = np.zeros((9, 3, m, m), dtype=complex)
    for p in range(3):
        for q in range(3):
            poly[:, :, p, q] += kern[:, :, p, q]
    sym = np.fft.ifft2(poly, axes=(-2, -1)) * m * m  # e^{+i theta a}
    top = np.linalg.svd(np.moveaxis(sym, (2, 3), (0, 1)), compute_uv=False)[..., 0]
    true = top.max()
    _check_certificate(info, true, float(env.to_numpy(value)), 1e-12)
    assert abs(top[info.frequency] - true) <= 8 * np.finfo(np.float64).eps * true


@pytest.mark.parametrize("scale", [0.0, 1e-300, 1e150, 1e300])
def test_extreme_scales(env, scale):
    # Gram blocks square the kernel: without the power-of-two rescaling they would
    # underflow or overflow long before the singular values do
    rng = np.random.default_rng(11)
    kern = rng.standard_normal((6, 5, 3, 3))
    true = _block_reference(kern, 8) * scale
    value, info = convsv.operator_norm(env.asarray(kern * scale), 8, full_output=True)
    assert info.lower <= true <= info.upper
    assert abs(float(env.to_numpy(value)) - true) <= 8 * np.finfo(np.float64).eps * true


def _hermitian_with_top(rng, count, r, tau, rel):
    """``count`` dense, ill-conditioned Hermitian blocks whose largest eigenvalue is
    ``tau (1 + rel)`` exactly in float64 (up to the unitary's rounding), with a cluster
    just below it and the rest graded over eight decades."""
    z = rng.standard_normal((count, r, r)) + 1j * rng.standard_normal((count, r, r))
    q, _ = np.linalg.qr(z)
    top = tau * (1 + rel)
    lam = top * np.logspace(0, -8, r)
    lam[:4] = top * (1 - np.array([0.0, 1e-9, 1e-7, 1e-5]))
    return (q * lam[None, None, :]) @ np.conj(np.swapaxes(q, -1, -2))


class TestCholeskyShifts:
    """The per-block shift of convsv.norm: a Cholesky of ``t I - G_hat`` that completes
    must prove ``lambda_max(G) <= tau``, with ``G_hat`` the block rounded to the test's
    precision; blocks just above ``tau`` must therefore fail in single and double precision,
    however the rounding falls, and blocks a small margin below must pass."""

    @pytest.mark.parametrize("single", [True, False])
    @pytest.mark.parametrize("rel", [1e-13, 1e-9, 1e-7, 1e-5])
    def test_blocks_just_above_tau_fail(self, env, single, rel):
        from convsv._backends import cholesky_succeeds
        from convsv.norm import _cholesky_shifts, _trace_lower

        rng = np.random.default_rng(int(rel * 1e15) % 2**32 + single)
        tau, r = 3.0, 48
        g = _hermitian_with_top(rng, 32, r, tau, rel)
        dt = np.complex64 if single else np.complex128
        g_hat = g.astype(dt)
        eps = float(np.finfo(dt).eps)
        # ||G_hat - G||_2 <= ||G_hat - G||_F <= u ||G||_F (entrywise rounding), doubled
        eps_g = eps * float(np.max(np.linalg.norm(g, axis=(-2, -1))))
        tiny = float(np.finfo(dt).tiny)
        tr = env.to_numpy(_trace_lower(env.asarray(g_hat), env.xp))
        t = _cholesky_shifts(tau, r, eps_g, tr, eps, tiny)
        assert np.all(t < tau)
        shifted = t[:, None, None].astype(dt) * np.eye(r, dtype=dt) - g_hat
        ok = env.to_numpy(cholesky_succeeds(env.asarray(shifted), env.xp))
        assert not ok.any()
        # the shift leaves room for the block's rounding and Rump's term, not just eps_g
        assert np.all(t <= tau - eps_g - 2 * r * eps * (r * tau - tr) / 2)

    @pytest.mark.parametrize("single", [True, False])
    def test_blocks_a_margin_below_tau_pass(self, env, single):
        from convsv._backends import cholesky_succeeds
        from convsv.norm import _cholesky_shifts, _trace_lower

        rng = np.random.default_rng(17 + single)
        tau, r = 3.0, 48
        # the margin: Rump's gamma_{2r+4}(u) (r t - tr) plus the rounding, ~0.03% here
        rel = -2e-3 if single else -1e-11
        g = _hermitian_with_top(rng, 32, r, tau, rel)
        dt = np.complex64 if single else np.complex128
        g_hat = g.astype(dt)
        eps = float(np.finfo(dt).eps)
        eps_g = eps * float(np.max(np.linalg.norm(g, axis=(-2, -1))))
        tr = env.to_numpy(_trace_lower(env.asarray(g_hat), env.xp))
        t = _cholesky_shifts(tau, r, eps_g, tr, eps, float(np.finfo(dt).tiny))
        shifted = t[:, None, None].astype(dt) * np.eye(r, dtype=dt) - g_hat
        assert env.to_numpy(cholesky_succeeds(env.asarray(shifted), env.xp)).all()


@pytest.mark.parametrize(
    ("shape", "n", "stride", "groups"),
    [
        ((24, 24, 3, 3), 8, 1, 1),
        ((12, 4, 3, 5), 8, 2, 2),
        ((6, 9, 3), 12, 1, 1),
        ((20, 4, 3, 3), 6, 1, 1),
    ],
)
def test_gram_rounding_bounds_hold(env, shape, n, stride, groups):
    # the single- and double-precision Gram blocks of a real kernel (_Lags: half-lag
    # sums and differences) are within the a priori bounds of the exact blocks P^H P
    from convsv._validation import conv_spec, grouped
    from convsv.norm import _block_points, _error_bounds, _Lags

    rng = np.random.default_rng(sum(shape) + n)
    kern = rng.standard_normal(shape)
    spec = conv_spec(kern, n, stride, 1, groups)
    kg = grouped(env.asarray(kern), spec, env.xp)
    lags = _Lags(kg, spec, env.xp, True)
    eps_g, _, eps_g32 = _error_bounds(kg, lags.t_abs, spec, env.xp)
    pts = _block_points(spec, True)
    # reference: the symbol blocks from an FFT of the padded polyphase kernel, in float64
    ref = _reference_grams(kern, n, stride, groups, pts)
    for single, bound in ((True, eps_g32), (False, eps_g)):
        got = env.to_numpy(lags.grams(pts, single=single)).astype(np.complex128)
        err = np.linalg.norm(got.reshape(ref.shape) - ref, ord=2, axis=(-2, -1)).max()
        assert err <= bound, (single, err, bound)
    got32 = env.to_numpy(lags.grams(pts, single=True)).astype(np.complex128)
    err32 = np.linalg.norm(got32.reshape(ref.shape) - ref, ord=2, axis=(-2, -1)).max()
    # a worst-case bound, but not a vacuous one: measured 200-1200x the error it covers
    assert eps_g32 <= 5000 * err32


def _reference_grams(kernel, n, stride, groups, pts):
    """The smaller Gram block of every symbol block at the points ``pts`` (float64 FFT)."""
    d = kernel.ndim - 2
    s, m = stride, n // stride
    c_out, c_in_g = kernel.shape[:2]
    out = []
    for g in range(groups):
        kg = kernel[g * (c_out // groups) : (g + 1) * (c_out // groups)]
        poly = np.zeros((c_out // groups, c_in_g) + (s,) * d + (m,) * d)
        for tap in np.ndindex(*kernel.shape[2:]):
            idx = tuple(t % s for t in tap) + tuple((t // s) % m for t in tap)
            poly[(slice(None), slice(None), *idx)] += kg[(slice(None), slice(None), *tap)]
        axes = tuple(range(-d, 0))
        sym = np.fft.ifftn(poly, axes=axes) * m**d  # e^{+i theta a}
        blocks = np.moveaxis(
            sym.reshape(c_out // groups, c_in_g * s**d, *(m,) * d), (0, 1), (-2, -1)
        )
        p = blocks[tuple(pts.T)]  # (F, c_out/G, c_in/G s^d)
        if p.shape[-2] > p.shape[-1]:  # the smaller Gram: P^H P at -theta
            p = blocks[tuple(((-pts) % m).T)]
            gram = np.conj(np.swapaxes(p, -1, -2)) @ p
        else:
            gram = p @ np.conj(np.swapaxes(p, -1, -2))
        out.append(gram)
    return np.stack(out, axis=1).reshape(-1, *out[0].shape[-2:])


def test_clipped_tall_layer_with_tied_blocks():
    # a clipped 160 x 16 layer: dozens of blocks tied at the top (singular values 1) on
    # the input side of the Gram; a rewrite of the block plan once returned 0.99961 here
    # with a certified upper end of 3.98. Reference: NumPy's FFT symbols and SVDs.
    from convsv.cli import example_kernels

    name, w, _ = list(example_kernels("wrn-16-10"))[1]
    assert name == "block1.0.conv1"
    k = convsv.clip(w, 16, 1.0, tol=1e-2)
    blocks = np.fft.fft2(k, s=(16, 16)).transpose(2, 3, 0, 1)
    ref = float(np.linalg.svd(blocks, compute_uv=False).max())
    value, info = convsv.operator_norm(k, 16, full_output=True)
    assert abs(float(value) - ref) <= 1e-12 * ref
    assert info.lower <= ref * (1 + 1e-14)
    assert ref <= info.upper
    assert info.upper - info.lower <= 1e-9 * ref


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("spread", [0.0, 1e-6, 1e-2, 0.5])
def test_lanczos_ritz_values_stay_in_the_spectrum(env, dtype, spread):
    # the ranking's Ritz values of clustered blocks (G ~ c I plus a small spread: clipped
    # or near-orthogonal layers): a single Gram-Schmidt pass once let them reach 18x
    # lambda_max, which misranked every block; reference: NumPy's eigvalsh
    from convsv.norm import _lanczos_top

    rng = np.random.default_rng(int(spread * 1e6) + (dtype == np.complex64))
    r, count, c = 24, 16, 64.0
    z = rng.standard_normal((count, r, r)) + 1j * rng.standard_normal((count, r, r))
    q, _ = np.linalg.qr(z)
    lam = c * (1 - spread * rng.random((count, r)))
    g = ((q * lam[:, None, :]) @ np.conj(np.swapaxes(q, -1, -2))).astype(dtype)
    top = np.linalg.eigvalsh(g.astype(np.complex128))[:, -1]
    eps = float(np.finfo(dtype).eps)
    for steps in (6, 16, 24):
        ritz = env.to_numpy(_lanczos_top(env.asarray(g), steps, env.xp))
        # Ritz values of the rounded block lie below its top eigenvalue (plus rounding)
        assert np.all(ritz <= top + 8 * r * eps * c), (steps, ritz / top)
        if steps == r:  # the whole space: the top eigenvalue itself
            assert np.all(ritz >= top - 8 * r * eps * c), (steps, ritz / top)


def _tied_kernel(rng, c_out, c_in, n, top, delta, flat=False):
    """A full-support real kernel ``(c_out, c_in, n, n)`` whose symbol blocks' singular
    values are clipped at 1 (dozens of blocks tied at the top), the top singular value of
    the blocks at ``top`` and ``-top`` then set to ``1 + delta`` (NumPy FFT; conjugate
    symmetry kept). ``flat``: every singular value then mapped into ``[0.99, 1]``
    (order kept), so that each Gram block is ``~ I`` (a layer clipped from far above)."""
    k = rng.standard_normal((c_out, c_in, 3, 3))
    blocks = np.moveaxis(np.fft.fft2(k, s=(n, n)), (2, 3), (0, 1))  # (n, n, co, ci)
    u, s, vh = np.linalg.svd(blocks, full_matrices=False)
    s = np.minimum(s, np.quantile(s[..., 0], 0.2))
    s = s / s[..., :1].max()
    if flat:
        s = 1 - 0.01 * (1 - s)
    for w in {tuple(top), tuple((-np.asarray(top)) % n)}:
        s[w][0] = 1 + delta
    blocks = (u * s[..., None, :]) @ vh
    return np.real(np.fft.ifft2(np.moveaxis(blocks, (0, 1), (2, 3)), axes=(2, 3)))


@pytest.mark.parametrize(
    ("c_out", "c_in", "n", "top"),
    [
        (40, 8, 8, (0, 0)),  # tall: the Gram on the input side; top self-conjugate
        (40, 8, 8, (1, 3)),  # ... top a conjugate pair
        (8, 40, 8, (4, 4)),  # wide; top at (pi, pi)
        (8, 40, 8, (2, 5)),
        (16, 16, 7, (3, 1)),  # odd grid: only 0 is self-conjugate
        (48, 16, 16, (0, 8)),
    ],
)
@pytest.mark.parametrize("delta", [0.0, 1e-14, 1e-5])
@pytest.mark.parametrize("rtol", [None, 1e-3])
@pytest.mark.parametrize("flat", [False, True])
def test_tied_blocks(env, c_out, c_in, n, top, delta, rtol, flat):
    # dozens of blocks tied at the top (clipped spectra) with the true maximum on a chosen
    # block or pair, 1e-14 to 1e-5 above the rest: the interval holds and the value is
    # within the certified width of the truth (NumPy FFT + SVD reference)
    rng = np.random.default_rng(c_out * n + top[0] + 7 * top[1])
    kern = _tied_kernel(rng, c_out, c_in, n, top, delta, flat)
    sv = np.linalg.svd(np.moveaxis(np.fft.fft2(kern), (2, 3), (0, 1)), compute_uv=False)
    true = float(sv.max())
    assert np.sum(sv[..., 0] >= true * (1 - 2 * delta - 1e-12)) >= 10  # really tied
    value, info = convsv.operator_norm(env.asarray(kern), n, rtol=rtol, full_output=True)
    value = float(env.to_numpy(value))
    _check_certificate(info, true, value, 1e-12 if rtol is None else rtol)
    # the floor is a priori (measured <= 4e-9 here): not the width, whatever it came to
    assert info.upper - info.lower <= max(rtol or 0.0, 1e-8) * value
    assert abs(value - true) <= max(info.upper - info.lower, 8 * 2.0**-52 * true)
    if delta >= 1e-5 and rtol is None:  # the winner is the raised block (or its twin)
        assert info.frequency in {top, tuple((-np.asarray(top)) % n)}


@pytest.mark.parametrize(
    ("c_out", "c_in", "n", "stride", "groups", "dtype"),
    [
        (24, 6, 8, 2, 1, "float64"),  # tall after the polyphase split? 24 vs 6*4: square
        (32, 4, 8, 2, 1, "float64"),  # tall: 32 > 4 * 4
        (6, 12, 8, 2, 2, "float64"),  # wide, grouped
        (24, 8, 6, 1, 2, "float32"),  # tall, grouped, float32
        (16, 16, 8, 1, 1, "float32"),
    ],
)
@pytest.mark.parametrize("rtol", [None, 1e-3])
def test_clipped_full_support(env, c_out, c_in, n, stride, groups, dtype, rtol):
    # convsv.clip(support="full") sets every symbol block's top singular values to the
    # cap: all blocks tied (strides, groups, float32); reference: the dense matrix of
    # torch.nn.functional.conv2d
    rng = np.random.default_rng(c_out + 3 * c_in + n + stride)
    k = rng.standard_normal((c_out, c_in // groups, 3, 3))
    kern = np.asarray(convsv.clip(k, n, 0.5, stride, groups=groups, support="full"), dtype=dtype)
    true = dense_svd(
        torch_dense(kern.astype(np.float64), (n, n), (stride,) * 2, (1, 1), groups, "circular")
    )[0]
    value, info = convsv.operator_norm(
        env.asarray(kern), n, stride, groups=groups, rtol=rtol, full_output=True
    )
    value = float(env.to_numpy(value))
    default = 1e-6 if dtype == "float32" else 1e-12
    _check_certificate(info, true, value, default if rtol is None else rtol)
    assert info.upper - info.lower <= max(default if rtol is None else rtol, 1e-8) * value
    eps = float(np.finfo(dtype).eps)
    assert abs(value - true) <= max(info.upper - info.lower, 8 * eps * true) + eps * true


@pytest.mark.parametrize("flat", [False, True])
def test_value_does_not_depend_on_the_ranking(env, monkeypatch, flat):
    # the Lanczos ranking is a heuristic: fed random Ritz values (misranking every block,
    # most of them "above" the best), the loop must still end with the true maximum
    # and an interval as narrow as the rounding margins allow
    import convsv.norm as norm_mod

    noise = np.random.default_rng(5)

    def misrank(gram, steps, xp):
        scale = float(xp.max(xp.abs(gram))) * int(gram.shape[-1])
        return xp.asarray(noise.random(int(gram.shape[0])) * scale, dtype=xp.float64)

    monkeypatch.setattr(norm_mod, "_lanczos_top", misrank)
    rng = np.random.default_rng(99)
    kern = _tied_kernel(rng, 48, 16, 16, (3, 5), 1e-7, flat)
    sv = np.linalg.svd(np.moveaxis(np.fft.fft2(kern), (2, 3), (0, 1)), compute_uv=False)
    true = float(sv.max())
    value, info = convsv.operator_norm(env.asarray(kern), 16, full_output=True)
    value = float(env.to_numpy(value))
    _check_certificate(info, true, value, 1e-12)
    assert info.upper - info.lower <= 1e-8 * value
    assert abs(value - true) <= info.upper - info.lower


@given(
    c_out=st.integers(1, 12),
    c_in=st.integers(1, 12),
    groups=st.sampled_from([1, 2]),
    n_stride=st.sampled_from([(4, 1), (5, 1), (6, 1), (6, 2), (8, 2), (8, 1)]),
    cap=st.floats(0.05, 1.0),
    single=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_clipped_layers_against_dense(env, c_out, c_in, groups, n_stride, cap, single, seed):
    # a random share of blocks clipped to a common top (from none to all): ties anywhere,
    # on either side of the Gram, strided and grouped; reference: torch's dense matrix
    n, stride = n_stride
    c_out, c_in = c_out * groups, c_in * groups
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((c_out, c_in // groups, 3, 3))
    top = dense_svd(torch_dense(k, (n, n), (stride,) * 2, (1, 1), groups, "circular"))[0]
    dtype = np.float32 if single else np.float64
    kern = np.asarray(
        convsv.clip(k, n, cap * top, stride, groups=groups, support="full"), dtype=dtype
    )
    true = dense_svd(
        torch_dense(kern.astype(np.float64), (n, n), (stride,) * 2, (1, 1), groups, "circular")
    )[0]
    value, info = convsv.operator_norm(
        env.asarray(kern), n, stride, groups=groups, full_output=True
    )
    value = float(env.to_numpy(value))
    rtol = 1e-6 if single else 1e-12
    _check_certificate(info, true, value, rtol)
    assert info.upper - info.lower <= max(rtol, 1e-9) * true
    eps = float(np.finfo(dtype).eps)
    assert abs(value - true) <= info.upper - info.lower + eps * true


def test_winner_lower_bound_survives_a_failing_solve():
    # the inverse-iteration vector needs an LU solve of G shifted just above sigma^2; should
    # that fail (an exactly singular shift), the SVD's top vector must still give a proven
    # lower bound on sigma_max (the fallback branch, otherwise never taken)
    import types

    import array_api_compat.numpy as cnp

    import convsv.norm as norm_module

    def failing_solve(*args, **kwargs):
        msg = "singular"
        raise np.linalg.LinAlgError(msg)

    fake = types.SimpleNamespace(**{k: getattr(cnp, k) for k in dir(cnp) if not k.startswith("__")})
    fake.linalg = types.SimpleNamespace(
        **{k: getattr(cnp.linalg, k) for k in dir(cnp.linalg) if not k.startswith("__")}
    )
    fake.linalg.solve = failing_solve
    rng = np.random.default_rng(21)
    p = rng.standard_normal((6, 9)) + 1j * rng.standard_normal((6, 9))
    sigma = float(np.linalg.svd(p, compute_uv=False)[0])
    for input_side in (False, True):
        gram = p.conj().T @ p if input_side else p @ p.conj().T
        low = norm_module._winner_lower(p, gram, sigma, 1e-15, input_side, fake)
        assert sigma * (1 - 1e-13) <= low <= sigma


def test_zero_kernel_norm_stays_on_the_autograd_graph():
    # the zero operator is answered without any block work, but a grad-requiring kernel
    # must still get a differentiable 0 (a subgradient: zeros), not a constant
    torch = pytest.importorskip("torch")
    w = torch.zeros((2, 3, 3, 3), dtype=torch.float64, requires_grad=True)
    value = convsv.operator_norm(w, 6)
    assert value.requires_grad
    assert float(value.detach()) == 0.0
    value.backward()
    assert w.grad is not None
    assert not torch.any(w.grad)


def _norm_below(env, kern, n, bound, stride=1, dilation=1, groups=1, memory_limit=None):
    from convsv._validation import conv_spec, grouped
    from convsv.norm import periodic_norm_below

    k = env.asarray(kern)
    spec = conv_spec(k, n, stride, dilation, groups)
    return periodic_norm_below(
        grouped(k, spec, env.xp), spec, env.xp, bound, memory_limit=memory_limit
    )


class TestNormBelow:
    """``periodic_norm_below``: a proof at a level the caller knows (no ranking, no SVD)."""

    @given(layer=layers(divisible=True, max_entries=40_000), rel=st.sampled_from([1e-3, 1e-7]))
    def test_against_dense(self, env, layer, rel):
        cast = layer.cast().astype(np.complex128 if "complex" in layer.dtype else np.float64)
        true = dense_svd(
            torch_dense(cast, layer.n, layer.stride, layer.dilation, layer.groups, "circular")
        )[0]
        args = (layer.n, layer.stride, layer.dilation, layer.groups)
        kern = layer.cast()
        # never a proof below the norm; always one a little above it (the rounding
        # margins are ~1e-12 relative for these sizes)
        assert not _norm_below(env, kern, args[0], true * (1 - rel), *args[1:])
        assert _norm_below(env, kern, args[0], true * (1 + rel), *args[1:])

    @pytest.mark.parametrize(
        ("c_out", "c_in", "n", "stride", "groups"),
        [(64, 64, 6, 1, 1), (48, 16, 8, 2, 1), (70, 70, 5, 1, 2), (16, 80, 6, 1, 1)],
    )
    def test_large_blocks_single_then_double(
        self, env, monkeypatch, c_out, c_in, n, stride, groups
    ):
        import convsv.norm as norm_module

        rng = np.random.default_rng(c_out + n)
        kern = rng.standard_normal((c_out, c_in // groups, 3, 3))
        true = _block_reference(kern, n, stride, groups)
        seen = []
        real = norm_module.cholesky_succeeds

        def spy(herm, xp):
            seen.append(str(herm.dtype))
            return real(herm, xp)

        monkeypatch.setattr(norm_module, "cholesky_succeeds", spy)
        # 1% above: settled in single precision, no block needs a double test
        assert _norm_below(env, kern, n, true * 1.01, stride, 1, groups)
        assert seen
        assert not any("128" in s for s in seen), seen
        # 1e-7 above: inside the single-precision margin; only the double test proves it
        seen.clear()
        assert _norm_below(env, kern, n, true * (1 + 1e-7), stride, 1, groups)
        assert any("128" in s for s in seen), seen
        assert not _norm_below(env, kern, n, true * (1 - 1e-9), stride, 1, groups)

    def test_zero_kernel_and_bad_bounds(self, env):
        assert _norm_below(env, np.zeros((2, 3, 3, 3)), 6, 0.0)
        kern = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
        for bad in (-1.0, float("nan"), float("inf"), "one", None):
            with pytest.raises(ValueError, match="bound"):
                _norm_below(env, kern, 6, bad)


class TestLooseRtol:
    """From rtol = 5e-4 on, the leader's Ritz value stands in for its SVD."""

    @staticmethod
    def _spy_symbols(monkeypatch):
        import convsv.norm as norm_mod

        calls = []
        real = norm_mod.point_symbols

        def spy(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(norm_mod, "point_symbols", spy)
        return calls

    @pytest.mark.parametrize(
        ("rtol", "ritz_factor", "symbol_evaluations"),
        [
            (1e-3, 1.0, 1),  # the winner's block for its lower bound only: no SVD
            (1e-12, 1.0, 2),  # the default: the leader's SVD too
            (1e-3, 0.98, 2),  # a Ritz value 2% low: the leader fails its test, is solved
        ],
    )
    def test_svds_and_the_certificate(
        self, env, monkeypatch, rtol, ritz_factor, symbol_evaluations
    ):
        import convsv.norm as norm_mod

        real_lanczos = norm_mod._lanczos_top
        monkeypatch.setattr(
            norm_mod,
            "_lanczos_top",
            lambda gram, steps, xp: real_lanczos(gram, steps, xp) * ritz_factor,
        )
        calls = self._spy_symbols(monkeypatch)
        kern = np.random.default_rng(11).standard_normal((32, 32, 3, 3))
        value, info = convsv.operator_norm(env.asarray(kern), 8, rtol=rtol, full_output=True)
        true = _block_reference(kern, 8)
        value = float(env.to_numpy(value))
        _check_certificate(info, true, value, rtol)
        assert value <= true * (1 + 1e-14)
        assert true - value <= info.upper - info.lower
        assert len(calls) == symbol_evaluations

    def test_a_lower_bound_from_another_eigenvector_is_redone(self, env, monkeypatch):
        # inverse iteration from a Ritz value can converge to a second eigenvalue nearly
        # as close: the width would break its promise, so the winner is solved and its
        # exact value's shift used
        import convsv.norm as norm_mod

        real = norm_mod._winner_lower
        shifts = []

        def first_low(p, gram, sigma, eps_p, input_side, xp, **kwargs):
            shifts.append(sigma)
            low = real(p, gram, sigma, eps_p, input_side, xp, **kwargs)
            return low * (1 - 2e-3) if len(shifts) == 1 else low

        monkeypatch.setattr(norm_mod, "_winner_lower", first_low)
        kern = np.random.default_rng(12).standard_normal((32, 32, 3, 3))
        value, info = convsv.operator_norm(env.asarray(kern), 8, rtol=1e-3, full_output=True)
        true = _block_reference(kern, 8)
        assert len(shifts) == 2
        # the second shift is the winner's SVD value (the layer scaled by a power of two)
        scale = math.ldexp(1.0, -math.frexp(float(np.abs(kern).max()))[1])
        assert abs(shifts[1] / (true * scale) - 1) <= 1e-13
        _check_certificate(info, true, float(env.to_numpy(value)), 1e-3)

    @pytest.mark.parametrize("seed", range(4))
    def test_no_svd_fallback_and_a_proper_floor(self, env, monkeypatch, seed):
        # the leader's Ritz value can sit a float32 rounding above its block's value:
        # the lower bound's SVD fallback must not take that for a failed inverse
        # iteration, and the floor (a rounding margin) must not come from a Ritz value
        import convsv.norm as norm_mod

        svds = []
        real = norm_mod._svd_top_vector
        monkeypatch.setattr(
            norm_mod, "_svd_top_vector", lambda p, xp: svds.append(1) or real(p, xp)
        )
        c = (8, 16, 64, 24)[seed]
        kern = np.random.default_rng(seed).standard_normal((c, c, 3, 3))
        value, info = convsv.operator_norm(env.asarray(kern), 8, rtol=1e-3, full_output=True)
        _check_certificate(info, _block_reference(kern, 8), float(env.to_numpy(value)), 1e-3)
        assert svds == []
        assert 0 <= info.floor < 1e-9

    def test_overshooting_ritz_values_fall_back_to_the_exact_path(self, env, monkeypatch):
        # Ritz values 5% high would set tau 5% above the norm: the width promise is kept
        # by starting over on the exact path, not by a floor that grows to cover it
        import convsv.norm as norm_mod

        real_lanczos = norm_mod._lanczos_top
        monkeypatch.setattr(
            norm_mod, "_lanczos_top", lambda gram, steps, xp: real_lanczos(gram, steps, xp) * 1.05
        )
        kern = np.random.default_rng(13).standard_normal((32, 32, 3, 3))
        value, info = convsv.operator_norm(env.asarray(kern), 8, rtol=5e-4, full_output=True)
        _check_certificate(info, _block_reference(kern, 8), float(env.to_numpy(value)), 5e-4)
        assert 0 <= info.floor < 1e-9
        assert info.upper - info.lower <= 5e-4 * float(env.to_numpy(value)) * (1 + 1e-12)


@pytest.mark.parametrize("scale", [1e-310, 1e-300, 1e300])
def test_norm_below_extreme_scales_and_levels(env, scale):
    # a subnormal or huge kernel, and levels far above the norm, are answered (no
    # overflow): the scaling by a power of two is exact in two steps, a level beyond
    # any norm of the scaled layer is capped
    kern = np.random.default_rng(3).standard_normal((3, 4, 3, 3))
    true = _block_reference(kern, 6)  # the norm is linear in the kernel's scale
    k = kern * scale
    assert _norm_below(env, k, 6, true * scale * (1 + 1e-6))
    assert not _norm_below(env, k, 6, true * scale * (1 - 1e-6))
    assert _norm_below(env, k, 6, 1e308)


def test_norm_below_rejects_non_finite_kernels(env):
    kern = np.random.default_rng(4).standard_normal((3, 4, 3, 3))
    for bad in (np.nan, np.inf):
        k = kern.copy()
        k[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="finite"):
            _norm_below(env, k, 6, 1.0)


def test_norm_below_keeps_the_memory_limit_and_is_quiet(env, capfd):
    kern = np.random.default_rng(5).standard_normal((8, 8, 3, 3))
    with pytest.raises(ValueError, match="memory_limit"):
        _norm_below(env, kern, 6, 100.0, memory_limit=1024)
    assert _norm_below(env, kern, 6, 100.0)
    assert capfd.readouterr().err == ""  # no progress bar
