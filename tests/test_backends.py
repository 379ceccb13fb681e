"""convsv._backends unit by unit, against independent references (issue 14's mutation run).

The backend fast paths are reached here directly, on every host backend, so that a mutant of
one of them fails a test that exercises exactly that path: torch's ``conv*d`` against a
direct correlation written with NumPy slices, the Cholesky test against blocks whose pivots
are known by construction, the thread pool against the threads it actually used.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time

import array_api_compat
import numpy as np
import pytest
import torch
from conftest import Backend

from convsv import _backends

EPS64 = float(np.finfo(np.float64).eps)


# -- threads ---------------------------------------------------------------------------------


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def test_n_workers_counts_cores_for_numpy_and_torch_cpu_only(monkeypatch):
    import array_api_compat.numpy as cnp
    import array_api_strict

    monkeypatch.delenv("CONVSV_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert _backends.n_workers(np) == cores
    assert _backends.n_workers(cnp) == cores
    assert _backends.n_workers(torch, torch.device("cpu")) == cores
    assert _backends.n_workers(torch, "cpu") == cores
    assert _backends.n_workers(torch) == 1
    assert _backends.n_workers(torch, torch.device("meta")) == 1
    assert _backends.n_workers(array_api_strict, "cpu") == 1
    monkeypatch.setenv("CONVSV_NUM_THREADS", "3")
    assert _backends.n_workers(np) == 3
    assert _backends.n_workers(torch, torch.device("cpu")) == 3
    assert _backends.n_workers(array_api_strict) == 1


def test_n_workers_without_affinity_or_on_one_core(monkeypatch):
    monkeypatch.delenv("CONVSV_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert _backends.n_workers(np) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())
    assert _backends.n_workers(np) == 1
    monkeypatch.delattr(os, "sched_getaffinity")  # not on Linux
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert _backends.n_workers(np) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert _backends.n_workers(np) == 1


def test_threadpool_controller_is_optional(monkeypatch):
    import sys

    from threadpoolctl import ThreadpoolController

    uncached = _backends._threadpool_controller.__wrapped__
    assert isinstance(uncached(), ThreadpoolController)
    assert _backends._threadpool_controller() is _backends._threadpool_controller()
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    assert uncached() is None


def test_one_thread_math_holds_torch_to_one_thread_and_restores(torch_threads):
    assert _backends._region_depth == 0
    with _backends.one_thread_math():
        assert torch.get_num_threads() == 1
        assert _backends._region_depth == 1
        with _backends.one_thread_math():
            assert torch.get_num_threads() == 1
            assert _backends._region_depth == 2
        assert torch.get_num_threads() == 1
        assert _backends._region_depth == 1
    assert torch.get_num_threads() == torch_threads
    assert _backends._region_depth == 0
    assert _backends._region_blas is None
    assert _backends._region_torch is None
    with pytest.raises(KeyError), _backends.one_thread_math():
        raise KeyError
    assert torch.get_num_threads() == torch_threads
    assert _backends._region_depth == 0


def test_one_thread_math_in_a_second_thread_restores_that_threads_setting(torch_threads):
    # torch's setting is per thread: a thread entering while another holds the region
    # restores its own value, not the first thread's
    inside, release, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        torch.set_num_threads(2)
        with _backends.one_thread_math():
            seen.append(torch.get_num_threads())
            inside.set()
            release.wait(10)
        seen.append(torch.get_num_threads())

    with _backends.one_thread_math():
        t = threading.Thread(target=other)
        t.start()
        assert inside.wait(10)
        assert _backends._region_depth == 2
        release.set()
        t.join(10)
        assert torch.get_num_threads() == 1
    assert seen == [1, 2]
    assert torch.get_num_threads() == torch_threads


def test_single_threaded_and_worker_blas(torch_threads):
    seen = []

    def fn(a, b, *, c):
        """doc"""
        seen.append(torch.get_num_threads())
        return a + b * c

    wrapped = _backends.single_threaded(fn)
    assert wrapped.__name__ == "fn"
    assert wrapped.__doc__ == "doc"
    assert wrapped(1, 2, c=5) == 11
    with _backends.worker_blas(np):
        seen.append(torch.get_num_threads())
    assert seen == [1, 1]
    assert torch.get_num_threads() == torch_threads


def test_shared_pool_grows_and_is_reused():
    first = _backends._shared_pool(3)
    assert first._max_workers >= 3
    assert _backends._shared_pool(2) is first
    assert _backends._shared_pool(1) is first
    size = _backends._pool_size
    bigger = _backends._shared_pool(size + 1)
    assert bigger is not first
    assert bigger._max_workers == size + 1
    # named, so that profilers and debuggers show whose threads these are
    assert bigger._thread_name_prefix == "convsv"
    assert _backends._pool_size == size + 1
    assert _backends._shared_pool(size + 1) is bigger


def _record(delay=0.01):
    seen = []

    def fn(i):
        seen.append((i, threading.get_ident(), torch.get_num_threads()))
        time.sleep(delay)  # long enough that an idle worker takes the next item
        return i * i

    return fn, seen


class _Progress:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def update(self, k):
        with self.lock:
            self.n += k


@pytest.mark.parametrize("module", ["numpy", "torch"])
def test_map_chunks_uses_the_pool_and_keeps_order(module, torch_threads):
    xp = np if module == "numpy" else torch
    fn, seen = _record()
    bar = _Progress()
    out = _backends.map_chunks(
        fn, iter(range(12)), xp, workers=2, progress=bar, device=torch.device("cpu")
    )
    assert out == [i * i for i in range(12)]
    assert sorted(i for i, _, _ in seen) == list(range(12))  # each item exactly once
    threads = {t for _, t, _ in seen}
    assert len(threads) == 2
    assert threading.get_ident() in threads  # the caller works too
    assert {n for _, _, n in seen} == {1}
    assert bar.n == 12
    assert torch.get_num_threads() == torch_threads


def test_pool_threads_left_with_more_torch_threads_are_reset(torch_threads):
    # torch's setting is per thread and pool threads live on: code that left one at 2
    # threads (here the first call's fn) must not make the next call oversubscribe
    def leave_two(i):
        time.sleep(0.01)
        torch.set_num_threads(2)
        return i

    assert _backends.map_chunks(leave_two, range(8), np, workers=2) == list(range(8))
    fn, seen = _record()
    assert _backends.map_chunks(fn, range(8), np, workers=2) == [i * i for i in range(8)]
    assert len({t for _, t, _ in seen}) == 2
    assert {n for _, _, n in seen} == {1}


def test_map_chunks_default_workers_follow_the_environment(monkeypatch):
    fn, seen = _record()
    monkeypatch.setenv("CONVSV_NUM_THREADS", "2")
    assert _backends.map_chunks(fn, range(8), np) == [i * i for i in range(8)]
    assert len({t for _, t, _ in seen}) == 2
    seen.clear()
    monkeypatch.setenv("CONVSV_NUM_THREADS", "1")
    assert _backends.map_chunks(fn, range(8), np) == [i * i for i in range(8)]
    assert {t for _, t, _ in seen} == {threading.get_ident()}
    seen.clear()
    # torch without a CPU device: torch parallelises itself, no pool
    monkeypatch.setenv("CONVSV_NUM_THREADS", "2")
    assert _backends.map_chunks(fn, range(8), torch) == [i * i for i in range(8)]
    assert {t for _, t, _ in seen} == {threading.get_ident()}
    seen.clear()
    # torch on the CPU: the pool
    out = _backends.map_chunks(fn, range(8), torch, device=torch.device("cpu"))
    assert out == [i * i for i in range(8)]
    assert len({t for _, t, _ in seen}) == 2


@pytest.mark.parametrize(("workers", "items"), [(1, 6), (4, 1), (0, 3)])
def test_map_chunks_serial_cases_run_in_the_caller(workers, items, torch_threads, monkeypatch):
    monkeypatch.setattr(_backends, "_pool", None)  # as in a fresh process
    monkeypatch.setattr(_backends, "_pool_size", 0)
    fn, seen = _record(0.0)
    bar = _Progress()
    out = _backends.map_chunks(fn, range(items), np, workers=workers, progress=bar)
    assert out == [i * i for i in range(items)]
    assert [i for i, _, _ in seen] == list(range(items))
    assert {t for _, t, _ in seen} <= {threading.get_ident()}
    assert {n for _, _, n in seen} <= {1}
    assert bar.n == items
    assert torch.get_num_threads() == torch_threads
    assert _backends._pool is None  # no pool started for serial work


def test_map_chunks_inside_a_worker_runs_serially():
    inner_threads = []

    def inner(j):
        inner_threads.append((threading.get_ident(), j))
        time.sleep(0.005)
        return j

    def outer(i):
        got = _backends.map_chunks(inner, range(4), np, workers=2)
        return (threading.get_ident(), got)

    out = _backends.map_chunks(outer, range(4), np, workers=2)
    assert [g for _, g in out] == [[0, 1, 2, 3]] * 4
    by_thread = {}
    for t, j in inner_threads:
        by_thread.setdefault(t, []).append(j)
    # every inner call ran whole in the thread that made it: order 0..3, repeated
    assert all(js == [0, 1, 2, 3] * (len(js) // 4) for js in by_thread.values())
    assert set(by_thread) == {t for t, _ in out}
    assert not getattr(_backends._in_worker, "active", False)


def test_map_chunks_propagates_a_workers_error():
    def fn(i):
        time.sleep(0.005)
        if i == 5:
            raise ZeroDivisionError(i)
        return i

    with pytest.raises(ZeroDivisionError):
        _backends.map_chunks(fn, range(8), np, workers=2)
    assert _backends._region_depth == 0
    assert not getattr(_backends._in_worker, "active", False)


# -- torch helpers, memory --------------------------------------------------------------------


def test_assign_inplace_and_detached():
    p = torch.nn.Parameter(torch.zeros(2, 3))
    src = torch.arange(6.0).reshape(2, 3)
    _backends.assign_inplace(p, src)
    assert p.grad_fn is None
    assert p.requires_grad
    np.testing.assert_array_equal(p.detach().numpy(), src.numpy())
    d = _backends.detached(p * 2)
    assert not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), 2 * src.numpy())
    a = np.zeros((2, 3))
    _backends.assign_inplace(a, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(a, np.arange(6.0).reshape(2, 3))
    assert _backends.detached(a) is a


def test_host_arrays_have_no_device_memory_or_workspace(env):
    x = env.asarray(np.ones((2, 3, 3)))
    assert _backends._device_free_bytes(x) is None
    assert _backends.default_memory_limit(x, None) is None
    assert _backends.default_memory_limit(x, 7.0) == 7.0
    assert _backends.svd_workspace(x) == 0
    assert _backends._fast_svd(x) is None
    assert _backends._fast_svd(x[0, ...]) is None
    assert _backends.single_products_exact(x) is True


def test_default_memory_limit_takes_half_the_free_device_memory(monkeypatch):
    x = np.ones(3)
    monkeypatch.setattr(_backends, "_device_free_bytes", lambda a: 6 * 2**30 if a is x else None)
    assert _backends.default_memory_limit(x, None) == 3 * 2**30
    assert _backends.default_memory_limit(x, 5.0) == 5.0


# GPU-only branches, reached without a GPU: the dispatch is what convsv decides, so it is
# checked with the device predicates answering "CUDA" and torch's CUDA-only calls replaced
# by their CPU equivalents (the values are then checked against LAPACK).


@pytest.fixture
def fake_torch_cuda(monkeypatch):
    drivers = []
    svd, svdvals = torch.linalg.svd, torch.linalg.svdvals

    def fake_svd(a, full_matrices=True, *, driver=None):
        drivers.append(("svd", full_matrices, driver))
        return svd(a, full_matrices=full_matrices)

    def fake_svdvals(a, *, driver=None):
        drivers.append(("svdvals", driver))
        return svdvals(a)

    monkeypatch.setattr(_backends, "is_torch_cuda", lambda a: isinstance(a, torch.Tensor))
    monkeypatch.setattr(torch.linalg, "svd", fake_svd)
    monkeypatch.setattr(torch.linalg, "svdvals", fake_svdvals)
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda dev=None: (1234, 99999) if dev is not None else (0, 0)
    )
    return drivers


def test_torch_cuda_dispatch(fake_torch_cuda):
    import array_api_compat.torch as ctorch

    a = np.random.default_rng(2).standard_normal((5, 7, 4))
    t = torch.from_numpy(a)
    assert _backends._device_free_bytes(t) == 1234
    assert _backends.default_memory_limit(t, None) == 617
    assert _backends.svd_workspace(t) == 4
    assert _backends._fast_svd(t[0]) is None  # a single block: no batched gesvda
    fast = _backends._fast_svd(t)
    u, s, v = fast(t)
    assert fake_torch_cuda == [("svd", False, "gesvda")]
    assert tuple(u.shape) == (5, 7, 4)
    assert tuple(v.shape) == (5, 4, 4)
    rebuilt = (u * s[:, None, :]) @ v.mH  # a = u diag(s) v^H
    np.testing.assert_allclose(rebuilt.numpy(), a, rtol=0, atol=64 * EPS64 * np.abs(a).max())
    ref = np.linalg.svd(a, compute_uv=False)
    got = _backends._exact_svdvals(t, ctorch)
    assert fake_torch_cuda[-1] == ("svdvals", "gesvd")
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=16 * EPS64 * ref.max())
    fake_torch_cuda.clear()
    got = _backends.batched_svdvals(t, ctorch)  # certified gesvda, nothing recomputed
    assert fake_torch_cuda == [("svd", False, "gesvda")]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=16 * EPS64 * ref.max())
    # gesvda wrong on block 3: that block alone is recomputed, by gesvd
    svd = torch.linalg.svd

    def damaged(a, full_matrices=True, *, driver=None):
        u, s, vh = svd(a, full_matrices=full_matrices, driver=driver)
        return u, s * torch.tensor([1.0, 1.0, 1.0, 1.001, 1.0], dtype=s.dtype)[:, None], vh

    fake_torch_cuda.clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.linalg, "svd", damaged)
        got = _backends.batched_svdvals(t, ctorch)
    assert fake_torch_cuda == [("svd", False, "gesvda"), ("svdvals", "gesvd")]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=16 * EPS64 * ref.max())


def test_torch_cuda_eigvalsh_goes_through_cupy(fake_torch_cuda, monkeypatch):
    import sys
    import types

    import array_api_compat.torch as ctorch

    calls = []

    class Device:
        def __init__(self, index):
            calls.append(("device", index))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def eigvalsh(a):
        calls.append(("eigvalsh", a.shape))
        return np.linalg.eigvalsh(a)

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Device)
    fake.linalg = types.SimpleNamespace(eigvalsh=eigvalsh)
    fake.from_dlpack = np.from_dlpack
    a = np.random.default_rng(4).standard_normal((3, 5, 5))
    h = a @ np.swapaxes(a, -1, -2)
    ref = np.linalg.eigvalsh(h)
    t = torch.from_numpy(h)
    atol = 64 * EPS64 * np.abs(ref).max()
    monkeypatch.setitem(sys.modules, "cupy", None)  # not installed: torch's own solver
    got = _backends.batched_eigvalsh(t, ctorch)
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=atol)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    grad = torch.from_numpy(h.copy()).requires_grad_()
    for x in (grad, t[0]):  # DLPack refuses tensors that require grad; one block: torch
        got = _backends.batched_eigvalsh(x, ctorch)
        assert calls == []
        np.testing.assert_allclose(
            got.detach().numpy(), np.linalg.eigvalsh(x.detach()), rtol=0, atol=atol
        )
    got = _backends.batched_eigvalsh(t, ctorch)
    assert isinstance(got, torch.Tensor)
    assert calls == [("device", t.device.index), ("eigvalsh", (3, 5, 5))]
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=atol)
    calls.clear()
    assert _backends.batched_eigvalsh(h, np) is not None  # host arrays never reach CuPy
    assert calls == []


def test_cupy_dispatch(monkeypatch):
    import sys
    import types

    import array_api_compat.numpy as cnp

    entered = []

    class Device:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            entered.append(False)

    class FakeCupyArray:  # what _device_free_bytes reads of a CuPy array
        device = Device()

    gesvda_calls = []

    def gesvda(a, compute_uv=False):
        gesvda_calls.append((a.flags.c_contiguous, compute_uv))
        u, s, vh = np.linalg.svd(a, full_matrices=False)
        return u, s, np.conj(np.swapaxes(vh, -1, -2))

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (555, 9)))
    cupy.ascontiguousarray = np.ascontiguousarray
    cusolver = types.ModuleType("cupyx.cusolver")
    cusolver.gesvda = gesvda
    cupyx = types.ModuleType("cupyx")
    cupyx.cusolver = cusolver
    for name, mod in (("cupy", cupy), ("cupyx", cupyx), ("cupyx.cusolver", cusolver)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(_backends, "is_cupy", lambda a: isinstance(a, (np.ndarray, FakeCupyArray)))
    assert _backends._device_free_bytes(FakeCupyArray()) == 555
    assert entered == [True, False]  # asked on the array's own device
    a = np.random.default_rng(6).standard_normal((4, 6, 3))
    assert _backends.svd_workspace(a) == 4
    fast = _backends._fast_svd(a)
    u, s, v = fast(np.asfortranarray(a))  # gesvda reads the raw buffer as C-ordered
    assert gesvda_calls == [(True, True)]
    np.testing.assert_allclose(
        (u * s[:, None, :]) @ np.swapaxes(v, -1, -2), a, rtol=0, atol=64 * EPS64 * np.abs(a).max()
    )
    ref = np.linalg.svd(a, compute_uv=False)
    got = _backends.batched_svdvals(a, cnp)  # the certified path, on the fake gesvda
    assert len(gesvda_calls) == 2
    np.testing.assert_allclose(got, ref, rtol=0, atol=16 * EPS64 * ref.max())


def test_single_products_exact_follows_cudnn_tf32(monkeypatch):
    class FakeCudaTensor:  # what single_products_exact reads of a CUDA tensor
        device = type("Device", (), {"type": "cuda"})()

    FakeCudaTensor.__module__ = "torch"
    x = FakeCudaTensor()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert _backends.single_products_exact(x) is False
    assert _backends.single_products_exact(torch.ones(2)) is True
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert _backends.single_products_exact(x) is True


# -- batched linear algebra --------------------------------------------------------------------


def _rand(shape, complex_, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    return a + 1j * rng.standard_normal(shape) if complex_ else a


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("shape", [(5, 7, 4), (2, 3, 4, 9), (6, 6)])
def test_batched_svdvals_and_eigvalsh_match_lapack(env, shape, complex_):
    a = _rand(shape, complex_)
    ref = np.linalg.svd(a, compute_uv=False)
    got = env.to_numpy(_backends.batched_svdvals(env.asarray(a), env.xp))
    np.testing.assert_allclose(got, ref, rtol=0, atol=16 * EPS64 * ref.max())
    got = env.to_numpy(_backends._exact_svdvals(env.asarray(a), env.xp))
    np.testing.assert_allclose(got, ref, rtol=0, atol=16 * EPS64 * ref.max())
    h = a @ np.conj(np.swapaxes(a, -1, -2))
    ref = np.linalg.eigvalsh(h)
    got = env.to_numpy(_backends.batched_eigvalsh(env.asarray(h), env.xp))
    np.testing.assert_allclose(got, ref, rtol=0, atol=64 * EPS64 * np.abs(ref).max())


@pytest.mark.parametrize("complex_", [False, True])
def test_fro_is_the_frobenius_norm_of_each_block(env, complex_):
    a = _rand((3, 5, 4), complex_, seed=1)
    ref = np.sqrt((np.abs(a) ** 2).sum(axis=(-2, -1)))  # |z|^2 = re^2 + im^2
    got = env.to_numpy(_backends._fro(env.asarray(a), env.xp))
    np.testing.assert_allclose(got, ref, rtol=4 * EPS64, atol=0)


def _pivot_blocks(n, dtype):
    """Blocks whose Cholesky pivots are known: ``L diag(d) L^H`` with unit lower ``L``.

    The pivots of a block are exactly ``d`` as long as they stay positive, and the
    factorisation stops at the first ``d_i <= 0``. Returns the blocks and which complete.
    """
    rng = np.random.default_rng(n)
    cases = [
        np.ones(n),  # fine
        np.r_[np.ones(n - 1), -0.5],  # only the last pivot fails
        np.r_[-1.0, np.ones(n - 1)],  # the first
        np.r_[np.ones(n // 2), -0.25, np.ones(n - n // 2 - 1)],  # one in the middle
        np.linspace(2.0, 0.25, n),  # fine
        np.r_[np.ones(n - 1), -0.5],  # fails
        np.ones(n),  # fine
    ]
    ok = np.array([bool(np.all(d > 0)) for d in cases] + [False])
    complex_ = np.dtype(dtype).kind == "c"
    blocks = []
    for d in cases:
        low = np.tril(_rand((n, n), complex_, seed=int(rng.integers(1 << 30))), -1) * 0.3
        low += np.eye(n)
        blocks.append(low @ np.diag(d) @ np.conj(low.T))
    nan = np.eye(n, dtype=blocks[0].dtype)
    nan[n - 1, n - 1] = np.nan
    blocks.append(nan)
    return np.stack(blocks).astype(dtype), ok


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "complex64"])
def test_cholesky_succeeds_where_every_pivot_is_positive(env, dtype, monkeypatch):
    herm, ok = _pivot_blocks(5, dtype)
    if env.backend is not Backend.ARRAY_API_STRICT:
        # NumPy's gufunc and torch's cholesky_ex answer for the whole batch at once; only
        # libraries that raise for the whole batch need the bisection
        def no_bisection(*args):
            msg = "bisection used"
            raise AssertionError(msg)

        monkeypatch.setattr(_backends, "_cholesky_bisect", no_bisection)
    got = _backends.cholesky_succeeds(env.asarray(herm), env.xp)
    assert got.dtype == env.xp.bool
    assert tuple(got.shape) == ok.shape
    np.testing.assert_array_equal(env.to_numpy(got), ok)


def test_cholesky_bisection_isolates_each_failing_block(env):
    herm, ok = _pivot_blocks(4, "float64")
    for count in (1, 2, 3, len(ok)):
        got = _backends._cholesky_bisect(env.asarray(herm[:count]), env.xp)
        assert tuple(got.shape) == (count,)
        np.testing.assert_array_equal(env.to_numpy(got), ok[:count])
    for block in (2, 0):  # a single block, failing or not: a bool on the input's device
        got = _backends._cholesky_bisect(env.asarray(herm[block : block + 1]), env.xp)
        assert got.dtype == env.xp.bool
        assert array_api_compat.device(got) == env.device
        np.testing.assert_array_equal(env.to_numpy(got), ok[block : block + 1])


def test_cholesky_without_numpys_gufunc_falls_back_to_bisection(monkeypatch):
    herm, ok = _pivot_blocks(6, "float64")
    # convsv looks the gufunc up on numpy.linalg; numpy's own cholesky keeps its reference
    monkeypatch.setattr(np.linalg, "_umath_linalg", object(), raising=False)
    np.testing.assert_array_equal(_backends.cholesky_succeeds(herm, np), ok)


# -- torch_conv -----------------------------------------------------------------------------------


def _correlate(x, w, stride, dilation, groups, padding):
    """Direct strided, dilated, grouped cross-correlation with NumPy slices (no torch)."""
    d = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    k = w.shape[2:]
    out = [(x.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(d)]
    c_out, cg = w.shape[:2]
    og = c_out // groups
    y = np.zeros((x.shape[0], c_out, *out))
    for g in range(groups):
        xg = x[:, g * cg : (g + 1) * cg]
        wg = w[g * og : (g + 1) * og]
        for j in itertools.product(*(range(kk) for kk in k)):
            sl = tuple(
                slice(
                    j[i] * dilation[i], j[i] * dilation[i] + (out[i] - 1) * stride[i] + 1, stride[i]
                )
                for i in range(d)
            )
            y[:, g * og : (g + 1) * og] += np.einsum(
                "oc,bc...->bo...", wg[(..., *j)], xg[(slice(None), slice(None), *sl)]
            )
    return y


LAYERS = [  # c_out, c_in/groups, k, stride, dilation, groups, padding, input size
    (4, 3, (3,), (2,), (1,), 1, (0,), (9,)),
    (6, 2, (3, 2), (2, 1), (1, 2), 3, (1, 0), (7, 6)),
    (4, 2, (2, 3, 2), (1, 2, 3), (2, 1, 1), 2, (0, 1, 2), (5, 6, 7)),
]


@pytest.mark.parametrize("layer", LAYERS, ids=["1d", "2d-groups", "3d-groups"])
def test_torch_conv_and_its_adjoint_match_a_direct_correlation(layer):
    c_out, cg, k, stride, dil, groups, pad, size = layer
    rng = np.random.default_rng(len(k))
    w = rng.standard_normal((c_out, cg, *k))
    x = rng.standard_normal((2, cg * groups, *size))
    for p in ((0,) * len(k), pad):
        ref = _correlate(x, w, stride, dil, groups, p)
        got = _backends.torch_conv(
            torch.from_numpy(w),
            torch.from_numpy(x),
            stride,
            dil,
            groups,
            adjoint=False,
            padding=p,
        )
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=64 * EPS64)
    # the adjoint: the transpose of the dense matrix of the correlation above; with
    # padding p the transpose crops p each side, output_padding restores the input size
    cols = cg * groups * math.prod(size)
    basis = np.eye(cols).reshape(cols, cg * groups, *size)
    for p in ((0,) * len(k), pad):
        dense = _correlate(basis, w, stride, dil, groups, p).reshape(cols, -1).T
        out = _correlate(x, w, stride, dil, groups, p).shape[2:]
        full = [
            (o - 1) * s - 2 * pp + dl * (kk - 1) + 1
            for o, s, pp, dl, kk in zip(out, stride, p, dil, k)
        ]
        op = tuple(n - f for n, f in zip(size, full))
        y = rng.standard_normal((2, c_out, *out))
        ref = (y.reshape(2, -1) @ dense).reshape(2, cg * groups, *size)
        got = _backends.torch_conv(
            torch.from_numpy(w),
            torch.from_numpy(y),
            stride,
            dil,
            groups,
            adjoint=True,
            padding=p,
            output_padding=op,
        )
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=64 * EPS64)
    # no padding given: the full read range L = (out - 1) s + dl (k - 1) + 1
    out = _correlate(x, w, stride, dil, groups, (0,) * len(k)).shape[2:]
    y = torch.from_numpy(rng.standard_normal((1, c_out, *out)))
    got = _backends.torch_conv(torch.from_numpy(w), y, stride, dil, groups, adjoint=True)
    assert tuple(got.shape[2:]) == tuple(
        (o - 1) * s + dl * (kk - 1) + 1 for o, s, dl, kk in zip(out, stride, dil, k)
    )


def test_torch_conv_declines_what_torch_cannot_run(env):
    w = np.ones((2, 1, 3))
    x = np.ones((1, 1, 5))
    args = ((1,), (1,), 1)
    if env.backend is Backend.TORCH:
        w32 = torch.ones(2, 1, 3)
        assert (
            _backends.torch_conv(
                w32, torch.ones(1, 1, 5, dtype=torch.float64), *args, adjoint=False
            )
            is None
        )
        assert (
            _backends.torch_conv(
                w32.to(torch.complex64),
                torch.ones(1, 1, 5).to(torch.complex64),
                *args,
                adjoint=False,
            )
            is None
        )
        assert (
            _backends.torch_conv(w32, torch.ones(1, 1, 5).to(torch.complex64), *args, adjoint=False)
            is None
        )
        assert _backends.torch_conv(torch.from_numpy(w), x, *args, adjoint=False) is None
        assert _backends.torch_conv(w, torch.from_numpy(x), *args, adjoint=False) is None
        got = _backends.torch_conv(w32, torch.ones(1, 1, 5), *args, adjoint=False)
        np.testing.assert_array_equal(got.numpy(), np.full((1, 2, 3), 3.0))
    else:
        xp_w, xp_x = env.asarray(w), env.asarray(x)
        assert _backends.torch_conv(xp_w, xp_x, *args, adjoint=False) is None
        assert _backends.torch_conv(xp_w, xp_x, *args, adjoint=True) is None


# -- the GPU certificate's acceptance rule, with factors exact by construction ---------------


def _exact_factors(count, m, n, s):
    """Blocks ``U diag(s) V^H`` whose factors are columns of identities: exact, no rounding."""
    u = np.broadcast_to(np.eye(m)[:, :n], (count, m, n)).copy()
    v = np.broadcast_to(np.eye(n), (count, n, n)).copy()
    s = np.broadcast_to(np.asarray(s, dtype=np.float64), (count, n)).copy()
    return u, s, v


def _counting_exact(xp, calls):
    def exact(b):
        calls.append(int(b.shape[0]))
        return xp.linalg.svdvals(b)

    return exact


def test_certificate_threshold_is_8_m_eps_s_max(env):
    # U scaled by c and s by 1/c: A V - U S stays ~0, only ||U^H U - I||_F = (c^2-1) sqrt(n)
    # = 72 eps reveals the damage; bound 72 eps s_max vs tol = 8 m eps s_max = 48 eps s_max
    xp, m, n = env.xp, 6, 4
    u, s, v = _exact_factors(3, m, n, [1e3, 500.0, 200.0, 100.0])
    a = (u * s[:, None, :]) @ np.swapaxes(v, -1, -2)
    c = 1 + 18 * EPS64
    bad = np.array([False, True, False])

    def fast(tall):
        uu = np.where(bad[:, None, None], u * c, u)
        ss = np.where(bad[:, None], s / c, s)
        return env.asarray(uu), env.asarray(ss), env.asarray(v)

    calls = []
    got = _backends.certified_svdvals(env.asarray(a), fast, _counting_exact(xp, calls), xp)
    assert calls == [1]
    np.testing.assert_allclose(env.to_numpy(got), s, rtol=0, atol=64 * EPS64 * 1e3)
    # undamaged: accepted whatever the gap between s_1 and s_2 (tol scales with s_max)
    u, s, v = _exact_factors(3, m, n, [1.0, 1e-6, 1e-9, 0.0])
    a = (u * s[:, None, :]) @ np.swapaxes(v, -1, -2)
    calls.clear()
    got = _backends.certified_svdvals(
        env.asarray(a),
        lambda t: (env.asarray(u), env.asarray(s), env.asarray(v)),
        _counting_exact(xp, calls),
        xp,
    )
    assert calls == []
    np.testing.assert_array_equal(env.to_numpy(got), s)


def _lapack_factors(env, t: np.ndarray):
    """``(U, s, V)`` of LAPACK's SVD, as the fast solver returns them (V, not V^H)."""
    uu, ss, vh = np.linalg.svd(t, full_matrices=False)
    return env.asarray(uu), env.asarray(ss), env.asarray(np.swapaxes(vh, -1, -2))


def test_certificate_hands_gesvda_tall_blocks_and_recomputes_all_if_all_fail(env):
    xp = env.xp
    rng = np.random.default_rng(9)
    wide = rng.standard_normal((5, 4, 7))  # gesvda wants m >= n: transposed first
    ref = np.linalg.svd(wide, compute_uv=False)

    def fast(tall):
        t = env.to_numpy(tall)
        if t.shape[-2] < t.shape[-1]:
            msg = "gesvda: m < n"
            raise ValueError(msg)
        return _lapack_factors(env, t)

    calls = []
    got = _backends.certified_svdvals(env.asarray(wide), fast, _counting_exact(xp, calls), xp)
    assert calls == []
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=64 * EPS64 * ref.max())

    def all_wrong(tall):
        uu, ss, vv = fast(tall)
        return uu, ss * 1.01, vv

    got = _backends.certified_svdvals(env.asarray(wide), all_wrong, _counting_exact(xp, calls), xp)
    assert calls == [5]
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=64 * EPS64 * ref.max())


def test_certificate_bisects_both_halves(env):
    xp = env.xp
    a = np.random.default_rng(10).standard_normal((128, 5, 3))
    ref = np.linalg.svd(a, compute_uv=False)
    poison = {0, 127}  # one failing block in each half

    def fast(tall):
        t = env.to_numpy(tall)
        rows = {i for i in range(128) for j in range(t.shape[0]) if np.array_equal(t[j], a[i])}
        if rows & poison:
            msg = "gesvda: the algorithm failed to converge"
            raise RuntimeError(msg)
        return _lapack_factors(env, t)

    calls = []
    got = _backends.certified_svdvals(env.asarray(a), fast, _counting_exact(xp, calls), xp)
    assert calls == [32, 32]
    np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=64 * EPS64 * ref.max())


def test_one_thread_math_without_torch_loaded(monkeypatch):
    # torch is limited only where a caller already imported it
    monkeypatch.setattr(_backends, "_torch", lambda: None)
    with _backends.one_thread_math(), _backends.one_thread_math():
        assert _backends._region_torch is None
    # nor BLAS where threadpoolctl is missing
    monkeypatch.setattr(_backends, "_threadpool_controller", lambda: None)
    with _backends.one_thread_math():
        assert _backends._region_blas is None
    assert _backends._region_depth == 0
    fn, _ = _record(0.0)
    assert _backends.map_chunks(fn, range(4), np, workers=2) == [0, 1, 4, 9]


# host_numpy_twin / complex_view (norm.py's zero-copy CPU paths): mutation testing found
# them untested outside convsv.norm.


def test_host_numpy_twin_views_a_torch_cpu_tensor_without_copying():
    import array_api_compat.numpy as cnp

    base = torch.randn(3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    x = base.conj().requires_grad_(False)  # a lazily conjugated view
    arr, ns = _backends.host_numpy_twin(x, array_api_compat.array_namespace(x))
    assert type(arr) is np.ndarray
    assert ns is cnp
    np.testing.assert_array_equal(arr, np.conj(base.numpy()))
    leaf = torch.randn(5, dtype=torch.float64, requires_grad=True)
    arr, _ = _backends.host_numpy_twin(leaf, array_api_compat.array_namespace(leaf))
    assert np.shares_memory(arr, leaf.detach().numpy())  # zero copy


def test_host_numpy_twin_leaves_other_arrays_alone():
    import array_api_strict

    for x in (np.ones(3), array_api_strict.ones(3)):
        ns = array_api_compat.array_namespace(x)
        arr, got = _backends.host_numpy_twin(x, ns)
        assert arr is x
        assert got is ns


@pytest.mark.parametrize(
    ("dtype", "want"), [(np.float32, np.complex64), (np.float64, np.complex128)]
)
def test_complex_view_of_numpy_pairs(dtype, want):
    pairs = np.arange(12, dtype=dtype).reshape(3, 2, 2)
    z = _backends.complex_view(pairs)
    assert z.dtype == want
    assert z.shape == (3, 2)
    np.testing.assert_array_equal(z, pairs[..., 0] + 1j * pairs[..., 1])
    assert np.shares_memory(z, pairs)


def test_complex_view_of_torch_pairs_and_none_elsewhere():
    import array_api_strict

    pairs = torch.arange(12, dtype=torch.float64).reshape(3, 2, 2)
    z = _backends.complex_view(pairs.transpose(0, 1))  # not contiguous: made so first
    assert z.dtype == torch.complex128
    np.testing.assert_array_equal(
        z.numpy(),
        pairs.transpose(0, 1)[..., 0].numpy() + 1j * pairs.transpose(0, 1)[..., 1].numpy(),
    )
    assert _backends.complex_view(array_api_strict.ones((3, 2))) is None
    assert _backends.complex_view(np.ones((3, 2), dtype=np.int64)) is None
    assert _backends.complex_view(np.ones((3, 2), dtype=np.complex128)) is None
