"""Householder parameterisation of Stiefel frames (Obukhov et al. 2021)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convsv.stiefel import (
    frame_from_householder,
    householder_from_frame,
    project_to_stiefel,
    stiefel_dof,
)


@st.composite
def params(draw):
    d = draw(st.integers(1, 9))
    r = draw(st.integers(1, d))
    batch = draw(st.sampled_from([(), (2,), (2, 3)]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).standard_normal((*batch, d, r)), draw(st.booleans())


@given(case=params())
def test_frames_are_orthonormal_and_round_trip(env, case):
    h, reduced = case
    d, r = h.shape[-2:]
    u = frame_from_householder(env.asarray(h), reduced=reduced)
    un = env.to_numpy(u)
    assert un.shape == h.shape
    np.testing.assert_allclose(
        np.swapaxes(un, -1, -2) @ un,
        np.broadcast_to(np.eye(r), (*h.shape[:-2], r, r)),
        atol=50 * np.finfo(float).eps * d,
    )
    if reduced:  # St_U: the leading r x r block is upper triangular
        np.testing.assert_allclose(np.tril(un[..., :r, :], -1), 0, atol=1e-12)
    h2 = env.to_numpy(householder_from_frame(u, reduced=reduced))
    rows = np.arange(d)[:, None]
    used = np.broadcast_to(rows > ((r - 1) if reduced else np.arange(r)[None, :]), (d, r))
    assert int(used.sum()) == stiefel_dof(d, r, reduced=reduced)  # parameters actually used
    np.testing.assert_allclose(h2, h * used, atol=1e-8 * (1 + np.abs(h).max()) ** 3)
    np.testing.assert_allclose(
        env.to_numpy(frame_from_householder(env.asarray(h2), reduced=reduced)), un, atol=1e-12
    )


def test_dof_formulas():
    assert stiefel_dof(7, 3) == 7 * 3 - 6
    assert stiefel_dof(7, 3, reduced=True) == 7 * 3 - 9
    # a count, not a float that happens to be whole
    assert type(stiefel_dof(7, 3)) is int
    assert type(stiefel_dof(7, 3, reduced=True)) is int
    with pytest.raises(ValueError, match=r"1 <= r <= d"):
        stiefel_dof(3, 4)


def test_gradcheck_under_torch():
    torch = pytest.importorskip("torch")
    h = torch.randn(
        2, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True
    )
    assert torch.autograd.gradcheck(lambda x: frame_from_householder(x), (h,))
    assert torch.autograd.gradcheck(lambda x: frame_from_householder(x, reduced=True), (h,))
    assert torch.autograd.gradcheck(lambda x: frame_from_householder(x, method="loop"), (h,))


@pytest.mark.parametrize("method", ["polar", "qr"])
def test_projection_to_stiefel(env, method):
    a = np.random.default_rng(0).standard_normal((3, 6, 4))
    q = env.to_numpy(project_to_stiefel(env.asarray(a), method=method))
    np.testing.assert_allclose(
        np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-13
    )
    if method == "polar":  # nearest: closer than the QR retraction
        qr = env.to_numpy(project_to_stiefel(env.asarray(a), method="qr"))
        assert np.linalg.norm(q - a) <= np.linalg.norm(qr - a) + 1e-12


def test_bad_shape(env):
    with pytest.raises(ValueError, match=r"r <= d"):
        frame_from_householder(env.asarray(np.ones((2, 3))))


@given(case=params())
def test_equals_lapack_orgqr_and_both_methods_agree(case):
    torch = pytest.importorskip("torch")
    h, reduced = case
    d, r = h.shape[-2:]
    rows = np.arange(d)[:, None]
    mask = np.broadcast_to(rows > ((r - 1) if reduced else np.arange(r)[None, :]), (d, r))
    v = h * mask + np.eye(d, r)
    tau = 2.0 / np.sum(v * v, axis=-2)
    ref = torch.linalg.householder_product(torch.as_tensor(h * mask), torch.as_tensor(tau)).numpy()
    for method in ("wy", "loop"):
        np.testing.assert_allclose(
            frame_from_householder(h, reduced=reduced, method=method), ref, atol=1e-12
        )


def test_the_default_is_the_full_parameterisation():
    # Obukhov et al. 2021, Sec. 3.2: the full form uses the strictly lower part of every
    # column; the reduced St_U form only the rows below r (mutation testing found the
    # default untested)
    h = np.random.default_rng(3).standard_normal((6, 3))
    full = frame_from_householder(h, reduced=False)
    np.testing.assert_array_equal(frame_from_householder(h), full)
    assert np.abs(full - frame_from_householder(h, reduced=True)).max() > 1e-3
