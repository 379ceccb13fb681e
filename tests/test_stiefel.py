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


# Refusals name the argument (issue 14: mutation testing found the names unchecked).
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: stiefel_dof("3", 2), r"^d must be"),
        (lambda: stiefel_dof(3, "2"), r"^r must be"),
        (lambda: frame_from_householder(np.ones((4, 2)), method="qr"), r"^method must be one of"),
        (lambda: project_to_stiefel(np.ones((4, 2)), method="wy"), r"^method must be one of"),
        (lambda: frame_from_householder(np.ones(3)), r"^h must have shape \(\.\.\., d, r\)"),
        (lambda: householder_from_frame(np.ones((2, 3))), r"^u must have r <= d"),
        (lambda: project_to_stiefel(np.ones(3)), r"^a must have shape \(\.\.\., d, r\)"),
        (lambda: frame_from_householder(True), r"^h must be a real or complex floating"),
        (lambda: householder_from_frame(True), r"^u must be a real or complex floating"),
        (lambda: project_to_stiefel(False), r"^a must be a real or complex floating"),
    ],
)
def test_refusals_name_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda x, xp: frame_from_householder(x, xp=xp),
        lambda x, xp: householder_from_frame(project_to_stiefel(x), xp=xp),
        lambda x, xp: project_to_stiefel(x, xp=xp),
        lambda x, xp: project_to_stiefel(x, method="qr", xp=xp),
    ],
)
def test_xp_moves_a_numpy_input(call):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((5, 3))
    out = call(x, torch)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), call(x, None), atol=1e-14)


def test_float32_stays_float32(env):
    h = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    ref = frame_from_householder(h.astype(np.float64))
    for method in ("wy", "loop"):
        u = frame_from_householder(env.asarray(h), method=method)
        assert env.to_numpy(u).dtype == np.float32
        np.testing.assert_allclose(env.to_numpy(u), ref, atol=20 * np.finfo(np.float32).eps)


def test_inverse_default_is_full_and_reduced_zeros_are_exact():
    # the docstring promises zeros where the layout ignores a parameter: exactly, not to
    # rounding (a reduced frame's Householder vectors vanish above row r only to rounding)
    rng = np.random.default_rng(4)
    h = rng.standard_normal((7, 3))
    full = frame_from_householder(h)
    np.testing.assert_allclose(householder_from_frame(full), np.tril(h, -1), atol=1e-12)
    u = frame_from_householder(h, reduced=True)
    red = householder_from_frame(u, reduced=True)
    assert np.all(red[:3] == 0.0)
    np.testing.assert_allclose(red[3:], h[3:], atol=1e-12)
    # a frame that is of the reduced form only to rounding (as one computed elsewhere)
    u[1, 0] += 1e-10
    red = householder_from_frame(u, reduced=True)
    assert np.all(red[:3] == 0.0)
    np.testing.assert_allclose(red[3:], h[3:], atol=1e-8)


def test_polar_is_the_svd_polar_factor_and_the_default():
    a = np.random.default_rng(5).standard_normal((3, 6, 4))
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    np.testing.assert_allclose(project_to_stiefel(a), u @ vh, atol=1e-13)
    np.testing.assert_allclose(project_to_stiefel(a, method="polar"), u @ vh, atol=1e-13)


def test_qr_retraction_has_a_positive_r_diagonal(env):
    # columns of norm < 1 (so the diagonal of R lies in (0, 1)): Q is fixed by R's signs
    a = 0.1 * np.random.default_rng(6).standard_normal((2, 6, 4))
    q = env.to_numpy(project_to_stiefel(env.asarray(a), method="qr"))
    r = np.swapaxes(q, -1, -2) @ a
    np.testing.assert_allclose(np.tril(r, -1), 0, atol=1e-14)
    assert np.all(np.diagonal(r, axis1=-2, axis2=-1) > 0)
    np.testing.assert_allclose(q @ r, a, atol=1e-14)


@pytest.mark.parametrize(
    "frame",
    [np.eye(1), np.eye(3), np.diag([-1.0, 1.0]), np.eye(4)[:, :2]],
    ids=["1x1", "identity", "det+1 of 2", "base point"],
)
def test_frames_the_form_cannot_reach_are_refused(env, frame):
    # (helper-36) these came back as NaN, and a square frame of the other determinant as
    # parameters 1.8 off its frame: the form reaches only det (-1)^r for d = r
    with pytest.raises(ValueError, match="cannot represent it"):
        householder_from_frame(env.asarray(frame))


def test_square_frames_of_the_reachable_determinant_round_trip(env):
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))[0]
    q = q if np.linalg.det(q) > 0 else q * np.array([-1.0, 1.0, 1.0, 1.0])  # det (-1)^4
    h = householder_from_frame(env.asarray(q))
    back = env.to_numpy(frame_from_householder(h))
    np.testing.assert_allclose(back, q, atol=1e-14)
    with pytest.raises(ValueError, match="cannot represent it"):
        householder_from_frame(env.asarray(q * np.array([-1.0, 1.0, 1.0, 1.0])))
