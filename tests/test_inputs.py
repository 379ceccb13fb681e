"""Input handling: numbers of every kind, memory budgets, layer objects, autograd, results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Backend
from helpers import assert_array, dense_svd, torch_dense

import convsv
from convsv import _validation
from convsv._validation import (
    as_float,
    as_int,
    env_num_threads,
    format_bytes,
    parse_memory_limit,
)

RNG = np.random.default_rng(1234)
K = RNG.standard_normal((4, 2, 3, 3))  # groups=2 -> 4 input channels


def _reference(n: int, stride: int, groups: int) -> np.ndarray:
    return dense_svd(torch_dense(K, (n, n), (stride, stride), (1, 1), groups, "circular"))


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy-scalar", "numpy-0d", "torch-0d", "list", "numpy-1d"])
def test_geometry_accepts_numpy_and_torch_integers(kind):
    wrap = {
        "numpy-scalar": np.int64,
        "numpy-0d": np.asarray,
        "torch-0d": torch.tensor,
        "list": lambda v: v,
        "numpy-1d": lambda v: v,
    }[kind]
    n = (
        np.array([wrap(6), wrap(6)])
        if kind == "numpy-1d"
        else [wrap(6), wrap(6)]
        if kind == "list"
        else wrap(6)
    )
    sv = convsv.singular_values(K, n, wrap(2), groups=wrap(2))
    ref = _reference(6, 2, 2)
    np.testing.assert_allclose(sv, ref, atol=1e-12 * ref[0])


def test_geometry_accepts_0d_arrays_of_the_backend(env):
    n = env.xp.asarray(6, device=env.device)
    sv = convsv.singular_values(
        env.asarray(K),
        n,
        env.xp.asarray(2, device=env.device),
        groups=env.xp.asarray(2, device=env.device),
    )
    ref = _reference(6, 2, 2)
    assert_array(env, sv, dtype=env.xp.float64, shape=ref.shape)
    np.testing.assert_allclose(env.to_numpy(sv), ref, atol=1e-12 * ref[0])


@pytest.mark.parametrize(
    "value", [6.0, np.float64(6.0), "6", True, np.bool_(True), np.array([[6]])]
)
def test_geometry_refuses_non_integers(value):
    with pytest.raises(TypeError, match=r"^n must be .*got"):
        convsv.singular_values(K, value)


@pytest.mark.parametrize(
    "value",
    [
        np.float32(0.5),
        np.float64(0.5),
        np.array(0.5),
        torch.tensor(0.5),
        torch.tensor(0.5, requires_grad=True),
        torch.tensor(0.5, dtype=torch.float64),
        0.5,
    ],
)
def test_as_float_reads_scalars_of_every_kind(value):
    out = as_float(value, "max_sv", minimum=0.0, min_open=True)
    assert type(out) is float
    assert out == 0.5


@pytest.mark.parametrize(
    ("value", "exc", "pattern"),
    [
        (True, TypeError, r"max_sv must be a real number, got True"),
        (1 + 2j, TypeError, r"max_sv must be a real number"),
        (np.complex64(1), TypeError, r"max_sv must be a real number"),
        ("1.0", TypeError, r"max_sv must be a real number, got '1.0'"),
        (None, TypeError, r"max_sv must be a real number, got None"),
        (np.ones(2), TypeError, r"max_sv must be a real number .*shape \(2,\)"),
        (torch.ones(1, 1), TypeError, r"shape \(1, 1\)"),
        (float("nan"), ValueError, r"max_sv must be finite"),
        (np.float32("inf"), ValueError, r"max_sv must be finite"),
        (0.0, ValueError, r"max_sv must be in \(0, inf\), got 0.0"),
        (-1, ValueError, r"max_sv must be in \(0, inf\), got -1.0"),
    ],
)
def test_as_float_refuses_what_is_not_a_positive_real(value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        as_float(value, "max_sv", minimum=0.0, min_open=True)


def test_as_float_bounds_are_inclusive_unless_open():
    assert as_float(0.0, "tol", minimum=0.0, maximum=1.0, max_open=True) == 0.0
    with pytest.raises(ValueError, match=r"tol must be in \[0, 1\), got 1.0"):
        as_float(1.0, "tol", minimum=0.0, maximum=1.0, max_open=True)
    assert as_float(None, "min_sv", allow_none=True) is None


@pytest.mark.parametrize("value", [np.int64(50), np.int32(50), np.array(50), torch.tensor(50), 50])
def test_as_int_reads_integers_of_every_kind(value):
    assert as_int(value, "iterations", minimum=1) == 50


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (50.0, TypeError),
        (np.float64(50), TypeError),
        (True, TypeError),
        (np.bool_(True), TypeError),
        (torch.tensor(50.0), TypeError),
        (0, ValueError),
    ],
)
def test_as_int_refuses_floats_bools_and_small_values(value, exc):
    with pytest.raises(exc, match=r"iterations must be"):
        as_int(value, "iterations", minimum=1)


def test_decomposition_tolerances_accept_numpy_and_torch_scalars():
    k = RNG.standard_normal((6, 5, 3, 3))
    for tol in (np.float32(0.3), torch.tensor(0.3), np.array(0.3)):
        tt = convsv.tt.decompose(k, tol=tol)
        err = np.linalg.norm(tt.to_full() - k) / np.linalg.norm(k)
        assert err <= 0.3
        tk = convsv.tucker.decompose(k, tol=tol)
        assert np.linalg.norm(tk.to_full() - k) / np.linalg.norm(k) <= 0.3
    with pytest.raises(ValueError, match=r"tol \(a relative tolerance\) must be in \[0, 1\)"):
        convsv.tt.decompose(k, tol=np.float64(1.5))
    with pytest.raises(TypeError, match=r"tol \(a relative tolerance\) must be a real number"):
        convsv.tucker.decompose(k, tol="0.1")


def test_parameterisation_sizes_accept_numpy_integers():
    # Obukhov et al. 2021, Sec. 3.2: d r - r (r + 1) / 2 for St(5, 2)
    assert convsv.stiefel.stiefel_dof(np.int64(5), np.int64(2)) == 7
    spec = convsv.sttp.sttp_spec(np.int64(12), np.int32(8), np.int64(4))
    assert (spec.modes_out, spec.modes_in, spec.rank) == ((2, 2, 3), (2, 2, 2), 4)


# -- memory budgets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("1GB", 10**9),
        ("512MiB", 512 * 2**20),
        ("2 GiB", 2 * 2**30),
        ("1.5e9", 1.5e9),
        ("100 kB", 100_000),
        ("3tib", 3 * 2**40),
        (" 64 B ", 64),
        ("1PiB", 2**50),
    ],
)
def test_memory_limit_strings(text, nbytes):
    assert parse_memory_limit(text) == nbytes


@pytest.mark.parametrize(
    "value",
    [np.int64(2**20), np.float32(2**20), np.array(2**20), torch.tensor(2**20), 2**20, 1048576.0],
)
def test_memory_limit_numbers(value):
    assert parse_memory_limit(value) == 2**20


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        ("lots", ValueError),
        ("1 GB GB", ValueError),
        ("5 parsecs", ValueError),
        ("-1GB", ValueError),
        (0, ValueError),
        (-5.0, ValueError),
        (True, TypeError),
        ([1], TypeError),
    ],
)
def test_memory_limit_refusals_name_the_argument(value, exc):
    with pytest.raises(exc, match=r"^memory_limit must be"):
        parse_memory_limit(value)


def test_memory_limit_string_reaches_the_public_functions():
    with pytest.raises(ValueError, match=r"more than memory_limit=1 KiB"):
        convsv.symbols(K, 6, memory_limit="1KiB")
    with pytest.raises(ValueError, match=r"more than memory_limit=1 KiB"):
        convsv.polyphase_kernel(K, 6, 2, memory_limit="1 KiB")
    with pytest.raises(ValueError, match=r"memory_limit=100 bytes"):
        convsv.singular_values(K, 6, padding="zeros", groups=2, memory_limit="100B")
    sv = convsv.singular_values(K, 6, 2, groups=2, memory_limit="64MiB")
    ref = _reference(6, 2, 2)
    np.testing.assert_allclose(sv, ref, atol=1e-12 * ref[0])


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1 KiB"),
        (195312500000000000.0, "173 PiB"),
        (1.31 * 2**40, "1.31 TiB"),
        (390 * 2**30, "390 GiB"),
        (2**70, "1.02e+03 EiB"),
    ],
)
def test_byte_counts_are_printed_in_sane_units(nbytes, text):
    assert format_bytes(nbytes) == text


def test_symbols_refuses_before_allocating_and_says_what_to_do(monkeypatch):
    monkeypatch.setattr(_validation, "physical_memory", lambda: 64 * 2**30)
    k512 = np.zeros((512, 512, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"symbol blocks.*PiB.*64 GiB of RAM") as info:
        convsv.symbols(k512, 100000)
    assert "raise memory_limit" not in str(info.value)
    assert "would not help" in str(info.value)
    assert "frequencies=" in str(info.value)
    # below the machine's RAM, raising the budget is the advice
    with pytest.raises(ValueError, match=r"raise memory_limit") as info:
        convsv.symbols(k512[:, :, :, :1], 64)
    assert "would not help" not in str(info.value)


def test_full_spectrum_larger_than_ram_is_refused_up_front(monkeypatch):
    monkeypatch.setattr(_validation, "physical_memory", lambda: 2**18)
    with pytest.raises(ValueError, match=r"singular values needs .*operator_norm"):
        convsv.singular_values(np.ones((8, 8, 3, 3)), 64)


def test_sttp_weight_is_memory_checked():
    spec = convsv.sttp.sttp_spec(64, 64, 4)
    u = [np.zeros((a, b)) for a, b, _ in spec.u_cores]
    v = [np.zeros((a, b)) for a, b, _ in spec.v_cores]
    with pytest.raises(ValueError, match=r"64 x 64 STTP weight W needs about 32 KiB"):
        convsv.sttp.sttp_matrix(spec, u, v, np.ones(4), memory_limit="16KiB")
    with pytest.raises(ValueError, match=r"SVDP weight W"):
        convsv.sttp.svdp_matrix(np.zeros((64, 4)), np.zeros((64, 4)), np.ones(4), memory_limit=1000)


# -- environment --------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["two", "0", "-3", "1.5"])
def test_bad_thread_count_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("CONVSV_NUM_THREADS", raw)
    with pytest.raises(
        ValueError,
        match=rf"CONVSV_NUM_THREADS must be a positive integer.*"
        rf"got '{raw}'",
    ):
        env_num_threads(4)


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVSV_NUM_THREADS", " 3 ")
    assert env_num_threads(8) == 3
    monkeypatch.delenv("CONVSV_NUM_THREADS")
    assert env_num_threads(8) == 8


# -- objects that are not kernels ---------------------------------------------------------------


def test_a_torch_layer_points_to_the_adapter():
    layer = torch.nn.Conv2d(2, 4, 3)
    with pytest.raises(
        TypeError,
        match=r"kernel must be an array, got a torch\.nn\.modules"
        r"\.conv\.Conv2d layer object; use convsv\.torch",
    ):
        convsv.singular_values(layer, 8)
    with pytest.raises(TypeError, match=r"layer\.weight"):
        convsv.operator_norm(layer, 8)


def test_grad_requiring_tensor_on_a_host_namespace_is_refused_with_advice(env):
    if env.backend in (Backend.TORCH, Backend.TORCH_CUDA):
        pytest.skip("xp=torch differentiates through convsv")
    k = torch.tensor(K, requires_grad=True)
    with pytest.raises(ValueError, match=r"requires grad.*xp=torch.*detach\(\)"):
        convsv.singular_values(k, 6, groups=2, xp=env.module)


# -- results ------------------------------------------------------------------------------------


def test_results_are_contiguous_and_norms_are_0d_arrays(env):
    k = env.asarray(K)
    sv = convsv.singular_values(k, 8, groups=2)
    norm = convsv.operator_norm(k, 8, groups=2)
    ref = _reference(8, 1, 2)
    assert_array(env, sv, dtype=env.xp.float64, shape=ref.shape)
    assert_array(env, norm, dtype=env.xp.float64, shape=())
    np.testing.assert_allclose(env.to_numpy(sv), ref, atol=1e-12 * ref[0])
    assert abs(float(env.to_numpy(norm)) - ref[0]) <= 1e-12 * ref[0]
    if env.backend is Backend.NUMPY:
        assert type(norm) is np.ndarray
        assert sv.flags.c_contiguous
        assert sv.strides == (8,)
        np.testing.assert_array_equal(torch.from_numpy(sv).numpy(), sv)
    if env.backend in (Backend.TORCH, Backend.TORCH_CUDA):
        assert sv.is_contiguous()


def test_symbols_and_polyphase_results_are_contiguous():
    blocks = convsv.symbols(K, 6, 2, groups=2)
    poly = convsv.polyphase_kernel(K, 6, 2, groups=2)
    assert blocks.flags.c_contiguous
    assert poly.flags.c_contiguous
    torch.from_numpy(blocks)
    torch.from_numpy(poly)
