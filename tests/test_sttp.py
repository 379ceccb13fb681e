"""SVDP and STTP (Obukhov et al. 2021): prescribed spectra and DOF counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convsv.sttp import (
    d_optimal_regularizer,
    prime_factors,
    sttp_matrix,
    sttp_spec,
    svdp_dof,
    svdp_matrix,
)

SPECTRA = ["learned", "identity", "lipschitz"]


def _expected(s: np.ndarray, spectrum: str) -> np.ndarray:
    if spectrum == "identity":
        return np.ones_like(s)
    if spectrum == "lipschitz":
        s = s / np.abs(s).max()
    return np.sort(np.abs(s))[::-1]


@given(
    d_out=st.integers(1, 12),
    d_in=st.integers(1, 12),
    data=st.data(),
    spectrum=st.sampled_from(SPECTRA),
    seed=st.integers(0, 2**32 - 1),
)
def test_svdp_has_exactly_the_prescribed_singular_values(env, d_out, d_in, data, spectrum, seed):
    r = data.draw(st.integers(1, min(d_out, d_in)))
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.1, 2.0, r) * rng.choice([-1, 1], r)
    w = svdp_matrix(
        env.asarray(rng.standard_normal((d_out, r))),
        env.asarray(rng.standard_normal((d_in, r))),
        env.asarray(s),
        spectrum=spectrum,
    )
    sv = np.linalg.svd(env.to_numpy(w), compute_uv=False)
    np.testing.assert_allclose(sv[:r], _expected(s, spectrum), atol=1e-12)
    np.testing.assert_allclose(sv[r:], 0, atol=1e-12)
    identity = spectrum == "identity"
    used = (
        (r * (d_out - r) if identity else d_out * r - r * (r + 1) // 2)
        + d_in * r
        - r * (r + 1) // 2
        + (0 if identity else r)
    )
    assert svdp_dof(d_out, d_in, r, spectrum=spectrum) == used


def _paper_dof(d_out, d_in, r, modes_out, modes_in, spectrum) -> int:
    """Obukhov et al. 2021, Sec. 3.3, written out independently of convsv.sttp.

    Modes ``(n_1..n_D) = (modes_out, reversed(modes_in))``, TT ranks
    ``R_k = min(r, n_1..n_k, n_{k+1}..n_D)`` with ``R_{D_out} = r`` beside Sigma (eq. 3);
    DOF = sum_k R_{k-1} n_k R_k - sum_{k=1}^{D-1} R_k^2 for a learned spectrum, and
    r (r + 1) / 2 fewer with the identity spectrum (the O(r) rotation redundancy).
    """
    modes = [*modes_out, *reversed(modes_in)]
    ranks = [1]
    for k in range(1, len(modes)):
        left, right = math.prod(modes[:k]), math.prod(modes[k:])
        ranks.append(r if k == len(modes_out) else min(r, left, right))
    ranks.append(1)
    dof = sum(ranks[k] * modes[k] * ranks[k + 1] for k in range(len(modes)))
    dof -= sum(v * v for v in ranks[1:-1])
    assert math.prod(modes_out) == d_out
    assert math.prod(modes_in) == d_in
    return dof - (r * (r + 1) // 2 if spectrum == "identity" else 0)


@pytest.mark.parametrize(
    ("d_out", "d_in", "r", "spectrum"),
    [(6, 4, 2, "learned"), (8, 6, 3, "identity"), (12, 9, 4, "lipschitz")],
)
def test_sttp_jacobian_rank_is_the_dof(d_out, d_in, r, spectrum):
    # the number of directions in which W actually moves (rank of dW/dparams at a generic
    # point) must equal the paper's DOF: no parameter is redundant, none is missing
    torch = pytest.importorskip("torch")
    spec = sttp_spec(d_out, d_in, r, spectrum=spectrum)
    g = torch.Generator().manual_seed(0)
    shapes = [(a, b) for a, b, _ in spec.u_cores + spec.v_cores]
    sizes = [a * b for a, b in shapes]
    nu = len(spec.u_cores)

    def weight(flat):
        parts, at = [], 0
        for (a, b), size in zip(shapes, sizes):
            parts.append(flat[at : at + size].reshape(a, b))
            at += size
        s = None if spectrum == "identity" else flat[at:]
        return sttp_matrix(spec, parts[:nu], parts[nu:], s).reshape(-1)

    n = sum(sizes) + (0 if spectrum == "identity" else r)
    flat = torch.randn(n, dtype=torch.float64, generator=g)
    if spectrum != "identity":
        flat[-r:] = torch.linspace(0.5, 2.0, r, dtype=torch.float64)  # distinct values
    jac = torch.autograd.functional.jacobian(weight, flat)
    rank = int(torch.linalg.matrix_rank(jac, rtol=1e-9))
    dof = _paper_dof(d_out, d_in, r, spec.modes_out, spec.modes_in, spectrum)
    # "lipschitz" divides by max|S|: W is invariant to scaling S, one direction less
    assert rank == dof - (1 if spectrum == "lipschitz" else 0)


@given(
    d_out=st.sampled_from([4, 6, 8, 12, 16, 18, 27]),
    d_in=st.sampled_from([4, 6, 9, 12, 20]),
    data=st.data(),
    spectrum=st.sampled_from(SPECTRA),
    seed=st.integers(0, 2**32 - 1),
)
def test_sttp_spectrum_and_dof(env, d_out, d_in, data, spectrum, seed):
    r = data.draw(st.integers(1, min(d_out, d_in, 6)))
    spec = sttp_spec(d_out, d_in, r, spectrum=spectrum)
    assert (
        spec.n_params
        == spec.dof
        == _paper_dof(d_out, d_in, r, spec.modes_out, spec.modes_in, spectrum)
    )
    rng = np.random.default_rng(seed)
    up = [env.asarray(rng.standard_normal((a, b))) for a, b, _ in spec.u_cores]
    vp = [env.asarray(rng.standard_normal((a, b))) for a, b, _ in spec.v_cores]
    s = rng.uniform(0.1, 2.0, r)
    w = env.to_numpy(sttp_matrix(spec, up, vp, env.asarray(s)))
    assert w.shape == (d_out, d_in)
    sv = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(sv[:r], _expected(s, spectrum), atol=1e-12)
    np.testing.assert_allclose(sv[r:], 0, atol=1e-12)


def test_sttp_at_maximal_ranks_is_svdp_in_disguise():
    # Obukhov et al. Sec. 3.3 edge case: R_k = R_k^max gives SVDP's DOF
    spec = sttp_spec(8, 8, 8, spectrum="learned")
    assert spec.dof == svdp_dof(8, 8, 8)


def test_conv_kernel_reshape_and_gradients():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    spec = sttp_spec(8, 4 * 9, 4, modes_out=(2, 4), modes_in=(4, 9))
    up = [
        torch.randn(a, b, dtype=torch.float64, generator=g, requires_grad=True)
        for a, b, _ in spec.u_cores
    ]
    vp = [
        torch.randn(a, b, dtype=torch.float64, generator=g, requires_grad=True)
        for a, b, _ in spec.v_cores
    ]
    s = torch.rand(4, dtype=torch.float64, generator=g, requires_grad=True)
    kernel = sttp_matrix(spec, up, vp, s).reshape(8, 4, 3, 3)
    assert kernel.shape == (8, 4, 3, 3)
    assert torch.autograd.gradcheck(
        lambda a, b: sttp_matrix(spec, [a, *up[1:]], [b, *vp[1:]], s), (up[0], vp[0])
    )
    reg = d_optimal_regularizer(s)
    reg.backward()
    assert s.grad is not None


def test_prime_factors_and_bad_input():
    assert prime_factors(360) == (2, 2, 2, 3, 3, 5)
    with pytest.raises(ValueError, match=r"modes must multiply"):
        sttp_spec(8, 8, 2, modes_out=(2, 2))
    with pytest.raises(ValueError, match=r"rank must be in"):
        sttp_spec(8, 4, 5)
    with pytest.raises(ValueError, match=r"spectrum must be one of"):
        sttp_spec(8, 4, 2, spectrum="free")
