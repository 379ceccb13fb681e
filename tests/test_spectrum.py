"""singular_values / operator_norm / dense_operator against independent dense references."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_array, dense_svd, tol, torch_dense
from hypothesis import given
from hypothesis import strategies as st
from strategies import Layer, layers

import convsv
from convsv._backends import certified_svdvals
from convsv.reference import sedghi_singular_values
from convsv.spectrum import block_svdvals


def _reference(layer: Layer, padding: str = "circular") -> np.ndarray:
    k64 = layer.cast().astype(np.complex128 if layer.dtype.startswith("complex") else np.float64)
    return torch_dense(k64, layer.n, layer.stride, layer.dilation, layer.groups, padding)


def _sv_tol(xp, rdt, smax: float, size: int, *, dense: bool = False) -> float:
    """Allowed error of computed singular values.

    float32, spectral path: 8 eps s_max against the float64 dense SVD of the same float32
    kernel (measured worst 2.75 eps s_max over 600 random layers with blocks up to ~100
    columns, tests/test_accuracy.py::test_float32_error_over_many_random_layers).
    float32, dense path (one SVD of the whole operator, error growing with its size):
    2 sqrt(size) eps s_max (seen: 8.5 eps s_max at size ~140). float64: the reference's
    own rounding is of the same order as convsv's, hence the looser rule.
    """
    if rdt == xp.float32:
        return (2 * math.sqrt(size) if dense else 8) * float(xp.finfo(rdt).eps) * smax
    return tol(xp, rdt, smax, size)


def _real(xp, name: str):
    return getattr(xp, {"complex64": "float32", "complex128": "float64"}.get(name, name))


class TestDenseOperator:
    @given(layer=layers(divisible=False), padding=st.sampled_from(["circular", "zeros"]))
    def test_matches_torch_conv_on_basis_signals(self, env, layer, padding):
        k = env.asarray(layer.cast())
        a = convsv.dense_operator(
            k, layer.n, layer.stride, dilation=layer.dilation, groups=layer.groups, padding=padding
        )
        assert_array(env, a, dtype=k.dtype, shape=(layer.rows, layer.cols))
        ref = _reference(layer, padding)
        np.testing.assert_allclose(
            env.to_numpy(a),
            ref,
            atol=1e-6 if "64" not in layer.dtype or layer.dtype == "complex64" else 1e-12,
        )

    def test_hwio_layout_is_the_transposed_kernel(self, env):
        rng = np.random.default_rng(1)
        k = rng.standard_normal((5, 3, 3, 2))  # oihw with k = (3, 2)
        a = convsv.dense_operator(env.asarray(k), (4, 5), 1)
        b = convsv.dense_operator(
            env.asarray(np.transpose(k, (2, 3, 1, 0))), (4, 5), 1, layout="hwio"
        )
        np.testing.assert_array_equal(env.to_numpy(a), env.to_numpy(b))

    def test_refuses_above_memory_limit_before_building(self, env):
        k = env.asarray(np.ones((64, 64, 3, 3)))
        with pytest.raises(ValueError, match=r"memory_limit"):
            convsv.dense_operator(k, 64)
        a = convsv.dense_operator(env.asarray(np.ones((1, 1, 3))), 8, memory_limit=2**12)
        assert tuple(a.shape) == (8, 8)
        with pytest.raises(ValueError, match=r"dense 8 x 8 operator"):
            convsv.dense_operator(env.asarray(np.ones((1, 1, 3))), 8, memory_limit=100)


class TestSingularValues:
    @given(
        layer=layers(),
        method=st.sampled_from(["auto", "lfa", "fft"]),
        layout=st.sampled_from(["oihw", "hwio"]),
    )
    def test_spectral_paths_equal_dense_svd(self, env, layer, method, layout):
        kern = layer.cast()
        if layout == "hwio":
            kern = np.moveaxis(np.moveaxis(kern, 0, -1), 0, -2)
        k = env.asarray(kern)
        sv = convsv.singular_values(
            k,
            layer.n,
            layer.stride,
            dilation=layer.dilation,
            groups=layer.groups,
            layout=layout,
            method=method,
        )
        expected = dense_svd(_reference(layer))
        rdt = _real(env.xp, layer.dtype)
        assert_array(env, sv, dtype=rdt, shape=(min(layer.rows, layer.cols),))
        smax = max(float(expected[0]), 1e-300)
        np.testing.assert_allclose(
            env.to_numpy(sv),
            expected,
            rtol=0,
            atol=_sv_tol(env.xp, rdt, smax, max(layer.rows, layer.cols)),
        )

    @given(layer=layers(divisible=False, max_entries=20_000))
    def test_non_divisible_uses_the_dense_operator(self, env, layer):
        k = env.asarray(layer.cast())
        sv = convsv.singular_values(
            k, layer.n, layer.stride, dilation=layer.dilation, groups=layer.groups
        )
        expected = dense_svd(_reference(layer))
        rdt = _real(env.xp, layer.dtype)
        assert_array(env, sv, dtype=rdt, shape=(min(layer.rows, layer.cols),))
        np.testing.assert_allclose(
            env.to_numpy(sv),
            expected,
            rtol=0,
            atol=_sv_tol(env.xp, rdt, float(expected[0]), max(layer.rows, layer.cols), dense=True),
        )

    @given(layer=layers(max_entries=20_000, complex_ok=False))
    def test_zero_padding(self, env, layer):
        k = env.asarray(layer.cast())
        sv = convsv.singular_values(
            k, layer.n, layer.stride, dilation=layer.dilation, groups=layer.groups, padding="zeros"
        )
        expected = dense_svd(_reference(layer, "zeros"))
        rdt = _real(env.xp, layer.dtype)
        np.testing.assert_allclose(
            env.to_numpy(sv),
            expected,
            rtol=0,
            atol=tol(env.xp, rdt, max(float(expected[0]), 1e-30), layer.cols),
        )

    def test_kernel_larger_than_input_wraps_around_the_torus(self, env):
        # Sedghi et al.'s published fft2(kernel, input_shape) crops a 5x5 kernel to 3x3
        # on a 3x3 torus; the operator wraps it. convsv must match the operator.
        rng = np.random.default_rng(7)
        k = rng.standard_normal((4, 3, 5, 5))
        expected = dense_svd(torch_dense(k, (3, 3), (1, 1), (1, 1), 1, "circular"))
        sedghi = np.sort(sedghi_singular_values(np.transpose(k, (2, 3, 1, 0)), (3, 3)).ravel())[
            ::-1
        ]
        assert np.abs(sedghi - expected).max() > 1e-2  # the published lines are wrong here
        sv = convsv.singular_values(env.asarray(k), 3)
        np.testing.assert_allclose(env.to_numpy(sv), expected, atol=1e-12 * expected[0])

    def test_matches_sedghi_where_sedghi_is_right(self, env):
        rng = np.random.default_rng(3)
        k = rng.standard_normal((6, 4, 3, 3))
        sedghi = np.sort(sedghi_singular_values(np.transpose(k, (2, 3, 1, 0)), (8, 8)).ravel())[
            ::-1
        ]
        sv = convsv.singular_values(env.asarray(k), 8)
        np.testing.assert_allclose(env.to_numpy(sv), sedghi, atol=1e-12 * sedghi[0])

    def test_the_card_call_moves_a_numpy_kernel_to_xp(self, env):
        k = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
        sv = convsv.singular_values(k, 8, stride=2, xp=env.module)
        ref = dense_svd(torch_dense(k, (8, 8), (2, 2), (1, 1), 1, "circular"))
        assert sv.shape[0] == 4 * 4 * min(8, 16)
        assert type(sv).__module__.split(".")[0] == type(env.asarray(k)).__module__.split(".")[0]
        np.testing.assert_allclose(env.to_numpy(sv), ref, atol=1e-12 * ref[0])
        sv2 = convsv.singular_values(k, 8, stride=2, xp=env.xp)  # compat namespace too
        np.testing.assert_array_equal(env.to_numpy(sv2), env.to_numpy(sv))

    def test_small_memory_limit_chunks_without_changing_the_result(self, env):
        k = env.asarray(np.random.default_rng(2).standard_normal((3, 2, 3, 3)))
        full = convsv.singular_values(k, (6, 8), 2)
        chunked = convsv.singular_values(
            k, (6, 8), 2, memory_limit=5000
        )  # one frequency row per chunk
        np.testing.assert_array_equal(env.to_numpy(full), env.to_numpy(chunked))

    def test_non_divisible_too_large_says_why(self, env):
        k = env.asarray(np.ones((64, 64, 3, 3)))
        with pytest.raises(ValueError, match=r"not divisible by stride.*dense"):
            convsv.singular_values(k, 33, 2)
        with pytest.raises(ValueError, match=r"needs n divisible by stride"):
            convsv.singular_values(k, 33, 2, method="fft")
        with pytest.raises(ValueError, match=r"padding='circular' only"):
            convsv.singular_values(k, 32, 2, method="lfa", padding="zeros")

    def test_input_is_not_mutated(self, env):
        data = np.random.default_rng(4).standard_normal((4, 3, 3, 3))
        k = env.asarray(data)
        convsv.singular_values(k, 6, 2, layout="oihw")
        convsv.singular_values(k, 6, 1, layout="hwio", method="fft")
        np.testing.assert_array_equal(env.to_numpy(k), data)

    def test_gram_solver_accuracy_limit(self, env):
        # One block with singular values 1 and 1e-9: the Gram route squares them and
        # the small one only keeps absolute accuracy ~ eps * s_max / s_small.
        k = np.zeros((2, 2, 1))
        k[0, 0, 0], k[1, 1, 0] = 1.0, 1e-9
        kk = env.asarray(k)
        exact = env.to_numpy(convsv.singular_values(kk, 4))
        gram = env.to_numpy(convsv.singular_values(kk, 4, solver="gram"))
        np.testing.assert_allclose(exact, [1.0] * 4 + [1e-9] * 4, rtol=1e-12)
        np.testing.assert_allclose(gram[:4], 1.0, rtol=1e-12)
        eps = np.finfo(np.float64).eps
        assert np.all(np.abs(gram[4:] - 1e-9) <= 4 * np.sqrt(eps))  # documented bound

    @given(layer=layers())
    def test_gram_solver_large_values(self, env, layer):
        k = env.asarray(layer.cast())
        kw = dict(dilation=layer.dilation, groups=layer.groups)
        svd = env.to_numpy(convsv.singular_values(k, layer.n, layer.stride, **kw))
        gram = env.to_numpy(convsv.singular_values(k, layer.n, layer.stride, solver="gram", **kw))
        eps = float(env.xp.finfo(_real(env.xp, layer.dtype)).eps)
        assert np.all(np.abs(gram - svd) <= 20 * math.sqrt(eps) * svd[0] + 1e-300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(6, 5, 5), (4, 12, 40), (3, 40, 12)])
def test_batched_solver_keeps_normwise_accuracy_on_ill_conditioned_blocks(env, dtype, shape):
    # Each backend's batched path (LAPACK, or cuSOLVER's gesvda on GPUs) must give every
    # singular value, down to exact zeros, within a few eps * s_max, as a dense SVD does.
    rng = np.random.default_rng(7)
    b, m, n = shape
    r = min(m, n)
    s = np.zeros((b, r))
    s[:, : r - 2] = np.logspace(0, -12, r - 2)  # two exact zeros at the end
    q1 = np.linalg.qr(rng.standard_normal((b, m, m)) + 1j * rng.standard_normal((b, m, m)))[0]
    q2 = np.linalg.qr(rng.standard_normal((b, n, n)) + 1j * rng.standard_normal((b, n, n)))[0]
    blocks = (q1[..., :r] * s[:, None, :]) @ q2[..., :r, :]
    cdt = "complex64" if dtype == "float32" else "complex128"
    got = block_svdvals(env.asarray(blocks.astype(cdt)), "svd", env.xp)
    assert_array(env, got, dtype=_real(env.xp, dtype), shape=(b, r))
    np.testing.assert_allclose(
        env.to_numpy(got), s, rtol=0, atol=tol(env.xp, _real(env.xp, dtype), 1.0, r)
    )


class TestOperatorNorm:
    @given(layer=layers(divisible=False, max_entries=20_000))
    def test_is_the_largest_singular_value(self, env, layer):
        k = env.asarray(layer.cast())
        kw = dict(dilation=layer.dilation, groups=layer.groups)
        norm = convsv.operator_norm(k, layer.n, layer.stride, **kw)
        rdt = _real(env.xp, layer.dtype)
        assert_array(env, norm, dtype=rdt, shape=())
        ref = dense_svd(_reference(layer))[0]
        assert abs(float(env.to_numpy(norm)) - ref) <= _sv_tol(
            env.xp, rdt, ref, layer.cols, dense=True
        )


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "exc", "pattern"),
        [
            (dict(kernel=np.ones((3, 3)), n=4), ValueError, r"kernel must have 3, 4 or 5 dim"),
            (dict(kernel=np.ones((2, 2, 3, 3)), n=0), ValueError, r"n must be >= 1"),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=(4, 4, 4)),
                ValueError,
                r"n must be an int or a sequence of 2",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, stride=(1, 2, 3)),
                ValueError,
                r"stride must be",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, dilation=0),
                ValueError,
                r"dilation must be >= 1",
            ),
            (dict(kernel=np.ones((2, 2, 3, 3)), n=4.5), TypeError, r"n must be a positive int"),
            (dict(kernel=np.ones((2, 2, 3, 3)), n=True), TypeError, r"n must be a positive int"),
            (
                dict(kernel=np.ones((3, 2, 3, 3)), n=4, groups=2),
                ValueError,
                r"groups=2 must divide",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, groups=0),
                ValueError,
                r"groups must be a positive",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3), dtype=np.int64), n=4),
                TypeError,
                r"kernel must have dtype",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3), dtype=bool), n=4),
                TypeError,
                r"kernel must have dtype",
            ),
            (dict(kernel=np.ones((2, 2, 3, 3), dtype=np.float16), n=4), TypeError, r"float16"),
            (dict(kernel=np.full((2, 2, 3, 3), np.nan), n=4), ValueError, r"NaN or Inf"),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, layout="nchw"),
                ValueError,
                r"layout must be one of 'oihw', 'hwio'",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, method="svd"),
                ValueError,
                r"method must be one of",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, padding="reflect"),
                ValueError,
                r"padding must be one of",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, solver="qr"),
                ValueError,
                r"solver must be one of",
            ),
            (
                dict(kernel=np.ones((2, 2, 3, 3)), n=4, xp="numpy"),
                TypeError,
                r"xp must be an array namespace",
            ),
            (dict(kernel=np.ones((0, 2, 3, 3)), n=4), ValueError, r"no empty axis"),
        ],
    )
    def test_bad_input_names_the_argument(self, env, kwargs, exc, pattern):
        kwargs = dict(kwargs)
        kern = kwargs.pop("kernel")
        kernel = (
            kern
            if kern.dtype in (np.float16, bool, np.int64) and env.backend.value != "numpy"
            else env.asarray(kern)
            if kern.dtype != np.float16 or env.backend.value == "numpy"
            else kern
        )
        with pytest.raises(exc, match=pattern):
            convsv.singular_values(kernel, **kwargs)


def test_import_pulls_in_no_heavy_library():
    code = (
        "import sys, convsv; bad = [m for m in ('torch', 'cupy', 'scipy', 'array_api_strict')"
        " if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_device_arrays_are_not_copied_to_the_host():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    k = torch.ones((2, 2, 3, 3), device="cuda", dtype=torch.float64)
    with pytest.raises(ValueError, match=r"does not copy device memory to the host"):
        convsv.singular_values(k, 4, xp=np)


class TestCertifiedSVD:
    """The a-posteriori check that guards cuSOLVER's approximate ``gesvda`` on GPUs.

    Exercised on every backend with stand-in fast solvers, so the guard is tested even
    where no GPU is present; the GPU runs also go through it for real.
    """

    @staticmethod
    def _blocks(env, shape=(6, 7, 5)):
        rng = np.random.default_rng(3)
        a = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
        return env.asarray(a), np.linalg.svd(a, compute_uv=False)

    @staticmethod
    def _factors(env, tall):
        # LAPACK's factors, made on the host: the GPU backends' own batched SVDs (Jacobi
        # with a loose stopping rule) are themselves not accurate enough to be accepted
        u, s, vh = np.linalg.svd(env.to_numpy(tall), full_matrices=False)
        return env.asarray(u), env.asarray(s), env.asarray(np.conj(np.swapaxes(vh, -1, -2)))

    def _exact(self, xp, calls):
        def exact(b):
            calls.append(int(b.shape[0]))
            return xp.linalg.svdvals(b)

        return exact

    @pytest.mark.parametrize("shape", [(6, 7, 5), (6, 5, 7), (2, 3, 7, 5)])
    def test_accepts_correct_factors_without_recomputing(self, env, shape):
        xp = env.xp
        blocks, ref = self._blocks(env, shape)
        calls = []
        got = certified_svdvals(blocks, lambda t: self._factors(env, t), self._exact(xp, calls), xp)
        assert calls == []
        assert_array(env, got, dtype=xp.float64, shape=ref.shape)
        np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=1e-13 * ref.max())

    @pytest.mark.parametrize("damage", ["values", "left", "right", "nan"])
    def test_recomputes_exactly_the_damaged_blocks(self, env, damage):
        xp = env.xp
        blocks, ref = self._blocks(env)
        bad = np.array([False, True, False, False, True, False])

        def fast(tall):
            u, s, v = self._factors(env, tall)
            mask = xp.asarray(bad, device=env.device)
            if damage == "values":  # silently wrong values, consistent-looking factors
                s = xp.where(mask[:, None], s * 1.001, s)
            elif damage == "left":
                u = xp.where(mask[:, None, None], u * 1.001, u)
            elif damage == "right":
                v = xp.where(mask[:, None, None], v * 1.001, v)
            else:
                s = xp.where(mask[:, None], xp.asarray(float("nan"), device=env.device), s)
            return u, s, v

        calls = []
        got = certified_svdvals(blocks, fast, self._exact(xp, calls), xp)
        assert calls == [int(bad.sum())]
        np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=1e-13 * ref.max())

    def test_falls_back_when_the_fast_solver_raises(self, env):
        xp = env.xp
        blocks, ref = self._blocks(env)

        def fast(tall):
            msg = "gesvda: the algorithm failed to converge"
            raise RuntimeError(msg)

        calls = []
        got = certified_svdvals(blocks, fast, self._exact(xp, calls), xp)
        assert calls == [6]
        np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=1e-13 * ref.max())

    def test_a_raising_block_costs_only_its_half(self, env):
        xp = env.xp
        blocks, ref = self._blocks(env, (128, 6, 4))
        first = env.to_numpy(blocks)[0]

        def fast(tall):  # like gesvda, one bad block (here: the first) fails the call
            if np.any(np.all(np.isclose(env.to_numpy(tall), first), axis=(-2, -1))):
                msg = "gesvda: the algorithm failed to converge"
                raise RuntimeError(msg)
            return self._factors(env, tall)

        calls = []
        got = certified_svdvals(blocks, fast, self._exact(xp, calls), xp)
        assert calls == [32]
        np.testing.assert_allclose(env.to_numpy(got), ref, rtol=0, atol=1e-13 * ref.max())


def test_progress_bar_reports_on_stderr_and_changes_nothing(env, capsys):
    k = env.asarray(np.random.default_rng(5).standard_normal((4, 3, 3, 3)))
    quiet = env.to_numpy(convsv.singular_values(k, 8))
    assert capsys.readouterr().err == ""
    loud = env.to_numpy(convsv.singular_values(k, 8, progress=True, memory_limit=2**16))
    err = capsys.readouterr().err
    assert "frequency chunks" in err
    np.testing.assert_allclose(loud, quiet, rtol=0, atol=1e-12 * quiet[0])
    with pytest.raises(TypeError, match=r"progress must be True or False, got 'yes'"):
        convsv.operator_norm(k, 8, progress="yes")


@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_gradients_flow_through_torch(env, solver):
    # spectral-norm regularisers differentiate operator_norm inside training loops
    if env.backend.value not in ("torch", "torch-cuda"):
        pytest.skip("autograd is torch's")
    torch = env.module
    g = torch.Generator().manual_seed(0)
    k = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g).to(env.device)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: convsv.operator_norm(w, 6, solver=solver), (k,))
    assert torch.autograd.gradcheck(
        lambda w: convsv.singular_values(w, 6, stride=2, solver=solver)[:4], (k,)
    )
