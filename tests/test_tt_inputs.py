"""convsv.tt: namespaces, dtypes, refusals and forwarded options (issue 14: the tt.py
mutants that survived a run on NumPy, array_api_strict and torch)."""

from __future__ import annotations

import numpy as np
import pytest

import convsv
import convsv.tt as tt


def _cores(rng, c_in=5, c_out=4, r1=3, r2=2, k=(3, 3)):
    return (
        rng.standard_normal((c_in, r1)),
        rng.standard_normal((r2, r1, *k)),
        rng.standard_normal((r2, c_out)),
    )


@pytest.mark.parametrize("odd", [0, 1, 2])
def test_ttkernel_refuses_mixed_namespaces(odd):
    torch = pytest.importorskip("torch")
    cores = [torch.as_tensor(a) for a in _cores(np.random.default_rng(0))]
    cores[odd] = cores[odd].numpy()
    with pytest.raises(TypeError, match="[Mm]ultiple namespaces"):
        tt.TTKernel(*cores)


def test_rank_mismatch_message_names_each_core():
    k1, k2, _ = _cores(np.random.default_rng(1))
    k3 = np.ones((5, 4))  # r2 = 5 rows, c_out = 4 columns; k2 has r2 = 2
    with pytest.raises(ValueError, match=r"k1 has r1=3, k2 has \(r2, r1\)=\(2, 3\), k3 has r2=5$"):
        tt.TTKernel(k1, k2, k3)


@pytest.mark.parametrize("ranks", [(1, 2, 3), [2], np.array([1, 2, 3])])
def test_decompose_refuses_ranks_that_are_not_a_pair(ranks):
    k = np.random.default_rng(2).standard_normal((4, 5, 3, 3))
    with pytest.raises(ValueError, match=r"^ranks must be an int or a pair \(r1, r2\) of ints"):
        tt.decompose(k, ranks=ranks)


def test_decompose_takes_one_int_for_both_ranks():
    k = np.random.default_rng(2).standard_normal((4, 5, 3, 3))
    assert tt.decompose(k, ranks=3).ranks == (3, 3)
    t = tt.decompose(k, ranks=np.int64(3))
    assert t.ranks == (3, 3)
    assert t.ranks == tt.decompose(k, ranks=np.array([3, 3])).ranks


def test_decompose_refuses_a_zero_rank_by_name():
    k = np.random.default_rng(2).standard_normal((4, 5, 3, 3))
    with pytest.raises(ValueError, match=r"^ranks must be >= 1 on every axis, got \(0, 2\)"):
        tt.decompose(k, ranks=(0, 2))


def test_decompose_xp_moves_a_numpy_kernel():
    torch = pytest.importorskip("torch")
    k = np.random.default_rng(3).standard_normal((4, 5, 3, 3))
    t = tt.decompose(k, ranks=(5, 4), xp=torch)
    assert all(isinstance(a, torch.Tensor) for a in (t.k1, t.k2, t.k3))
    # full ranks: the decomposition is exact
    np.testing.assert_allclose(t.to_full().numpy(), k, atol=1e-12)


def test_singular_values_xp_moves_numpy_cores():
    torch = pytest.importorskip("torch")
    t = tt.TTKernel(*_cores(np.random.default_rng(4)))
    sv = tt.singular_values(t, 6, xp=torch)
    assert isinstance(sv, torch.Tensor)
    full = np.einsum("ia,bak,bo->oik", t.k1, t.k2.reshape(2, 3, 9), t.k3).reshape(4, 5, 3, 3)
    np.testing.assert_allclose(
        sv.numpy(), np.sort(convsv.singular_values(full, 6))[::-1], atol=1e-12 * float(sv[0])
    )


def test_singular_values_progress_is_off_by_default_and_forwarded(capsys):
    t = tt.TTKernel(*_cores(np.random.default_rng(5)))
    tt.singular_values(t, 6)
    assert capsys.readouterr().err == ""
    tt.singular_values(t, 6, progress=True)
    assert capsys.readouterr().err != ""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_result_memory_check_counts_the_result_dtype(monkeypatch, dtype):
    import convsv.spectrum as spectrum

    seen = []
    monkeypatch.setattr(spectrum, "check_fits_ram", lambda nbytes, *a, **k: seen.append(nbytes))
    t = tt.TTKernel(*(a.astype(dtype) for a in _cores(np.random.default_rng(6))))
    tt.singular_values(t, 6)
    # first tt's own check of the full answer: min(c_out, c_in) * 36 values, counted twice
    # (the sort's copy); then the core layer's (2 x 3 channels)
    size = np.dtype(dtype).itemsize
    assert seen == [2 * 4 * 36 * size, 2 * 2 * 36 * size]


def test_orthogonality_loss_keeps_float32(env):
    cores = [env.asarray(a.astype(np.float32)) for a in _cores(np.random.default_rng(7))]
    loss = tt.orthogonality_loss(tt.TTKernel(*cores))
    assert env.to_numpy(loss).dtype == np.float32
    k1, _, k3 = (a.astype(np.float64) for a in _cores(np.random.default_rng(7)))
    ref = (np.sum((k1.T @ k1 - np.eye(3)) ** 2) + np.sum((k3 @ k3.T - np.eye(2)) ** 2)) / 13
    np.testing.assert_allclose(float(env.to_numpy(loss)), ref, rtol=1e-5)


@pytest.mark.parametrize("which", ["k1", "k2", "k3"])
def test_orthonormalize_names_the_core_it_cannot_move(which):
    torch = pytest.importorskip("torch")
    cores = {
        n: torch.as_tensor(a) for n, a in zip(("k1", "k2", "k3"), _cores(np.random.default_rng(8)))
    }
    cores[which].requires_grad_(True)
    with pytest.raises(ValueError, match=rf"^{which} is a torch tensor that requires grad"):
        tt.orthonormalize(tt.TTKernel(**cores), xp=np)


def test_clip_refuses_min_sv_against_the_given_max_sv():
    t = tt.TTKernel(*_cores(np.random.default_rng(9)))
    with pytest.raises(ValueError, match=r"in \[0, max_sv=1\.0\], got 2\.0$"):
        tt.clip(t, 6, 1.0, min_sv=2.0)


def test_clip_uses_the_stride():
    # subsampling only lowers the norm: a layer above max_sv at stride 1 but below it at
    # stride 2 needs no clipping at stride 2 (the dense strided operator decides)
    from helpers import torch_dense

    rng = np.random.default_rng(10)
    for _ in range(50):
        t = tt.TTKernel(*_cores(rng, c_in=2, c_out=6, r1=2, r2=3))
        full = t.to_full()
        s1 = np.linalg.norm(torch_dense(full, (6, 6), (1, 1), (1, 1), 1, "circular"), 2)
        s2 = np.linalg.norm(torch_dense(full, (6, 6), (2, 2), (1, 1), 1, "circular"), 2)
        if s2 < 0.8 * s1:
            break
    max_sv = (s1 + s2) / 2
    out = tt.clip(t, 6, max_sv, stride=2)
    np.testing.assert_allclose(out.to_full(), full, atol=1e-10 * np.abs(full).max())
    assert (
        np.linalg.norm(torch_dense(out.to_full(), (6, 6), (2, 2), (1, 1), 1, "circular"), 2)
        <= max_sv
    )
