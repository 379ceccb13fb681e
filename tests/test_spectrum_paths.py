"""spectrum.py's routing: chunks, conjugate symmetry, memory checks and the info it reports.

Each test pins one decision of :mod:`convsv.spectrum` that the end-to-end accuracy tests
pass through without noticing (found by mutation testing, ``nox -s mutants``): the
frequency chunks and the mirror frequencies a real kernel skips, the Gram solver's
per-block order, which memory budget each path checks, and the result's dtype. The
references are dense matrices built by torch.nn.functional.conv* on basis signals.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import assert_array, dense_svd, torch_dense

import convsv
import convsv._validation

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)


def _dense_tol(ref: np.ndarray) -> float:
    """What a float64 dense SVD of the reference operator is accurate to (8 sqrt(size) eps
    s_max; the dense SVD's own error grows with its size)."""
    return 8 * np.sqrt(ref.size) * EPS64 * ref[0]


def _smallest_accepted_limit(k, n, stride, **kw) -> int:
    """The smallest memory_limit (bytes) singular_values accepts, by bisection: with it
    every chunk is one frequency row (the budget holds one row of blocks, not two)."""
    lo, hi = 1, 2**24
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convsv.singular_values(k, n, stride, memory_limit=mid, **kw)
        except ValueError as err:
            if "one frequency slice" not in str(err):
                raise
            lo = mid
        else:
            hi = mid
    return hi


# Real kernels store half of the last frequency axis; the skipped mirror frequencies are
# restored per chunk (d > 1) or on the whole chunked half axis (d = 1). Odd and even grids
# differ in which half-axis entries have a distinct mirror.
CASES = [
    # (kernel shape, n, stride)
    ((3, 2, 3), (14,), (1,)),  # 1-D, even grid: 8 stored frequencies, 6 mirrored
    ((3, 2, 3), (13,), (1,)),  # 1-D, odd grid
    ((4, 2, 3), (18,), (2,)),  # 1-D strided, odd coarse grid 9
    ((3, 2, 3, 3), (6, 7), (1, 1)),  # 2-D, odd last axis
    ((4, 2, 3, 3), (6, 10), (2, 2)),  # 2-D strided, odd coarse last axis 5
    ((3, 2, 3, 3), (5, 8), (1, 1)),  # 2-D, even last axis
]


@pytest.mark.parametrize(("shape", "n", "stride"), CASES)
@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("chunked", [False, True])
def test_real_kernels_restore_every_mirror_frequency(env, shape, n, stride, solver, chunked):
    w = np.random.default_rng(sum(shape) + len(n)).standard_normal(shape)
    k = env.asarray(w)
    limit = _smallest_accepted_limit(k, n, stride, solver=solver) if chunked else None
    ref = dense_svd(torch_dense(w, n, stride, (1,) * len(n), 1, "circular"))
    got = convsv.singular_values(k, n, stride, solver=solver, memory_limit=limit)
    assert_array(env, got, dtype=env.xp.float64, shape=ref.shape)
    err = np.abs(env.to_numpy(got) - ref)
    if solver == "svd":
        # the float64 dense SVD is the less accurate side (24.6 eps s_max at n=13 against
        # a 40-digit mpmath SVD of the blocks, where convsv is off by 1.0 eps s_max)
        assert err.max() <= _dense_tol(ref), err.max() / (EPS64 * ref[0])
    else:
        # the Gram route's rule (tests/test_accuracy.py): eps s_max^2 / s per value
        size = min(shape[0], shape[1] * int(np.prod(stride)))
        bound = 10 * size * EPS64 * ref[0] ** 2 / np.maximum(ref, 1e-300) + 4 * EPS64 * ref[0]
        assert np.all(err <= bound), (err / bound).max()


def test_complex_kernels_take_every_frequency_in_chunks(env):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 2, 3)) + 1j * rng.standard_normal((3, 2, 3))
    k = env.asarray(w)
    limit = _smallest_accepted_limit(k, (11,), (1,))
    ref = dense_svd(torch_dense(w, (11,), (1,), (1,), 1, "circular"))
    got = convsv.singular_values(k, 11, memory_limit=limit)
    assert_array(env, got, dtype=env.xp.float64, shape=ref.shape)
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


def test_fft_method_checks_its_own_memory(env):
    # the FFT path holds the whole padded polyphase kernel: a budget the chunked LFA
    # path works in must refuse it (and still computes it with a larger budget)
    w = np.random.default_rng(3).standard_normal((4, 3, 3, 3))
    k = env.asarray(w)
    limit = _smallest_accepted_limit(k, (16, 16), (2, 2))
    with pytest.raises(ValueError, match=r"FFT of the padded polyphase kernel"):
        convsv.singular_values(k, 16, 2, method="fft", memory_limit=limit)
    with pytest.raises(ValueError, match=r"FFT of the padded polyphase kernel"):
        convsv.operator_norm(k, 16, 2, method="fft", memory_limit=limit)
    # a budget that holds exactly the symbols the FFT produces (8 x 5 frequencies of the
    # half spectrum, blocks 4 x 12 complex128: 30720 bytes) cannot hold their computation
    with pytest.raises(ValueError, match=r"FFT of the padded polyphase kernel"):
        convsv.singular_values(k, 16, 2, method="fft", memory_limit=8 * 5 * 4 * 12 * 16)
    ref = dense_svd(torch_dense(w, (16, 16), (2, 2), (1, 1), 1, "circular"))
    got = convsv.singular_values(k, 16, 2, method="fft")
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize(
    ("shape", "n", "stride"),
    [((8, 4, 3, 3), (12, 20), 2), ((6, 4, 5), 30, 3), ((16, 8, 3, 3), 24, 2)],
)
def test_fft_memory_check_covers_the_measured_peak(dtype, shape, n, stride, monkeypatch):
    # NumPy only: tracemalloc sees NumPy's allocations. The check must refuse a budget
    # equal to the measured peak (float32 used to accept half of it: pocketfft transforms
    # single precision in double) and accept 2.5 times it.
    import tracemalloc

    monkeypatch.setenv("CONVSV_NUM_THREADS", "1")
    rng = np.random.default_rng(5)
    k = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        k = k + 1j * rng.standard_normal(shape)
    k = k.astype(dtype)
    convsv.singular_values(k, n, stride, method="fft")
    tracemalloc.start()
    try:
        convsv.singular_values(k, n, stride, method="fft")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with pytest.raises(ValueError, match=r"memory_limit"):
        convsv.singular_values(k, n, stride, method="fft", memory_limit=peak)
    convsv.singular_values(k, n, stride, method="fft", memory_limit=2.5 * peak)


@pytest.mark.parametrize(
    ("kw", "method", "mode"),
    [
        ({}, "lfa", "periodic"),
        ({"padding": 1, "padding_mode": "circular"}, "lfa", "circular"),
        ({"padding": "zeros"}, "dense", "centred"),
        ({"padding": 1}, "dense", "zeros"),
        ({"padding": 1, "padding_mode": "reflect"}, "dense", "reflect"),
    ],
)
def test_full_output_reports_path_mode_and_torus(env, kw, method, mode):
    k = env.asarray(np.random.default_rng(0).standard_normal((4, 3, 3, 3)))
    n = (6, 5)
    _, info = convsv.singular_values(k, n, full_output=True, **kw)
    assert info.method == method
    assert info.mode == mode
    assert isinstance(info.torus, tuple)
    if method == "lfa":
        assert info.torus == n  # the layer is the periodic layer on its own input
    else:
        # a torus that holds the input and (some of) the 2 padded positions per axis
        assert all(ni < t <= ni + 2 for ni, t in zip(n, info.torus)), info.torus


def test_result_must_fit_in_ram(env, monkeypatch):
    # 4 x 3 x 3 x 3 float32 on 8 x 8: 192 singular values of 4 bytes; the check allows for
    # the copy sorting makes (2 x 768 bytes) and refuses one byte less
    k = env.asarray(np.ones((4, 3, 3, 3), dtype=np.float32))
    monkeypatch.setattr(convsv._validation, "physical_memory", lambda: 2 * 192 * 4)
    assert convsv.singular_values(k, 8).shape == (192,)
    monkeypatch.setattr(convsv._validation, "physical_memory", lambda: 2 * 192 * 4 - 1)
    with pytest.raises(ValueError, match=r"the 192 singular values.*operator_norm"):
        convsv.singular_values(k, 8)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_operator_norm_of_a_non_periodic_layer(env, dtype):
    w = np.random.default_rng(1).standard_normal((5, 3, 3, 3)).astype(dtype)
    ref = dense_svd(torch_dense(w, (6, 7), (1, 1), (1, 1), 1, "zeros"))
    got = convsv.operator_norm(env.asarray(w), (6, 7), padding="zeros", method="dense")
    rdt = getattr(env.xp, dtype)
    assert_array(env, got, dtype=rdt, shape=())
    eps = EPS32 if dtype == "float32" else EPS64
    # one dense SVD of a 210 x 126 operator: measured 1.2 eps s_max (float32)
    assert abs(float(env.to_numpy(got)) - ref[0]) <= 8 * eps * ref[0]


def test_explicit_memory_limit_governs_the_dense_path(env, monkeypatch):
    # the caller's budget, not the default, decides whether the dense operator is built
    # (here the default is made tiny; a real case: memory_limit="8GiB" for a 2 GiB operator)
    w = np.random.default_rng(2).standard_normal((3, 2, 3, 3))
    k = env.asarray(w)
    monkeypatch.setattr(convsv._validation, "DEFAULT_MEMORY_LIMIT", 1024)
    with pytest.raises(ValueError, match=r"memory_limit"):
        convsv.operator_norm(k, 6, padding="zeros", method="dense")
    ref = dense_svd(torch_dense(w, (6, 6), (1, 1), (1, 1), 1, "zeros"))
    got = convsv.operator_norm(k, 6, padding="zeros", method="dense", memory_limit=2**24)
    assert abs(float(env.to_numpy(got)) - ref[0]) <= _dense_tol(ref)
    sv = convsv.singular_values(k, 6, padding="zeros", memory_limit=2**24)
    np.testing.assert_allclose(env.to_numpy(sv), ref, rtol=0, atol=_dense_tol(ref))


@pytest.mark.parametrize(("shape", "n", "stride"), [CASES[2], CASES[4]])
def test_worker_threads_split_the_frequencies_and_keep_the_result(
    env, monkeypatch, shape, n, stride
):
    # with two workers the first frequency axis is cut into several chunks per worker
    # (load balance); the union of the chunks must still be the whole spectrum
    monkeypatch.setenv("CONVSV_NUM_THREADS", "2")
    w = np.random.default_rng(9).standard_normal(shape)
    ref = dense_svd(torch_dense(w, n, stride, (1,) * len(n), 1, "circular"))
    got = convsv.singular_values(env.asarray(w), n, stride)
    assert_array(env, got, dtype=env.xp.float64, shape=ref.shape)
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_a_chunk_budget_counts_the_blocks_of_one_frequency_row(env, dtype, solver):
    # memory_limit budgets one chunk: at least one row of symbol blocks (kernel 4 x 3 x 3 x 3,
    # stride 2 on 8 x 10: coarse grid 4 x 5, 3 stored frequencies per row for a real
    # kernel, blocks 4 x 12 in complex64/128) plus, per block, the contraction producing it
    # and LAPACK's copy: _BLOCK_OVERHEAD = 4 block sizes on the CPU (no GPU workspace)
    k = env.asarray(np.random.default_rng(4).standard_normal((4, 3, 3, 3)).astype(dtype))
    row = 3 * 4 * 12 * (8 if dtype == "float32" else 16)
    limit = _smallest_accepted_limit(k, (8, 10), 2, solver=solver)
    if env.backend.value in ("cupy", "torch-cuda"):
        assert limit > row  # the certified GPU solver holds more (svd_workspace)
    else:
        assert limit == 4 * row


def test_a_half_axis_in_exactly_two_chunks(env):
    # 1-D real kernel on n = 14: 8 stored frequencies; a budget of 4 rows makes two chunks,
    # whose mirror frequencies are restored across the chunk boundary
    w = np.random.default_rng(12).standard_normal((3, 2, 3))
    k = env.asarray(w)
    per_row = _smallest_accepted_limit(k, (14,), (1,))
    ref = dense_svd(torch_dense(w, (14,), (1,), (1,), 1, "circular"))
    got = convsv.singular_values(k, 14, memory_limit=4 * per_row)
    assert_array(env, got, dtype=env.xp.float64, shape=ref.shape)
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


def test_svd_selects_its_blocks_without_a_progress_bar(env, capsys):
    # convsv.svd has no progress option: the block selection it runs through the chunked
    # solver must stay silent (and pick the blocks that hold the top values)
    w = np.random.default_rng(13).standard_normal((4, 3, 3, 3))
    ref = dense_svd(torch_dense(w, (6, 6), (1, 1), (1, 1), 1, "circular"))
    _, s, _ = convsv.svd(env.asarray(w), 6, k=3)
    assert capsys.readouterr().err == ""
    np.testing.assert_allclose(env.to_numpy(s), ref[:3], rtol=0, atol=_dense_tol(ref))


def test_explicit_krylov_method_on_a_zero_padded_layer():
    # method="krylov" named explicitly (not only "auto") takes the Krylov path of a layer
    # that is not periodic; reference: the dense matrix of F.conv2d on basis images
    import torch

    from convsv.real_layers import KrylovNormInfo

    w = np.random.default_rng(21).standard_normal((3, 4, 3, 3))
    basis = torch.eye(4 * 7 * 7, dtype=torch.float64).reshape(-1, 4, 7, 7)
    cols = torch.nn.functional.conv2d(basis, torch.from_numpy(w), padding=1)
    ref = float(np.linalg.svd(cols.reshape(basis.shape[0], -1).numpy(), compute_uv=False)[0])
    value, info = convsv.operator_norm(w, 7, padding=1, method="krylov", full_output=True)
    assert isinstance(info, KrylovNormInfo)
    assert info.lower <= ref * (1 + 1e-13)
    assert ref <= info.upper * (1 + 1e-13)
    assert abs(float(value) - ref) <= 1e-8 * ref


# --- the block paths, options and messages that mutation testing found unpinned (mut3) ---

# Gram blocks are formed on the smaller side: tall blocks (c_out > c_in * phases) take
# P^H P, wide ones P P^H; the other side would add zero eigenvalues to the multiset.
GRAM_SHAPES = [(6, 2, 3, 3), (2, 5, 3, 3)]


@pytest.mark.parametrize("shape", GRAM_SHAPES)
@pytest.mark.parametrize("method", ["fft", "dense"])
def test_gram_solver_on_fft_and_dense_blocks(env, shape, method):
    # method="fft" and "dense" hand whole blocks to the Gram solver (the LFA path takes
    # its own tap autocorrelation); reference: the dense F.conv2d matrix
    # n = (5, 10): 6 stored frequencies on the half axis, as many as the tall blocks' rows
    w = np.random.default_rng(sum(shape)).standard_normal(shape)
    ref = dense_svd(torch_dense(w, (5, 10), (1, 1), (1, 1), 1, "circular"))
    got = convsv.singular_values(env.asarray(w), (5, 10), method=method, solver="gram")
    assert_array(env, got, dtype=env.xp.float64, shape=ref.shape)
    err = np.abs(env.to_numpy(got) - ref)
    # the Gram route's rule (eps s_max^2 / s per value) on top of the dense reference's
    # own error (measured: 31 eps s_max for both methods, i.e. mostly the reference's)
    size = min(shape[0], shape[1])
    bound = 10 * size * EPS64 * ref[0] ** 2 / np.maximum(ref, 1e-300) + _dense_tol(ref)
    assert np.all(err <= bound), (err / bound).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", ["fft", "dense"])
def test_operator_norm_by_every_block_method(env, dtype, method):
    # periodic layer, explicit method="fft"/"dense": the maximum over every block's
    # values, as a 0-d array in the kernel's precision
    w = np.random.default_rng(31).standard_normal((4, 3, 3, 3)).astype(dtype)
    ref = dense_svd(torch_dense(w.astype(np.float64), (6, 5), (1, 1), (1, 1), 1, "circular"))
    got = convsv.operator_norm(env.asarray(w), (6, 5), method=method)
    assert_array(env, got, dtype=getattr(env.xp, dtype), shape=())
    eps = EPS32 if dtype == "float32" else EPS64
    # plus the dense reference's own error (measured on one x86 machine: the float64
    # reference 5 eps above the exact block value, torch's dense path 5 eps below it)
    assert abs(float(env.to_numpy(got)) - ref[0]) <= 8 * eps * ref[0] + _dense_tol(ref)


@pytest.mark.parametrize(
    "kw", [{}, {"padding": 1}, {"method": "fft"}, {"method": "dense"}], ids=str
)
def test_operator_norm_shows_a_progress_bar_only_when_asked(env, capsys, kw):
    # every path of operator_norm (certified periodic, Krylov, FFT blocks) forwards
    # progress; the default is silent
    k = env.asarray(np.random.default_rng(32).standard_normal((4, 3, 3, 3)))
    quiet = float(env.to_numpy(convsv.operator_norm(k, 6, **kw)))
    assert capsys.readouterr().err == ""
    loud = float(env.to_numpy(convsv.operator_norm(k, 6, progress=True, **kw)))
    err = capsys.readouterr().err
    if kw.get("method") == "dense":
        assert err == ""  # one dense SVD: nothing to report
    else:
        assert "convsv" in err, err
    assert loud == quiet


class _RecordingProgress:
    """Stands in for convsv._progress.Progress and records how it was driven."""

    made: list[_RecordingProgress] = []

    def __init__(self, total, desc, enabled):
        self.total, self.desc, self.enabled, self.count = total, desc, enabled, 0
        _RecordingProgress.made.append(self)

    def update(self, n=1, **postfix):
        self.count += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_the_chunk_progress_bar_counts_every_chunk(env, monkeypatch):
    # 1-D real kernel on n = 14: 8 stored frequencies, one per chunk at the smallest budget
    import convsv.spectrum

    w = np.random.default_rng(12).standard_normal((3, 2, 3))
    k = env.asarray(w)
    limit = _smallest_accepted_limit(k, (14,), (1,))
    monkeypatch.setattr(_RecordingProgress, "made", [])
    monkeypatch.setattr(convsv.spectrum, "Progress", _RecordingProgress)
    got = convsv.singular_values(k, 14, memory_limit=limit, progress=True)
    (bar,) = _RecordingProgress.made
    assert (bar.total, bar.desc, bar.enabled, bar.count) == (8, "convsv: frequency chunks", True, 8)
    ref = dense_svd(torch_dense(w, (14,), (1,), (1,), 1, "circular"))
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


def test_the_certified_norm_gets_the_callers_memory_limit(env):
    # kernel 4 x 3 x 3 x 3 on 8 x 8: the certified path holds at least one frequency's
    # 3 x 3 complex128 Gram block, 4 block sizes (the block, the shifted copy, its factor,
    # slack)
    w = np.random.default_rng(33).standard_normal((4, 3, 3, 3))
    k = env.asarray(w)
    per_point = 4 * 16 * 3 * 3
    with pytest.raises(
        ValueError, match=r"^one frequency of the Gram blocks needs .*; raise memory_limit$"
    ):
        convsv.operator_norm(k, 8, memory_limit=per_point - 1)
    ref = dense_svd(torch_dense(w, (8, 8), (1, 1), (1, 1), 1, "circular"))
    got = convsv.operator_norm(k, 8, memory_limit=per_point)
    assert abs(float(env.to_numpy(got)) - ref[0]) <= 8 * EPS64 * ref[0]


@pytest.mark.parametrize("fn", ["singular_values", "operator_norm"])
def test_explicit_dense_method_on_a_periodic_layer_checks_its_budget(env, fn):
    # the dense 100 x 75 float64 operator of a 4 x 3 x 3 x 3 kernel on 5 x 5 (60000 bytes)
    k = env.asarray(np.random.default_rng(34).standard_normal((4, 3, 3, 3)))
    msg = r"^the dense 100 x 75 operator needs about .*; raise memory_limit or use method='auto'$"
    with pytest.raises(ValueError, match=msg):
        getattr(convsv, fn)(k, 5, method="dense", memory_limit=60000 - 1)


def test_explicit_dense_method_on_a_periodic_layer_is_reported(env):
    w = np.random.default_rng(35).standard_normal((4, 3, 3, 3))
    got, info = convsv.singular_values(env.asarray(w), 5, method="dense", full_output=True)
    assert info.method == "dense"
    ref = dense_svd(torch_dense(w, (5, 5), (1, 1), (1, 1), 1, "circular"))
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


def test_a_pointwise_zero_padded_layer_is_exactly_periodic(env):
    # a 1 x 1 kernel pads nothing: padding='zeros' is the periodic layer, so method='lfa'
    # is exact there and must not be refused
    w = np.random.default_rng(36).standard_normal((4, 3, 1, 1))
    ref = dense_svd(torch_dense(w, (5, 4), (1, 1), (1, 1), 1, "zeros"))
    got = convsv.singular_values(env.asarray(w), (5, 4), padding="zeros", method="lfa")
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (
            {"padding": "zeros", "method": "lfa"},
            r"^method='lfa' is exact for padding='circular' only; use method='dense'",
        ),
        (
            {"padding": 1, "method": "fft"},
            (
                r"^method='fft' is exact only for layers that are a periodic layer up to "
                r"permutations; this one \(mode 'zeros'\)"
            ),
        ),
        (
            {"padding": 1, "memory_limit": 1000},
            (
                r"^padding mode 'zeros' has no exact FFT diagonalisation, so the exact answer "
                r"needs the dense 100 x 75 operator, which needs about .*; raise memory_limit, "
                r"or use convsv.singular_value_bounds"
            ),
        ),
        (
            {"padding": 1, "padding_mode": "reflect", "memory_limit": 1000},
            r"^padding mode 'reflect' has no exact FFT diagonalisation, so the exact answer",
        ),
        (
            {"padding": "zeros", "memory_limit": 1000},
            (
                r"^padding='zeros' has no exact FFT diagonalisation, so the exact answer needs "
                r"the dense 100 x 75 operator"
            ),
        ),
        (
            {"memory_limit": 100},
            (
                r"^one frequency slice of the symbol needs about .*, more than "
                r"memory_limit=100 bytes; raise memory_limit$"
            ),
        ),
        (
            {"solver": "bogus"},
            r"^solver must be one of 'svd', 'gram', got 'bogus'$",
        ),
    ],
)
def test_refusals_name_the_layer_and_what_to_do(env, kw, msg):
    k = env.asarray(np.random.default_rng(37).standard_normal((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=msg):
        convsv.singular_values(k, 5, **kw)


def test_the_fft_refusal_names_the_chunked_alternative(env):
    k = env.asarray(np.random.default_rng(3).standard_normal((4, 3, 3, 3)))
    limit = _smallest_accepted_limit(k, (16, 16), (2, 2))
    msg = (
        r"^the FFT of the padded polyphase kernel needs about .*; "
        r"use method='lfa' \(chunked, same result\) or raise memory_limit$"
    )
    with pytest.raises(ValueError, match=msg):
        convsv.singular_values(k, 16, 2, method="fft", memory_limit=limit)


def test_operator_norm_names_a_bad_solver(env):
    k = env.asarray(np.ones((2, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"^solver must be one of 'svd', 'gram', got 'bogus'$"):
        convsv.operator_norm(k, 6, solver="bogus")


@pytest.mark.parametrize("rtol", [1.0, 1.5, np.float64(1.0), [0.1], "0.1", True])
def test_rtol_outside_its_interval_is_refused(env, rtol):
    k = env.asarray(np.ones((2, 2, 3, 3)))
    msg = r"^rtol must be a real number in \[0, 1\) or None, got " + re.escape(repr(rtol)) + "$"
    with pytest.raises(ValueError, match=msg):
        convsv.operator_norm(k, 6, rtol=rtol)


def test_rtol_zero_asks_for_the_rounding_floor(env):
    # rtol = 0 is in [0, 1): the certificate is then as tight as rounding allows
    w = np.random.default_rng(38).standard_normal((4, 3, 3, 3))
    ref = dense_svd(torch_dense(w, (6, 6), (1, 1), (1, 1), 1, "circular"))
    got, info = convsv.operator_norm(env.asarray(w), 6, rtol=0.0, full_output=True)
    assert info.lower <= ref[0] * (1 + 1e-13)
    assert ref[0] <= info.upper * (1 + 1e-13)
    assert abs(float(env.to_numpy(got)) - ref[0]) <= 8 * EPS64 * ref[0]


def test_an_explicit_namespace_converts_a_list_kernel():
    # xp= names the namespace of the result; a nested-list kernel carries none of its own
    import torch

    w = np.random.default_rng(39).standard_normal((4, 3, 3, 3))
    ref = dense_svd(torch_dense(w, (6, 6), (1, 1), (1, 1), 1, "circular"))
    got = convsv.operator_norm(w.tolist(), 6, xp=torch)
    assert isinstance(got, torch.Tensor)
    assert got.dtype == torch.float64
    assert got.shape == ()
    assert abs(float(got) - ref[0]) <= 8 * EPS64 * ref[0]


@pytest.mark.parametrize(
    ("method", "solver"), [("fft", "svd"), ("fft", "gram"), ("lfa", "gram"), ("lfa", "svd")]
)
def test_each_chunk_gets_the_fft_blocks_or_the_gram_autocorrelation(
    env, monkeypatch, method, solver
):
    # method="fft" computes the symbols once and hands every chunk its slice; the LFA Gram
    # route computes the tap autocorrelation once and hands it to every chunk; the plain
    # LFA route lets each chunk form its own blocks. Any other routing gives the same
    # values (slower or larger), so the values alone cannot tell: spies record the calls.
    import convsv.spectrum

    seen, corr_calls = [], []
    chunk, autocorr = convsv.spectrum.frequency_chunk, convsv.spectrum.gram_autocorrelation

    def spy_chunk(*args, **kw):
        seen.append((kw.get("corr") is not None, kw.get("blocks") is not None))
        return chunk(*args, **kw)

    def spy_autocorr(*args, **kw):
        corr_calls.append(1)
        return autocorr(*args, **kw)

    monkeypatch.setattr(convsv.spectrum, "frequency_chunk", spy_chunk)
    monkeypatch.setattr(convsv.spectrum, "gram_autocorrelation", spy_autocorr)
    w = np.random.default_rng(40).standard_normal((4, 3, 3, 3))
    got = convsv.singular_values(env.asarray(w), (6, 5), method=method, solver=solver)
    expect = (method == "lfa" and solver == "gram", method == "fft")
    assert seen
    assert set(seen) == {expect}
    assert len(corr_calls) == int(expect[0])
    ref = dense_svd(torch_dense(w, (6, 5), (1, 1), (1, 1), 1, "circular"))
    err = np.abs(env.to_numpy(got) - ref)
    gram = 10 * 3 * EPS64 * ref[0] ** 2 / np.maximum(ref, 1e-300) if solver == "gram" else 0
    assert np.all(err <= _dense_tol(ref) + gram)


def test_workers_times_chunk_rows_stay_within_the_budget(env, monkeypatch):
    # 1-D real kernel on n = 80: 41 stored frequencies. With two worker threads, each
    # holding one chunk at a time, workers x rows per chunk x bytes per row must fit in
    # memory_limit; map_chunks must be told that worker count (not pick its own)
    import convsv.spectrum

    monkeypatch.setenv("CONVSV_NUM_THREADS", "2")
    w = np.random.default_rng(41).standard_normal((3, 2, 3))
    k = env.asarray(w)
    per_row = _smallest_accepted_limit(k, (80,), (1,))
    calls = []
    real_map = convsv.spectrum.map_chunks

    def spy_map(fn, items, xp, **kw):
        calls.append((list(items), kw.get("workers")))
        return real_map(fn, items, xp, **kw)

    monkeypatch.setattr(convsv.spectrum, "map_chunks", spy_map)
    ref = dense_svd(torch_dense(w, (80,), (1,), (1,), 1, "circular"))
    # NumPy and torch on the CPU use every thread allowed (n_workers); other backends one
    pooled = env.backend.value in ("numpy", "torch")
    for rows in (1, 2, 3, None):
        calls.clear()
        got = convsv.singular_values(k, 80, memory_limit=rows and rows * per_row)
        ((starts, workers),) = calls
        assert starts[0] == 0
        longest = max(np.diff([*starts, 41]))
        assert workers == (min(2, rows or 2) if pooled else 1)
        if rows is not None:
            assert workers * longest <= rows, (workers, longest, rows)
        elif pooled:
            # a budget that holds everything: still several chunks per worker (balance)
            assert len(starts) >= 2 * workers, starts
        np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=_dense_tol(ref))
    # one worker: no reason to cut the batched LAPACK call into chunks
    monkeypatch.setenv("CONVSV_NUM_THREADS", "1")
    calls.clear()
    convsv.singular_values(k, 80)
    assert calls == [([0], 1)]


def test_a_spectrum_larger_than_ram_points_to_the_partial_solvers(env, monkeypatch):
    # 4 x 3 x 3 x 3 float32 on 8 x 8: 192 values of 4 bytes and the sorting copy (1536
    # bytes) against 1535 bytes of RAM; no memory_limit helps, the message says what does
    k = env.asarray(np.ones((4, 3, 3, 3), dtype=np.float32))
    monkeypatch.setattr(convsv._validation, "physical_memory", lambda: 2 * 192 * 4 - 1)
    msg = (
        r"^the 192 singular values needs about .*; raising memory_limit would not help: "
        r"use convsv.operator_norm for the largest one, or convsv.svd\(k=\.\.\.\) for a few "
        r"extreme ones$"
    )
    with pytest.raises(ValueError, match=msg):
        convsv.singular_values(k, 8)
