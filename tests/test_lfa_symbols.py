"""convsv.symbols' keywords: defaults, frequency shapes, n with frequencies, and its errors.

The values are checked against the LFA symbol written out tap by tap
(``test_lfa._direct_symbol``); these cases are the calls the property tests in
tests/test_lfa.py never make (found by mutation testing, ``nox -s mutants``).
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from helpers import assert_array
from test_lfa import _direct_symbol

import convsv

ATOL = 1e-13  # times sum |K|: a sum of <= 9 taps, each with a unit phase


def _want(k: np.ndarray, theta: np.ndarray, stride, dilation, groups) -> np.ndarray:
    blk = _direct_symbol(k.astype(np.complex128), theta, stride, dilation, groups)
    return blk[0] if groups == 1 else blk


def test_defaults_are_stride_1_and_dilation_1(env):
    k = np.random.default_rng(0).standard_normal((3, 2, 3, 3))
    got = env.to_numpy(convsv.symbols(env.asarray(k), (4, 5)))
    assert got.shape == (4, 5, 3, 2)
    for w in np.ndindex(4, 5):
        theta = 2 * np.pi * np.asarray(w) / np.array([4, 5])
        want = _want(k, theta, (1, 1), (1, 1), 1)
        np.testing.assert_allclose(got[w], want, rtol=0, atol=ATOL * np.abs(k).sum())


def test_one_frequency_point_of_shape_d(env):
    # frequencies (d,) is one point: the result is a single block, no frequency axis
    k = np.random.default_rng(1).standard_normal((3, 2, 3, 3))
    theta = np.array([0.3, -1.1])
    got = convsv.symbols(env.asarray(k), stride=2, frequencies=env.asarray(theta))
    assert_array(env, got, dtype=env.xp.complex128, shape=(3, 8))
    want = _want(k, theta, (2, 2), (1, 1), 1)
    np.testing.assert_allclose(env.to_numpy(got), want, rtol=0, atol=ATOL * np.abs(k).sum())


def test_frequencies_with_several_leading_axes_and_n_given(env):
    # n is accepted (and unused) with frequencies; frequencies (2, 3, d) keep their shape;
    # integer angles (radians) are real frequencies too
    k = np.random.default_rng(2).standard_normal((4, 3, 3, 2))
    theta = np.arange(12).reshape(2, 3, 2) - 5
    got = convsv.symbols(
        env.asarray(k), 6, 2, frequencies=env.asarray(theta), dilation=(2, 1), groups=2
    )
    assert_array(env, got, dtype=env.xp.complex128, shape=(2, 3, 2, 2, 12))
    got = env.to_numpy(got)
    for i in np.ndindex(2, 3):
        want = _want(k, theta[i].astype(np.float64), (2, 2), (2, 1), 2)
        np.testing.assert_allclose(got[i], want, rtol=0, atol=ATOL * np.abs(k).sum())


def test_a_numpy_kernel_goes_to_the_namespace_asked_for(env):
    k = np.random.default_rng(3).standard_normal((2, 2, 3))
    got = convsv.symbols(k, 6, xp=env.xp)
    # (on the namespace's default device: a NumPy kernel has no device to keep)
    assert array_api_compat.array_namespace(got).__name__.endswith(env.xp.__name__.split(".")[-1])
    assert got.dtype == env.xp.complex128
    assert tuple(got.shape) == (6, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n": 6, "method": "dense"}, r"method must be one of 'lfa', 'fft', got 'dense'"),
        (
            {"n": 6, "method": "fft", "frequencies": np.zeros((3, 2))},
            r"method='fft' evaluates the grid only",
        ),
        ({"frequencies": np.zeros((3, 2), dtype=bool)}, r"frequencies must be a real array"),
        ({"frequencies": np.zeros((3, 2), dtype=np.complex128)}, r"frequencies must be a real"),
        ({"frequencies": np.float64(0.5)}, r"frequencies must be a real array of shape"),
        ({"frequencies": np.zeros((3, 2)), "stride": (1, 2, 3)}, r"stride must be an int or"),
    ],
)
def test_bad_input_names_the_argument(env, kwargs, pattern):
    k = env.asarray(np.ones((2, 2, 3, 3)))
    freq = kwargs.get("frequencies")
    if freq is not None and np.ndim(freq) > 0 and freq.dtype != bool:
        kwargs = {**kwargs, "frequencies": env.asarray(freq)}
    with pytest.raises(ValueError, match=pattern):
        convsv.symbols(k, **kwargs)


def test_a_python_bool_for_frequencies_is_refused_by_name(env):
    k = env.asarray(np.ones((2, 2, 3, 3)))
    with pytest.raises(TypeError, match=r"frequencies must be a real or complex floating"):
        convsv.symbols(k, frequencies=True)


def test_frequencies_follow_the_kernel_to_its_device(env):
    # a NumPy array of angles with a kernel on a non-default device (array_api_strict):
    # the angles must be moved to the kernel's device, not to the namespace's default
    k = np.random.default_rng(11).standard_normal((2, 3, 3, 3))
    theta = np.array([[0.3, -1.2], [2.0, 0.5]])
    got = convsv.symbols(env.asarray(k), frequencies=theta)
    assert array_api_compat.device(got) == array_api_compat.device(env.asarray(k))
    want = np.stack([_want(k, t, (1, 1), (1, 1), 1) for t in theta])
    np.testing.assert_allclose(env.to_numpy(got), want, atol=ATOL * np.abs(k).sum())


def test_n_is_still_checked_when_frequencies_are_given():
    k = np.random.default_rng(12).standard_normal((2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"^n must be >= 1"):
        convsv.symbols(k, 0, frequencies=np.zeros((1, 2)))


def _symbol_bytes(c_out, c_in, groups, phases, taps, n_freq, cbytes, padded):
    # the estimate _check_symbol_memory documents: the result and its frequency-major copy,
    # the tap-phase matrix (complex128 on the host, then a copy in the kernel's precision),
    # and for the FFT path the polyphase kernel, its complex copy and 3 complex128 blocks of
    # pocketfft's workspace
    entries = c_out * (c_in // groups) * phases
    nbytes = 2 * n_freq * entries * cbytes + n_freq * phases * taps * (2 * 16 + cbytes)
    if padded:
        nbytes += n_freq * (2 * entries * cbytes + 3 * entries * 16)
    return nbytes


@pytest.mark.parametrize("method", ["fft", "lfa"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symbols_memory_estimate_is_the_documented_sum(method, dtype):
    k = np.random.default_rng(13).standard_normal((6, 2, 3, 3)).astype(dtype)
    cbytes = 8 if dtype == np.float32 else 16
    # groups=2, stride 2: 4 phases, 4 x 5 coarse grid, blocks 3 x 4 per group
    need = _symbol_bytes(6, 4, 2, 4, 9, 20, cbytes, method == "fft")
    kw = {"stride": 2, "groups": 2, "method": method}
    with pytest.raises(ValueError, match="^20 symbol blocks") as info:
        convsv.symbols(k, (8, 10), memory_limit=need - 1, **kw)
    assert str(info.value).startswith("20 symbol blocks of 6 x 8 needs about ")
    assert str(info.value).endswith(
        "; raise memory_limit, or ask for fewer frequencies (frequencies=...)"
    )
    assert convsv.symbols(k, (8, 10), memory_limit=need, **kw).shape == (4, 5, 2, 3, 8)


def test_symbols_beyond_ram_offers_the_alternative(monkeypatch):
    from convsv import _validation

    monkeypatch.setattr(_validation, "physical_memory", lambda: 2**20)
    k = np.zeros((64, 64, 3, 3))
    with pytest.raises(ValueError, match="^1024 symbol blocks") as info:
        convsv.symbols(k, 32, memory_limit=2**10)
    assert str(info.value).startswith("1024 symbol blocks of 64 x 64 needs about ")
    assert str(info.value).endswith(
        "raising memory_limit would not help: evaluate fewer frequencies at a time "
        "(frequencies=...), or use convsv.singular_values / operator_norm, which work in chunks"
    )
