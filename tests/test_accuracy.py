"""Accuracy where it is hard to reach: ill-conditioned Gram blocks, large blocks, float32.

Every reference here is independent of convsv: dense SVDs of the operator built by
torch.nn.functional.conv* on basis signals (helpers.torch_dense).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from helpers import assert_array, dense_svd, torch_dense

import convsv


def _ill_conditioned(c_out: int, c_in: int, seed: int, cond: float = 1e-6) -> np.ndarray:
    """3x3 kernel whose centre tap is a dense channel matrix with singular values 1..cond.

    The symbol blocks are then full (non-diagonal) and as ill-conditioned as ``cond``;
    the off-centre taps are small enough to keep them so at every frequency.
    """
    rng = np.random.default_rng(seed)
    r = min(c_out, c_in)
    u = np.linalg.qr(rng.standard_normal((c_out, c_out)))[0][:, :r]
    v = np.linalg.qr(rng.standard_normal((c_in, c_in)))[0][:, :r]
    w = 1e-8 * rng.standard_normal((c_out, c_in, 3, 3))
    w[:, :, 1, 1] += (u * np.logspace(0, math.log10(cond), r)) @ v.T
    return w


@pytest.mark.parametrize(
    ("c_out", "c_in", "stride"), [(12, 8, 1), (8, 12, 1), (16, 4, 2), (4, 16, 2)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_gram_solver_error_is_eps_smax_squared_over_s_on_full_blocks(
    env, c_out, c_in, stride, seed
):
    # The Gram route's documented accuracy: |s_gram - s| ~ eps s_max^2 / s (the eigenvalue
    # s^2 is known to eps s_max^2). Measured worst over these cases: 32 eps s_max^2 / s
    # with Gram blocks of size <= 16; allowed: 10 * size. A Gram formed in float32 from
    # float64 data is off by ~1e8 times that and fails.
    w = _ill_conditioned(c_out, c_in, seed)
    n = 6
    ref = dense_svd(torch_dense(w, (n, n), (stride, stride), (1, 1), 1, "circular"))
    got = convsv.singular_values(env.asarray(w), n, stride, solver="gram")
    assert_array(env, got, dtype=env.xp.float64, shape=ref.shape)
    size = min(c_out, c_in * stride**2)
    eps = np.finfo(np.float64).eps
    bound = 10 * size * eps * ref[0] ** 2 / ref + 4 * eps * ref[0]
    err = np.abs(env.to_numpy(got) - ref)
    assert ref[-1] < 1e-5  # the blocks really are ill-conditioned
    assert np.all(err <= bound), (err / bound).max()
    # the SVD solver keeps every value to a few eps * s_max, small ones included (64:
    # the float64 reference is no more accurate than that)
    exact = env.to_numpy(convsv.singular_values(env.asarray(w), n, stride))
    np.testing.assert_allclose(exact, ref, rtol=0, atol=64 * eps * ref[0])


# Layers whose symbol blocks are >= 16 x 16, with groups and odd coarse grids: the
# hypothesis "ci" profile's small layers never reach these shapes.
LARGE = [
    # (kernel shape oihw, n, stride, dilation, groups)
    ((16, 4, 3, 3), (6, 10), (2, 2), (1, 1), 1),  # 16 x 16 blocks, 3 x 5 grid
    ((32, 4, 3, 3), (6, 6), (2, 2), (1, 1), 2),  # two groups of 16 x 16, 3 x 3 grid
    ((20, 6, 5), (15,), (3,), (1,), 1),  # 20 x 18, grid 5
    ((16, 2, 3, 3, 3), (2, 4, 6), (2, 2, 2), (1, 1, 1), 1),  # 3-D, 16 x 16, grid 1 x 2 x 3
    ((17, 19, 3, 3), (3, 3), (1, 1), (2, 1), 1),  # stride 1, 17 x 19, dilation 2 wraps
    ((24, 3, 4, 4), (9, 6), (3, 2), (1, 1), 3),  # groups 3: 8 x 6 per group, grid 3 x 3
]


@pytest.mark.parametrize("case", LARGE, ids=[f"{c[0]}-n{c[1]}-s{c[2]}-g{c[4]}" for c in LARGE])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_large_blocks_match_the_dense_svd(env, case, dtype):
    shape, n, stride, dilation, groups = case
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape).astype(dtype)
    ref = dense_svd(torch_dense(w.astype(np.float64), n, stride, dilation, groups, "circular"))
    for solver in ("svd",):
        got = convsv.singular_values(
            env.asarray(w), n, stride, dilation=dilation, groups=groups, solver=solver
        )
        rdt = getattr(env.xp, dtype)
        assert_array(env, got, dtype=rdt, shape=ref.shape)
        eps = float(np.finfo(dtype).eps)
        # float32: 8 eps s_max (measured worst 2.8); float64: the reference's own error
        # is of the same order, hence the larger allowance.
        factor = 8 if dtype == "float32" else 64
        np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=factor * eps * ref[0])
    norm = convsv.operator_norm(env.asarray(w), n, stride, dilation=dilation, groups=groups)
    assert (
        abs(float(env.to_numpy(norm)) - ref[0])
        <= (8 if dtype == "float32" else 64) * float(np.finfo(dtype).eps) * ref[0]
    )


def _random_layer(rng: np.random.Generator):
    d = int(rng.choice([1, 2, 2, 3]))
    groups = int(rng.choice([1, 1, 2, 3]))
    big = rng.random() < 0.4
    c_out = groups * int(rng.integers(1, (24 if big else 5) if d < 3 else 8))
    c_in_g = int(rng.integers(1, (12 if big else 4) if d < 3 else 4))
    stride = tuple(int(rng.integers(1, 4)) for _ in range(d))
    dilation = tuple(int(rng.choice([1, 1, 2])) for _ in range(d))
    k = tuple(int(rng.integers(1, 6 if d < 3 else 4)) for _ in range(d))
    n = tuple(s * int(rng.integers(1, 6 if d < 3 else 3)) for s in stride)
    shape = (c_out, c_in_g, *k)
    w = rng.standard_normal(shape)
    if rng.random() < 0.4:
        w = (w + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return w.astype(w.dtype if w.dtype == np.complex64 else np.float32), n, stride, dilation, groups


@pytest.mark.slow
def test_float32_error_over_many_random_layers(env):
    # The measurement behind the float32 tolerance of test_spectrum.py: 300 random layers
    # (blocks up to ~100 columns) on NumPy and torch, against float64 dense SVDs of the
    # same float32 kernels: worst 2.75 eps s_max. Allowed: 8 eps s_max.
    rng = np.random.default_rng(int(os.environ.get("CONVSV_SWEEP_SEED", "1")))
    worst = 0.0
    for _ in range(int(os.environ.get("CONVSV_SWEEP_LAYERS", "150"))):
        w, n, stride, dilation, groups = _random_layer(rng)
        rows = w.shape[0] * math.prod(v // s for v, s in zip(n, stride))
        if rows * w.shape[1] * groups * math.prod(n) > 200_000:
            continue
        wide = w.astype(np.complex128 if np.iscomplexobj(w) else np.float64)
        ref = dense_svd(torch_dense(wide, n, stride, dilation, groups, "circular"))
        got = env.to_numpy(
            convsv.singular_values(env.asarray(w), n, stride, dilation=dilation, groups=groups)
        )
        worst = max(worst, float(np.abs(got - ref).max() / (np.finfo(np.float32).eps * ref[0])))
    assert worst <= 8.0, worst
