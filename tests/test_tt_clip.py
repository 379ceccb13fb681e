"""convsv.tt.clip: the keywords it hands on, its default stride, and its refusals.

The clipped layer is checked on its dense operator (tests/helpers.torch_dense of the full
kernel, numpy.linalg SVD), independently of convsv. Found by mutation testing
(``nox -s mutants``): tests/test_projection.py::test_tt_clip always passes ``stride`` and
``iterations`` and never ``xp``, ``full_output`` or an iteration limit that binds.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
from helpers import dense_svd, torch_dense

import convsv
import convsv.tt as tt


def _cores(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((6, 3)),
        rng.standard_normal((4, 3, 3, 3)),
        rng.standard_normal((4, 5)),
    )


def _dense_smax(env, t: tt.TTKernel, n: int, stride: int) -> tuple[float, float]:
    """s_max of the layer's dense operator and the float64 SVD's own relative rounding."""
    a = torch_dense(env.to_numpy(t.to_full()), (n, n), (stride, stride), (1, 1), 1, "circular")
    return float(dense_svd(a)[0]), 8 * np.finfo(np.float64).eps * math.sqrt(max(a.shape))


def test_default_stride_is_1(env):
    t = tt.TTKernel(*(env.asarray(c) for c in _cores()))
    c = tt.clip(t, 6, 1.0, iterations=300)
    s_max, rounding = _dense_smax(env, c, 6, 1)
    assert s_max <= 1.0 + rounding
    assert s_max >= 0.999  # clipped to the bound (the input's norm is ~20)


def test_keywords_reach_the_core_clip_and_the_bound_holds_unconverged(env):
    # one iteration with tol=0 cannot converge: convsv.clip's warning comes through, and
    # the returned layer still has norm <= max_sv (issue 14: whether or not it converged)
    t = tt.TTKernel(*(env.asarray(c) for c in _cores(4)))
    with pytest.warns(convsv.ClipWarning, match=r"stopped after 1 iterations"):
        c = tt.clip(t, 8, 0.5, 2, iterations=1, tol=0.0)
    s_max, rounding = _dense_smax(env, c, 8, 2)
    assert s_max <= 0.5 * (1.0 + rounding)


def test_numpy_cores_go_to_the_namespace_asked_for(env):
    t = tt.TTKernel(*_cores(5))
    c = tt.clip(t, 6, 1.0, iterations=50, xp=env.xp)
    want = env.xp.__name__.split(".")[-1]
    for core in (c.k1, c.k2, c.k3):
        assert array_api_compat.array_namespace(core).__name__.split(".")[-1] == want


def test_full_output_is_refused(env):
    t = tt.TTKernel(*(env.asarray(c) for c in _cores()))
    with pytest.raises(ValueError, match=r"returns a TTKernel; call convsv.clip on the middle"):
        tt.clip(t, 6, 1.0, full_output=True)


def test_the_bound_allows_for_the_outer_cores_norms(env, monkeypatch):
    # ||K|| <= ||Q1|| ||core|| ||Q3||: tt.clip leaves room for the outer cores' norms,
    # which are 1 only to rounding. Outer cores of norm 1.5 and 1.25 (far from rounding)
    # make that room visible: the layer must still end at norm <= max_sv.
    orthonormalize = tt.orthonormalize

    def scaled(t: tt.TTKernel, *, xp=None) -> tt.TTKernel:
        o = orthonormalize(t, xp=xp)
        return tt.TTKernel(1.5 * o.k1, o.k2, 1.25 * o.k3)

    monkeypatch.setattr(tt, "orthonormalize", scaled)
    t = tt.TTKernel(*(env.asarray(c) for c in _cores(6)))
    c = tt.clip(t, 6, 1.0, iterations=300)
    s_max, rounding = _dense_smax(env, c, 6, 1)
    assert s_max <= 1.0 + rounding
    assert s_max >= 0.999


def test_a_layout_other_than_oihw_is_refused(env):
    # the middle core is (r2, r1, *k): read as hwio, a square core is another layer, whose
    # clip left the TT layer at norm 1.5 for max_sv = 1 (helper-31's review)
    t = tt.TTKernel(*(env.asarray(c) for c in _cores()))
    with pytest.raises(ValueError, match=r"layout must be 'oihw' for a TTKernel"):
        tt.clip(t, 6, 1.0, layout="hwio")
    c = tt.clip(t, 6, 1.0, layout="oihw", iterations=300)
    s_max, rounding = _dense_smax(env, c, 6, 1)
    assert s_max <= 1.0 + rounding


def test_min_sv_may_equal_max_sv(env):
    # the room left for the outer cores applies to min_sv too: no error quoting a
    # max_sv the caller never passed
    t = tt.TTKernel(*(env.asarray(c) for c in _cores()))
    with pytest.warns(convsv.ClipWarning):  # an isometry is out of reach of 3x3 taps
        c = tt.clip(t, 6, 1.0, min_sv=1.0, iterations=20)
    s_max, rounding = _dense_smax(env, c, 6, 1)
    assert s_max <= 1.0 + rounding
