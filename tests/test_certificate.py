"""The GPU certificate (convsv._backends.certified_svdvals) at real block sizes.

No GPU is needed: LAPACK's factors, made on the host, stand in for cuSOLVER's gesvda.
Correct factors must be accepted (none recomputed) and damaged ones rejected.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from convsv._backends import certified_svdvals


def _blocks(shape, complex_, graded=False):
    rng = np.random.default_rng(sum(shape) + complex_)
    a = rng.standard_normal(shape)
    if complex_:
        a = a + 1j * rng.standard_normal(shape)
    if not graded:  # like symbol blocks; the hardest case for the old sqrt(m) threshold
        return a
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    return (u * np.logspace(0, -8, min(shape[-2:]))) @ vh  # ill-conditioned


def _factors(env, tall):
    u, s, vh = np.linalg.svd(env.to_numpy(tall), full_matrices=False)
    return env.asarray(u), env.asarray(s), env.asarray(np.conj(np.swapaxes(vh, -1, -2)))


@pytest.mark.parametrize(("complex_", "graded"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("shape", [(4, 64, 64), (1, 256, 128)])
def test_correct_lapack_factors_are_accepted(env, shape, complex_, graded):
    a = _blocks(shape, complex_, graded)
    ref = np.linalg.svd(a, compute_uv=False)
    calls = []

    def exact(b):
        calls.append(int(b.shape[0]))
        return env.xp.linalg.svdvals(b)

    with threadpool_limits(1):
        got = env.to_numpy(
            certified_svdvals(env.asarray(a), lambda t: _factors(env, t), exact, env.xp)
        )
    assert calls == []
    # the documented per-value bound, 8 m eps s_max; measured error ~1e-15 s_max
    m = max(shape[-2:])
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * m * np.finfo(np.float64).eps * ref.max())


@pytest.mark.parametrize("damage", [1e-11, -3e-12])
@pytest.mark.parametrize("shape", [(2, 64, 64), (2, 256, 128)])
def test_damaged_factors_are_rejected(env, shape, damage):
    # 8 m eps is 1.1e-13 (m=64) and 4.5e-13 (m=256): values off by more are recomputed
    a = _blocks(shape, True, graded=True)
    ref = np.linalg.svd(a, compute_uv=False)
    bad = np.zeros(shape[0], dtype=bool)
    bad[1] = True
    calls = []

    def fast(tall):
        u, s, v = _factors(env, tall)
        s = env.to_numpy(s)
        s[bad, 0] *= 1 + damage  # one value silently off, factors consistent-looking
        return u, env.asarray(s), v

    def exact(b):
        calls.append(int(b.shape[0]))
        return env.xp.linalg.svdvals(b)

    with threadpool_limits(1):
        got = env.to_numpy(certified_svdvals(env.asarray(a), fast, exact, env.xp))
    assert calls == [1]
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * max(shape[-2:]) * 2.3e-16)
