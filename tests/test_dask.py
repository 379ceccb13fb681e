"""convsv.dask: lazy spectra as Dask tasks, against independent dense references."""

from __future__ import annotations

import importlib.util
import math
import os
import pickle
import threading
import time

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from helpers import dense_svd, tol, torch_dense
from hypothesis import given
from hypothesis import strategies as st
from strategies import Layer, layers

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import convsv
import convsv.dask as cvd
from convsv.spectrum import chunk_block_bytes


@pytest.fixture(scope="module")
def client():
    """Two single-threaded in-process workers (fast to start; a real scheduler)."""
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as c,
    ):
        yield c


def _reference(layer: Layer) -> np.ndarray:
    k64 = layer.cast().astype(np.complex128 if layer.dtype.startswith("complex") else np.float64)
    return dense_svd(
        torch_dense(k64, layer.n, layer.stride, layer.dilation, layer.groups, "circular")
    )


def _real(name: str) -> type:
    return np.dtype({"complex64": "float32", "complex128": "float64"}.get(name, name)).type


def _layer_kwargs(layer: Layer) -> dict:
    return {"stride": layer.stride, "dilation": layer.dilation, "groups": layer.groups}


class TestSingularValues:
    @given(
        layer=layers(max_entries=20_000),
        chunk_blocks=st.sampled_from([None, 1, 3]),
        solver=st.sampled_from(["svd", "gram"]),
    )
    def test_equals_in_process_and_dense_svd(self, env, layer, chunk_blocks, solver):
        k = env.asarray(layer.cast())
        # chunk_memory of a few frequencies' blocks: many tiles, ragged ones included
        cm = (
            None
            if chunk_blocks is None
            else chunk_blocks
            * chunk_block_bytes(np.zeros(1, dtype=layer.dtype), _spec(layer), xnp, solver)
        )
        lazy = cvd.singular_values(
            k, layer.n, **_layer_kwargs(layer), solver=solver, chunk_memory=cm
        )
        n_sv = min(layer.rows, layer.cols)
        assert isinstance(lazy, da.Array)
        assert lazy.shape == (n_sv,)
        got = lazy.compute(scheduler="sync")
        rdt = _real(layer.dtype)
        assert type(got) is np.ndarray
        assert got.dtype == rdt
        assert np.all(got[:-1] >= got[1:])
        in_process = env.to_numpy(
            convsv.singular_values(k, layer.n, **_layer_kwargs(layer), solver=solver)
        )
        expected = _reference(layer)
        smax = max(float(expected[0]), 1e-300)
        # the same code on other tiles: equal up to the tiles' rounding
        atol = tol(np, rdt, smax, factor=8.0)
        if solver == "gram":  # eigenvalues of P P^H: a value s errs by ~eps s_max^2 / s, and
            # the tiles' BLAS may sum the Gram blocks in another order than the pool's
            atol = atol * smax / np.maximum(in_process, np.sqrt(np.finfo(rdt).eps) * smax)
        assert np.all(np.abs(got - in_process) <= atol), np.max(np.abs(got - in_process) / atol)
        if solver == "svd":
            np.testing.assert_allclose(
                got, expected, rtol=0, atol=tol(np, rdt, smax, max(layer.rows, layer.cols))
            )

    @given(layer=layers(divisible=False, max_entries=8_000, dims=(1, 2)))
    def test_non_divisible_is_one_dense_task(self, layer):
        k = layer.cast()
        lazy = cvd.singular_values(k, layer.n, **_layer_kwargs(layer))
        assert lazy.numblocks == (1,)
        expected = _reference(layer)
        smax = max(float(expected[0]), 1e-300)
        rdt = _real(layer.dtype)
        np.testing.assert_allclose(
            lazy.compute(scheduler="sync"),
            expected,
            rtol=0,
            atol=tol(np, rdt, smax, max(layer.rows, layer.cols)),
        )

    @pytest.mark.parametrize(
        ("shape", "n", "stride", "groups"),
        [
            ((32, 16, 3, 3), (3, 5), 1, 2),  # 16 x 16 blocks per group, ragged tiles
            ((16, 4, 3, 3, 3), (4, 4, 6), (2, 2, 2), 1),  # 16 x 32 polyphase blocks, 3-D tiles
            ((24, 24, 5), 63, 3, 1),  # 1-D: the half axis is the tiled one, odd grid
        ],
    )
    def test_real_block_shapes_on_tiles(self, shape, n, stride, groups):
        rng = np.random.default_rng(3)
        k = rng.standard_normal(shape)
        layer = Layer(
            k,
            *[
                tuple(v) if isinstance(v, tuple) else (v,) * (len(shape) - 2)
                for v in (n, stride, 1)
            ],
            groups,
            "float64",
        )
        spec = _spec(layer)
        cm = 2 * chunk_block_bytes(k, spec, xnp, "svd")
        lazy = cvd.singular_values(k, n, stride, groups=groups, chunk_memory=cm)
        assert lazy.numblocks == (1,)  # sorted: one merged chunk
        unsorted = cvd.singular_values(k, n, stride, groups=groups, chunk_memory=cm, sort=False)
        assert unsorted.numblocks[0] >= 4
        expected = _reference(layer)
        atol = tol(np, np.float64, float(expected[0]), max(layer.rows, layer.cols))
        np.testing.assert_allclose(lazy.compute(scheduler="sync"), expected, rtol=0, atol=atol)
        values = unsorted.compute(scheduler="sync")
        np.testing.assert_allclose(np.sort(values)[::-1], expected, rtol=0, atol=atol)
        # every chunk is sorted descending, and has the size the graph promised
        for block, size in zip(unsorted.to_delayed(), unsorted.chunks[0]):
            part = block.compute(scheduler="sync")
            assert part.shape == (size,)
            assert np.all(part[:-1] >= part[1:])

    def test_chunk_memory_bounds_every_task(self):
        # complex kernel: no mirrored values, so a chunk's length counts its blocks
        rng = np.random.default_rng(4)
        k = rng.standard_normal((8, 6, 3, 3)) + 1j * rng.standard_normal((8, 6, 3, 3))
        per_freq = chunk_block_bytes(
            k, _spec(Layer(k, (12, 10), (1, 1), (1, 1), 1, "complex128")), xnp, "svd"
        )
        for budget in (per_freq, 5.5 * per_freq, 37 * per_freq):
            lazy = cvd.singular_values(k, (12, 10), chunk_memory=budget, sort=False)
            freqs_per_task = np.asarray(lazy.chunks[0]) / 6
            assert freqs_per_task.max() * per_freq <= budget
            assert freqs_per_task.sum() == 120
            assert lazy.numblocks[0] == math.ceil(120 / freqs_per_task.max())

    def test_the_kernel_is_one_graph_key(self):
        k = np.random.default_rng(5).standard_normal((16, 16, 3, 3))
        lazy = cvd.singular_values(k, 16, chunk_memory=2**18, sort=False)
        assert lazy.numblocks[0] > 10
        graph = dict(lazy.__dask_graph__())
        sizes = sorted(len(pickle.dumps(task)) for task in graph.values())
        assert sum(s >= k.nbytes for s in sizes) == 1, sizes[-3:]
        assert sizes[-2] < k.nbytes / 4

    @pytest.mark.parametrize("scheduler", ["threads", "processes", "distributed"])
    def test_schedulers(self, scheduler, request):
        k = np.random.default_rng(6).standard_normal((6, 4, 3, 3)).astype(np.float32)
        expected = dense_svd(
            torch_dense(k.astype(np.float64), (8, 8), (2, 2), (1, 1), 1, "circular")
        )
        lazy = cvd.singular_values(k, 8, 2, chunk_memory=2**13)
        norm = cvd.operator_norm(k, 8, 2, chunk_memory=2**13, solver="gram")
        sched = request.getfixturevalue("client") if scheduler == "distributed" else scheduler
        got, top = da.compute(lazy, norm, scheduler=sched)
        assert got.dtype == np.float32
        assert top.dtype == np.float32
        atol = tol(np, np.float32, float(expected[0]), 64)
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
        np.testing.assert_allclose(top, expected[0], rtol=0, atol=atol)


class TestOperatorNorm:
    @given(layer=layers(max_entries=20_000))
    def test_is_the_largest_singular_value(self, env, layer):
        k = env.asarray(layer.cast())
        cm = 2 * chunk_block_bytes(np.zeros(1, dtype=layer.dtype), _spec(layer), xnp, "svd")
        lazy = cvd.operator_norm(k, layer.n, **_layer_kwargs(layer), chunk_memory=cm)
        assert isinstance(lazy, da.Array)
        assert lazy.shape == ()
        expected = _reference(layer)
        rdt = _real(layer.dtype)
        got = lazy.compute(scheduler="sync")
        assert got.dtype == rdt
        np.testing.assert_allclose(
            got, expected[0], rtol=0, atol=tol(np, rdt, float(expected[0]), layer.rows)
        )

    def test_is_a_tree_reduction(self):
        k = np.random.default_rng(7).standard_normal((8, 8, 3, 3))
        lazy = cvd.operator_norm(k, 32, chunk_memory=2**16)
        graph = dict(lazy.__dask_graph__())
        # no task gathers the spectrum: every reduction step takes at most split_every inputs
        chunks = cvd.singular_values(k, 32, chunk_memory=2**16, sort=False).numblocks[0]
        assert chunks > 32
        assert len(graph) > chunks + 2


class TestSummaries:
    """The documented recipes: top-k, histogram, stable rank without gathering."""

    def test_topk_histogram_stable_rank(self, client):
        k = np.random.default_rng(8).standard_normal((6, 4, 3, 3))
        layer = Layer(k, (8, 8), (1, 1), (1, 1), 1, "float64")
        expected = _reference(layer)
        values = cvd.singular_values(k, 8, chunk_memory=2**12, sort=False)
        assert values.numblocks[0] > 10
        top = da.topk(values, 10)
        counts, edges = da.histogram(values, bins=20, range=(0.0, float(expected[0]) * 1.01))
        stable_rank = (values**2).sum() / values.max() ** 2
        top, counts, stable_rank = client.compute([top, counts, stable_rank], sync=True)
        atol = tol(np, np.float64, float(expected[0]), 384)
        np.testing.assert_allclose(top, expected[:10], rtol=0, atol=atol)
        ref_counts, _ = np.histogram(expected, bins=edges)
        # a value within rounding of an edge may fall on either side
        assert np.abs(counts - ref_counts).sum() <= 2
        assert counts.sum() == expected.size
        ref_rank = float(np.sum(expected**2) / expected[0] ** 2)
        assert stable_rank == pytest.approx(ref_rank, rel=1e-12)


class TestStoreNpy:
    @pytest.mark.parametrize("where", ["threads", "distributed"])
    def test_writes_chunk_by_chunk(self, tmp_path, where, request):
        k = np.random.default_rng(9).standard_normal((8, 4, 3, 3))
        values = cvd.singular_values(k, 8, chunk_memory=2**13, sort=False)
        assert values.numblocks[0] > 4
        path = tmp_path / "sv.npy"
        kwargs = {
            "scheduler": request.getfixturevalue("client") if where == "distributed" else where
        }
        assert cvd.store_npy(values, path, **kwargs) == str(path)
        assert os.listdir(tmp_path) == ["sv.npy"]
        written = np.load(path)
        expected = _reference(Layer(k, (8, 8), (1, 1), (1, 1), 1, "float64"))
        np.testing.assert_allclose(
            np.sort(written)[::-1],
            expected,
            rtol=0,
            atol=tol(np, np.float64, float(expected[0]), 256),
        )

    def test_a_failing_task_leaves_no_file(self, tmp_path):
        k = np.random.default_rng(10).standard_normal((4, 4, 3, 3))
        values = cvd.singular_values(k, 8, chunk_memory=2**12, sort=False)

        def fail_on_third(block, block_info=None):
            if block_info[0]["chunk-location"][0] == 2:
                msg = "worker lost"
                raise RuntimeError(msg)
            return block

        with pytest.raises(RuntimeError, match="worker lost") as info:
            cvd.store_npy(
                values.map_blocks(fail_on_third, dtype=values.dtype),
                tmp_path / "sv.npy",
                scheduler="sync",
            )
        assert os.listdir(tmp_path) == []
        assert "was not written" in "".join(getattr(info.value, "__notes__", ["was not written"]))

    def test_a_client_closed_mid_computation_surfaces(self, tmp_path):
        k = np.random.default_rng(11).standard_normal((4, 4, 3, 3))
        values = cvd.singular_values(k, 8, chunk_memory=2**11, sort=False)
        assert values.numblocks[0] >= 8

        started = threading.Event()

        def slow(block):
            started.set()  # in-process workers: the test sees the event
            time.sleep(0.1)
            return block

        def close_when_started():
            started.wait(60)
            time.sleep(0.15)
            c.close()

        cluster = distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
        )
        c = distributed.Client(cluster, set_as_default=False)
        timer = threading.Thread(target=close_when_started)
        try:
            timer.start()
            with pytest.raises(Exception) as info:  # noqa: PT011 - whatever distributed raises
                cvd.store_npy(
                    values.map_blocks(slow, dtype=values.dtype), tmp_path / "sv.npy", scheduler=c
                )
            assert not isinstance(info.value, AssertionError)
        finally:
            timer.join()
            c.close()
            cluster.close()
        assert os.listdir(tmp_path) == []


class TestReport:
    def test_rows_per_layer(self, client):
        rng = np.random.default_rng(12)
        layers_ = [
            {"kernel": rng.standard_normal((8, 4, 3, 3)), "n": 8, "stride": 2, "name": "conv1"},
            {"kernel": rng.standard_normal((6, 3, 3, 3)), "n": 6, "groups": 1},
        ]
        rows = cvd.report(layers_, client=client)
        assert [r["name"] for r in rows] == ["conv1", "layer1"]
        for row, layer, stride in zip(rows, layers_, (2, 1)):
            ref = _reference(
                Layer(layer["kernel"], (layer["n"],) * 2, (stride,) * 2, (1, 1), 1, "float64")
            )
            atol = tol(np, np.float64, float(ref[0]), 512)
            assert row["count"] == ref.size
            assert row["operator_norm"] == pytest.approx(ref[0], abs=atol)
            assert row["smallest"] == pytest.approx(ref[-1], abs=atol)
            assert row["stable_rank"] == pytest.approx(np.sum(ref**2) / ref[0] ** 2, rel=1e-10)
        assert cvd.report(layers_[1:])[0]["count"] == rows[1]["count"]  # default scheduler

    def test_pytorch_padding_keywords_are_settings_too(self, client):
        # any keyword of convsv.singular_values (helper-31: padding_mode, transposed were
        # refused although the docstring allows them)
        rng = np.random.default_rng(13)
        k = rng.standard_normal((4, 3, 3, 3))
        rows = cvd.report(
            [{"kernel": k, "n": 6, "padding": 1, "padding_mode": "reflect", "name": "r"}],
            client=client,
        )
        torch = pytest.importorskip("torch")
        m = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", bias=False).double()
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(k))
            eye = torch.eye(3 * 36, dtype=torch.float64).reshape(-1, 3, 6, 6)
            ref = dense_svd(m(eye).reshape(3 * 36, -1).T.numpy())
        assert rows[0]["padding_mode"] == "reflect"
        assert rows[0]["operator_norm"] == pytest.approx(ref[0], rel=1e-12)
        assert rows[0]["count"] == ref.size

    def test_bad_layers_fail_before_any_task(self):
        k = np.ones((2, 2, 3, 3))
        with pytest.raises(ValueError, match=r"layers\[0\].*missing \['n'\]"):
            cvd.report([{"kernel": k}])
        with pytest.raises(ValueError, match=r"unknown \['strides'\]"):
            cvd.report([{"kernel": k, "n": 4, "strides": 2}])
        with pytest.raises(TypeError, match=r"layers\[1\] must be a mapping"):
            cvd.report([{"kernel": k, "n": 4}, k])
        with pytest.raises(ValueError, match="groups=3 must divide"):
            cvd.report([{"kernel": k, "n": 4, "groups": 3}])

    @pytest.mark.skipif(
        importlib.util.find_spec("convsv.torch") is not None,
        reason="convsv.torch exists: modules are reported through it",
    )
    def test_torch_modules_need_convsv_torch(self):
        torch = pytest.importorskip("torch")
        with pytest.raises(TypeError, match=r"convsv.torch.*module.weight.detach\(\)"):
            cvd.report([(torch.nn.Conv2d(2, 2, 3), (1, 2, 8, 8))])


class TestBadInput:
    @pytest.mark.parametrize(
        ("kwargs", "exc", "pattern"),
        [
            ({"chunk_memory": -1}, ValueError, r"chunk_memory must be a positive.*-1"),
            ({"chunk_memory": True}, ValueError, r"chunk_memory must be a positive.*True"),
            ({"chunk_memory": "1GB"}, ValueError, r"chunk_memory .*'1GB'"),
            (
                {"chunk_memory": 100},
                ValueError,
                r"chunk_memory=100 bytes is less than one frequency's",
            ),
            ({"sort": "yes"}, TypeError, r"sort must be True or False, got 'yes'"),
            ({"method": "lfa", "stride": 3}, ValueError, r"needs n divisible by stride"),
            ({"solver": "eig"}, ValueError, r"solver must be one of"),
        ],
    )
    def test_raises_at_call_time_naming_the_argument(self, env, kwargs, exc, pattern):
        kwargs = dict(kwargs)
        k = env.asarray(np.ones((4, 4, 3, 3)))
        stride = kwargs.pop("stride", 1)
        with pytest.raises(exc, match=pattern):
            cvd.singular_values(k, 8, stride, **kwargs)

    def test_input_is_not_mutated(self, env):
        k = env.asarray(np.random.default_rng(13).standard_normal((4, 4, 3, 3)))
        before = env.to_numpy(k).copy()
        cvd.singular_values(k, 8, chunk_memory=2**12).compute(scheduler="sync")
        np.testing.assert_array_equal(env.to_numpy(k), before)


def _spec(layer: Layer):
    from convsv._validation import conv_spec

    return conv_spec(layer.kernel, layer.n, layer.stride, layer.dilation, layer.groups)
