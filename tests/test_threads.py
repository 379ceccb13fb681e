"""Per-call thread limits: BLAS and torch held to one thread inside convsv, restored after."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import dense_svd, torch_dense
from threadpoolctl import threadpool_info, threadpool_limits

import convsv
import convsv.spectrum
from convsv import _backends


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_blas_threads():
    if not _blas_threads():
        pytest.skip("no BLAS library visible to threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() == {2}
        yield


def _layer() -> tuple[np.ndarray, np.ndarray]:
    k = np.random.default_rng(0).standard_normal((8, 6, 3, 3))
    return k, dense_svd(torch_dense(k, (8, 8), (1, 1), (1, 1), 1, "circular"))


def test_nested_regions_restore_only_at_the_outermost(two_blas_threads):
    with _backends.one_thread_math():
        assert _blas_threads() == {1}
        with _backends.one_thread_math():
            assert _blas_threads() == {1}
        assert _blas_threads() == {1}
    assert _blas_threads() == {2}


def test_four_threads_at_once_leave_nothing_behind(two_blas_threads):
    k, ref = _layer()
    seen, results, errors = [], [None] * 4, []
    start = threading.Barrier(4)

    def call(i: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                results[i] = convsv.singular_values(k, 8)
                seen.append(convsv.operator_norm(k, 8))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _blas_threads() == {2}
    assert _backends._region_depth == 0
    for r in results:
        np.testing.assert_allclose(r, ref, rtol=0, atol=64 * np.finfo(np.float64).eps * ref[0])


def test_serial_path_and_svd_limit_blas(two_blas_threads, monkeypatch):
    monkeypatch.setenv("CONVSV_NUM_THREADS", "1")
    seen = []
    inner = convsv.spectrum.block_svdvals

    def spy(*args, **kwargs):
        seen.append(_blas_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(convsv.spectrum, "block_svdvals", spy)
    k, ref = _layer()
    np.testing.assert_allclose(convsv.singular_values(k, 8), ref, atol=1e-12 * ref[0])
    convsv.svd(k, 8, k=2)
    assert len(seen) >= 2
    assert all(s == {1} for s in seen), seen
    assert _blas_threads() == {2}


def test_bad_thread_count_names_the_variable(monkeypatch):
    monkeypatch.setenv("CONVSV_NUM_THREADS", "two")
    with pytest.raises(
        ValueError, match=r"CONVSV_NUM_THREADS must be a positive integer.*got 'two'"
    ):
        convsv.singular_values(np.ones((2, 2, 3, 3)), 4)


def test_torch_cpu_runs_on_the_pool_with_one_intra_op_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        def fn(i: int) -> int:
            seen.append((threading.get_ident(), torch.get_num_threads()))
            return i

        out = _backends.map_chunks(fn, range(16), torch, workers=2)
        assert out == list(range(16))
        assert {n for _, n in seen} == {1}
        assert torch.get_num_threads() == 2  # restored in the calling thread
        # torch on the CPU gets the pool (one worker per core); elsewhere one worker
        assert _backends.n_workers(torch, torch.device("cpu")) == _backends.n_workers(np)
        assert _backends.n_workers(torch) == 1
    finally:
        torch.set_num_threads(before)
