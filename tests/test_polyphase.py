"""polyphase_kernel against Senderovich et al. eq. (8) written out tap by tap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_array

import convsv


def _direct(kernel: np.ndarray, n, stride, dilation, groups) -> np.ndarray:
    """K'[g, o, (c, r), b] = sum of the taps p with p*dil = s*a + r and a = b (mod m)."""
    c_out, c_in_g = kernel.shape[:2]
    ks = kernel.shape[2:]
    m = tuple(v // s for v, s in zip(n, stride))
    phases = math.prod(stride)
    out = np.zeros((groups, c_out // groups, c_in_g * phases, *m), dtype=kernel.dtype)
    kg = kernel.reshape(groups, c_out // groups, c_in_g, *ks)
    for p in np.ndindex(*ks):
        q = [pj * dl for pj, dl in zip(p, dilation)]
        r = np.ravel_multi_index([qj % s for qj, s in zip(q, stride)], stride)
        b = tuple((qj // s) % mj for qj, s, mj in zip(q, stride, m))
        for c in range(c_in_g):
            out[(slice(None), slice(None), c * phases + r, *b)] += kg[
                (slice(None), slice(None), c, *p)
            ]
    return out[0] if groups == 1 else out


CASES = [
    ((4, 3, 3, 3), (6, 8), (2, 2), (1, 1), 1),
    ((6, 2, 5, 3), (4, 6), (2, 3), (1, 2), 3),  # kernel larger than the coarse grid: wraps
    ((4, 2, 7), (6,), (3,), (2,), 2),
    ((2, 2, 2, 3, 2), (4, 3, 2), (2, 1, 2), (1, 1, 1), 1),
]


@pytest.mark.parametrize("case", CASES)
def test_polyphase_kernel_is_eq8_tap_by_tap(env, case):
    shape, n, stride, dilation, groups = case
    w = np.random.default_rng(sum(shape)).standard_normal(shape)
    got = convsv.polyphase_kernel(env.asarray(w), n, stride, dilation=dilation, groups=groups)
    want = _direct(w, n, stride, dilation, groups)
    assert_array(env, got, dtype=env.xp.float64, shape=want.shape)
    np.testing.assert_allclose(env.to_numpy(got), want, rtol=0, atol=1e-14)


def test_default_stride_is_one_and_layout_hwio():
    w = np.random.default_rng(0).standard_normal((3, 2, 3))
    got = convsv.polyphase_kernel(w, 5)
    np.testing.assert_allclose(got, _direct(w, (5,), (1,), (1,), 1), atol=1e-14)
    got = convsv.polyphase_kernel(np.transpose(w, (2, 1, 0)), 5, layout="hwio")
    np.testing.assert_allclose(got, _direct(w, (5,), (1,), (1,), 1), atol=1e-14)


def test_memory_check_names_the_polyphase_kernel_and_counts_the_copy():
    w = np.ones((4, 2, 3, 3))
    # result 4 * 2 * 64 * 8 bytes = 4 KiB; with its reordering copy 8 KiB
    assert convsv.polyphase_kernel(w, 8, 2, memory_limit="8KiB").shape == (4, 8, 4, 4)
    with pytest.raises(
        ValueError,
        match=r"^the polyphase kernel needs about 8 KiB, more than "
        r"memory_limit=7.99 KiB; raise memory_limit",
    ):
        convsv.polyphase_kernel(w, 8, 2, memory_limit=8 * 1024 - 8)
    # groups: each output channel sees c_in / groups inputs, so half the bytes
    assert convsv.polyphase_kernel(
        np.ones((4, 1, 3, 3)), 8, 2, groups=2, memory_limit="4KiB"
    ).shape == (2, 2, 4, 4, 4)


def test_non_divisible_n_is_refused():
    with pytest.raises(ValueError, match=r"needs n divisible by stride.*n=\(5, 5\)"):
        convsv.polyphase_kernel(np.ones((2, 2, 3, 3)), 5, 2)


def test_beyond_the_machine_s_ram_it_says_what_to_use_instead(monkeypatch):
    from convsv import _validation

    monkeypatch.setattr(_validation, "physical_memory", lambda: 2**30)
    with pytest.raises(
        ValueError,
        match=r"the polyphase kernel needs about 1.12 GiB, more than "
        r"this machine's 1 GiB of RAM .*would not help: use "
        r"convsv.symbols\(frequencies=...\) or "
        r"convsv.singular_values, which never build the kernel "
        r"on the whole torus$",
    ):
        convsv.polyphase_kernel(np.ones((64, 64, 3, 3), np.float32), 192, 2)


def test_xp_moves_a_numpy_kernel(env):
    w = np.random.default_rng(3).standard_normal((4, 2, 3, 3))
    got = convsv.polyphase_kernel(w, 6, 2, xp=env.module)
    want = _direct(w, (6, 6), (2, 2), (1, 1), 1)
    assert tuple(got.shape) == want.shape
    assert type(got).__module__.split(".")[0] == type(env.asarray(w)).__module__.split(".")[0]
    np.testing.assert_allclose(env.to_numpy(got), want, atol=1e-14)


@pytest.mark.parametrize(("k", "s", "dl"), [(3, 1, 1), (3, 2, 1), (5, 2, 3), (4, 3, 2), (1, 2, 1)])
def test_unwrapped_phase_matrix_has_no_spare_offsets(k, s, dl):
    # tap p sits at p * dl = s * b + r: phase r = (p dl) % s, coarse offset b = (p dl) // s;
    # unwrapped (size=None), the grid ends at the last tap's offset (gram.py's lag range)
    from convsv.polyphase import axis_phase_matrix

    q = axis_phase_matrix(k, s, dl, None)
    ref = np.zeros((k, s, (k - 1) * dl // s + 1))
    for p in range(k):
        ref[p, (p * dl) % s, (p * dl) // s] = 1.0
    np.testing.assert_array_equal(q, ref)
