"""convsv.krylov.svds against numpy.linalg.svd of dense matrices with prescribed spectra."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_array
from hypothesis import given
from hypothesis import strategies as st

from convsv.krylov import KrylovInfo, default_tol, svds


def prescribed(rows: int, cols: int, s: np.ndarray, *, cplx: bool, seed: int) -> np.ndarray:
    """``Q1 diag(s) Q2^H`` with Haar-like random orthonormal factors."""
    rng = np.random.default_rng(seed)

    def frame(n: int) -> np.ndarray:
        z = rng.standard_normal((n, len(s)))
        if cplx:
            z = z + 1j * rng.standard_normal((n, len(s)))
        return np.linalg.qr(z)[0]

    return (frame(rows) * s) @ frame(cols).conj().T


def spectrum(kind: str, r: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    s = np.sort(rng.uniform(0.1, 1.0, r))[::-1]
    if kind == "clustered":  # top three within 1e-6 of each other
        s[:3] = [2.0, 2.0 - 2e-6, 2.0 - 4e-6]
    elif kind == "repeated":
        s[:3] = 2.0
        s[-3:] = 0.01
    elif kind == "deficient":  # rank r - 6
        s[-6:] = 0.0
    elif kind == "graded":
        s = np.logspace(0, -3, r)
    elif kind == "bottom":  # a bottom separated from the rest (the slow end: module doc)
        s[-3:] = [0.03, 0.02, 0.01]
    return s


DTYPES = {
    "float32": ("float32", False),
    "float64": ("float64", False),
    "complex64": ("complex64", True),
    "complex128": ("complex128", True),
}


def run(env, a: np.ndarray, dtype_name: str, **kw):
    xp = env.xp
    dt = getattr(xp, dtype_name)
    aa = env.asarray(a.astype(dtype_name))
    ah = (
        xp.conj(xp.permute_dims(aa, (1, 0)))
        if xp.isdtype(dt, "complex floating")
        else xp.permute_dims(aa, (1, 0))
    )
    calls = {"n": 0}

    def mv(x):
        calls["n"] += 1
        return xp.matmul(aa, x)

    def rmv(y):
        calls["n"] += 1
        return xp.matmul(ah, y)

    out = svds(mv, rmv, a.shape, dtype=dt, device=env.device, xp=xp, **kw)
    return (*out, calls["n"], dt)


def matvec_error(a: np.ndarray, dtype_name: str) -> float:
    """Proven ``||fl(A x) - A x|| <= gamma_cols || |A| ||_2 ||x||`` (Higham, eq. 3.11)."""
    eps = np.finfo(dtype_name).eps / 2
    g = a.shape[1] * eps / (1 - a.shape[1] * eps) * (4 if np.iscomplexobj(a) else 1)
    return g * np.linalg.norm(np.abs(a), 2)


class TestSvds:
    @pytest.mark.parametrize(
        ("dtype_name", "rows", "cols"),
        [("float32", 90, 60), ("float64", 60, 90), ("complex64", 60, 90), ("complex128", 90, 60)],
    )
    @pytest.mark.parametrize("kind", ["clustered", "repeated", "deficient", "graded"])
    def test_largest(self, env, dtype_name, kind, rows, cols):
        name, cplx = DTYPES[dtype_name]
        s = spectrum(kind, min(rows, cols), seed=rows)
        a = prescribed(rows, cols, s, cplx=cplx, seed=cols)
        k = 4
        single = name in ("float32", "complex64")
        tol = 1e-5 if single else 1e-10
        err = matvec_error(a, name)
        u, sv, vh, info, calls, dt = run(env, a, name, k=k, tol=tol, matvec_error=err)
        xp = env.xp
        rdt = xp.float32 if single else xp.float64
        assert_array(env, sv, dtype=rdt, shape=(k,))
        assert_array(env, u, dtype=dt, shape=(rows, k))
        assert_array(env, vh, dtype=dt, shape=(k, cols))
        assert isinstance(info, KrylovInfo)
        assert info.converged
        assert info.matvecs == calls
        ref = np.linalg.svd(a, compute_uv=False)
        smax = ref[0]
        eps = float(np.finfo(name).eps)
        got = env.to_numpy(sv).astype(np.float64)
        assert np.all(np.diff(got) <= 0)
        # a Ritz value is within its residual of a singular value (<= tol * smax)
        assert np.abs(got - ref[:k]).max() <= tol * smax + 10 * eps * smax
        # and, isolated or exactly repeated, within ~residual**2 / gap (measured <= 17 eps)
        assert np.abs(got - ref[:k]).max() <= 40 * eps * smax
        assert max(info.residuals) <= tol * got[0]
        un, vn = env.to_numpy(u), env.to_numpy(vh)
        # A v_i = s_i u_i and A^H u_i = s_i v_i up to the residual
        r1 = np.linalg.norm(a @ vn.conj().T - un * got, axis=0)
        r2 = np.linalg.norm(a.conj().T @ un - vn.conj().T * got, axis=0)
        assert max(r1.max(), r2.max()) <= tol * smax + 20 * eps * smax
        # orthonormal up to rounding that restarts accumulate (measured <= 32 eps)
        assert np.abs(un.conj().T @ un - np.eye(k)).max() <= 64 * eps
        assert np.abs(vn @ vn.conj().T - np.eye(k)).max() <= 64 * eps
        # certified lower bound: below the truth, and tight
        assert info.lower <= ref[0]
        # ... and tight: it gives up the residual and the matvec's error bound only
        assert info.lower >= ref[0] * (1 - tol) - 1.01 * err - 4 * eps * ref[0]

    @pytest.mark.parametrize("kind", ["deficient", "repeated", "bottom"])
    @pytest.mark.parametrize(
        ("rows", "cols", "dtype_name"),
        [(70, 40, "float64"), (40, 70, "complex128"), (50, 50, "float32")],
    )
    def test_smallest(self, env, kind, rows, cols, dtype_name):
        name, cplx = DTYPES[dtype_name]
        s = spectrum(kind, min(rows, cols), seed=cols)
        a = prescribed(rows, cols, s, cplx=cplx, seed=rows)
        k = 3
        single = name == "float32"
        tol = 1e-5 if single else 1e-10
        u, sv, vh, info, _, _ = run(env, a, name, k=k, which="smallest", tol=tol)
        assert info.converged
        assert info.lower is None
        ref = np.linalg.svd(a, compute_uv=False)
        eps = float(np.finfo(name).eps)
        got = env.to_numpy(sv).astype(np.float64)
        assert np.all(np.diff(got) <= 0)
        assert np.abs(got - ref[-k:]).max() <= tol * ref[0] + 10 * eps * ref[0]
        un, vn = env.to_numpy(u), env.to_numpy(vh)
        r1 = np.linalg.norm(a @ vn.conj().T - un * got, axis=0)
        assert r1.max() <= tol * ref[0] + 20 * eps * ref[0]

    def test_default_tol_and_k_all(self, env):
        # k = min(rows, cols): the basis is complete and the answer exact
        a = prescribed(30, 12, spectrum("graded", 12, 0), cplx=False, seed=1)
        _, sv, _, info, _, _ = run(env, a, "float64", k=12)
        assert info.converged
        ref = np.linalg.svd(a, compute_uv=False)
        assert np.abs(env.to_numpy(sv) - ref).max() <= 50 * np.finfo(float).eps
        assert default_tol(env.xp, env.xp.float64) == pytest.approx(1.49e-8, rel=1e-2)
        assert default_tol(env.xp, env.xp.complex64) == pytest.approx(3.45e-4, rel=1e-2)

    def test_zero_operator(self, env):
        a = np.zeros((20, 10))
        _, sv, _, info, _, _ = run(env, a, "float64", k=2)
        assert info.converged
        assert np.all(env.to_numpy(sv) == 0)
        assert info.lower == 0.0

    def test_warm_start_pays(self, env):
        s = np.linspace(1.0, 0.9, 150)  # small relative gap: slow from a random start
        s[0] = 1.0 + 1e-3
        a = prescribed(200, 150, s, cplx=False, seed=3)
        v_top = np.linalg.svd(a)[2][0]
        guess = v_top + 1e-3 * np.random.default_rng(0).standard_normal(150)
        _, _, _, cold, _, _ = run(env, a, "float64", tol=1e-10)
        _, sv, _, warm, _, _ = run(env, a, "float64", tol=1e-10, v0=env.asarray(guess))
        assert warm.converged
        assert cold.converged
        assert warm.iterations < cold.iterations
        assert abs(float(sv[0]) - s[0]) <= 1e-10

    @pytest.mark.parametrize(
        ("kw", "word"),
        [
            ({"k": 0}, "k"),
            ({"k": 11}, "k"),
            ({"which": "biggest"}, "which"),
            ({"tol": -1.0}, "tol"),
            ({"maxiter": 0}, "maxiter"),
            ({"ncv": 0}, "ncv"),
            ({"matvec_error": float("nan")}, "matvec_error"),
        ],
    )
    def test_bad_input(self, env, kw, word):
        a = np.eye(20, 10)
        with pytest.raises(ValueError, match=word):
            run(env, a, "float64", **kw)

    def test_bad_v0(self, env):
        with pytest.raises(ValueError, match="v0"):
            run(env, np.eye(20, 10), "float64", v0=env.asarray(np.ones(20)))

    def test_not_converged_reports_it(self, env):
        s = np.linspace(1.0, 0.99, 120)
        a = prescribed(120, 120, s, cplx=False, seed=4)
        _, _, _, info, _, _ = run(env, a, "float64", tol=1e-14, maxiter=25, ncv=20)
        assert not info.converged
        assert info.iterations <= 25 + 20


@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    cplx=st.booleans(),
    data=st.data(),
)
def test_random_shapes(env, rows, cols, seed, cplx, data):
    r = min(rows, cols)
    k = data.draw(st.integers(1, r))
    which = data.draw(st.sampled_from(["largest", "smallest"]))
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, cols))
    if cplx:
        a = a + 1j * rng.standard_normal((rows, cols))
    _, sv, _, info, _, _ = run(
        env, a, "complex128" if cplx else "float64", k=k, which=which, tol=1e-10
    )
    ref = np.linalg.svd(a, compute_uv=False)
    ref = ref[:k] if which == "largest" else ref[r - k :]
    assert info.converged
    assert np.abs(env.to_numpy(sv) - ref).max() <= 1e-10 * ref.max(initial=1) + 1e-13
