"""The ``convsv`` command: reports checked against independent dense references."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convsv.cli import main, resnet18_cifar, wrn_16_10


def torch_dense_sv(
    k: np.ndarray, n: int, stride: int, padding: int | str, groups: int = 1, mode: str = "zeros"
) -> np.ndarray:
    """Singular values of the 2-D layer, from F.conv2d applied to basis inputs."""
    kt = torch.as_tensor(k)
    c_in = kt.shape[1] * groups
    cols = c_in * n * n
    x = torch.eye(cols, dtype=kt.dtype).reshape(cols, c_in, n, n)
    if mode == "circular":
        x = F.pad(x, [padding] * 4, mode="circular")
        padding = 0
    y = F.conv2d(x, kt, stride=stride, padding=padding, groups=groups)
    return np.linalg.svd(y.reshape(cols, -1).T.numpy(), compute_uv=False)


def _rows(out: str) -> dict:
    return {r["name"]: r for r in json.loads(out)["layers"]}


def test_kernel_file_with_manifest_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    k1 = rng.standard_normal((8, 4, 3, 3))
    k2 = rng.standard_normal((16, 4, 3, 3))
    path = tmp_path / "net.npz"
    np.savez(path, first=k1, grouped=k2)
    man = tmp_path / "m.json"
    man.write_text(
        json.dumps(
            {
                "*": {"n": 6},
                "first": {"stride": 2, "padding": 1},
                "grouped": {"groups": 4, "padding": 1, "padding_mode": "circular"},
            }
        )
    )
    assert main(["--kernels", str(path), "--manifest", str(man), "--format", "json"]) == 0
    rows = _rows(capsys.readouterr().out)
    ref1 = torch_dense_sv(k1, 6, 2, 1)
    ref2 = torch_dense_sv(k2, 6, 1, 1, groups=4, mode="circular")
    assert rows["first"]["exact"]
    assert rows["grouped"]["exact"]
    assert rows["first"]["sigma_max"] == pytest.approx(ref1[0], rel=1e-12)
    assert rows["first"]["sigma_min"] == pytest.approx(ref1[-1], rel=1e-9)
    assert rows["grouped"]["sigma_max"] == pytest.approx(ref2[0], rel=1e-12)
    assert rows["grouped"]["input_shape"] == [16, 6, 6]


def test_toml_manifest_and_csv(tmp_path, capsys):
    k = np.random.default_rng(1).standard_normal((4, 2, 3, 3))
    np.save(tmp_path / "k.npy", k)
    (tmp_path / "m.toml").write_text('["*"]\nn = 5\npadding = 1\n')
    assert (
        main(
            [
                "--kernels",
                str(tmp_path / "k.npy"),
                "--manifest",
                str(tmp_path / "m.toml"),
                "--format",
                "csv",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("name,type,kernel")
    rec = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert float(rec["sigma_max"]) == pytest.approx(torch_dense_sv(k, 5, 1, 1)[0], rel=1e-4)


def test_rank_deficient_is_inf_and_complex_kernels_are_not_cast(tmp_path, capsys):
    rng = np.random.default_rng(2)
    k = rng.standard_normal((2, 2, 1, 1))
    k[1] = 2 * k[0]  # rank 1 per frequency: half the singular values are zero
    kc = rng.standard_normal((3, 3, 3, 3)) + 1j * rng.standard_normal((3, 3, 3, 3))
    np.savez(tmp_path / "k.npz", tall=k, cplx=kc)
    assert main(["--kernels", str(tmp_path / "k.npz"), "--n", "4", "--format", "json"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows["tall"]["condition"] == "inf"
    # periodic complex layer: the dense matrix from the periodic definition (basis inputs)
    n = 4
    dense = np.zeros((3 * n * n, 3 * n * n), dtype=complex)
    for o in range(3):
        for c in range(3):
            for i in range(n):
                for j in range(n):
                    for p in range(3):
                        for q in range(3):
                            dense[
                                o * n * n + i * n + j, c * n * n + (i + p) % n * n + (j + q) % n
                            ] += kc[o, c, p, q]
    ref = np.linalg.svd(dense, compute_uv=False)
    assert rows["cplx"]["sigma_max"] == pytest.approx(ref[0], rel=1e-12)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--kernels", "/no/such/file.npz"], "no such file"),
        (["--n", "0"], "--n"),
        (["--stride", "-1"], "--stride"),
        (["--model", "not a spec"], "pkg.module:factory"),
        (["--model", "no_such_pkg_xyz:make", "--input-shape", "3,8,8"], "cannot import"),
        (["--model", "math:pi", "--input-shape", "3,8,8"], "no callable"),
        (["--backend", "no_such_backend_module"], "not installed"),
        (["--device", "cuda"], "--backend torch"),
        (["--kernels", "x.npz", "--padding", "foo"], "--padding"),
        # a model that does not run on the given input shape (3 channels for 2)
        (["--model", "test_cli:make_model", "--input-shape", "3,5,5"], "does not run"),
        (
            ["--model", "test_cli:make_model", "--input-shape", "2,5,5", "--device", "bogus"],
            "--device",
        ),
        (["--model", "test_cli:make_model", "--input-shape", "2,5,5", "--device", "meta"], "meta"),
        (["--backend", "torch", "--device", "bogus"], "--device 'bogus'"),
        (["--model", "test_cli:broken_factory", "--input-shape", "2,5,5"], "raised RuntimeError"),
        (["--model", "test_cli:picky_model", "--input-shape", "2,5,5"], "AssertionError"),
    ],
)
def test_errors_are_one_line_with_status_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert needle in err


def test_python_dash_m_runs_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "convsv", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: convsv" in out.stdout


def test_two_dimensional_array_is_refused(tmp_path, capsys):
    np.save(tmp_path / "m.npy", np.ones((3, 4)))
    assert main(["--kernels", str(tmp_path / "m.npy")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "(3, 4)" in err


def broken_factory() -> torch.nn.Module:
    msg = "boom"
    raise RuntimeError(msg)


class _Picky(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == 32, "wants 32x32 inputs"
        return self.conv(x)


def picky_model() -> torch.nn.Module:
    return _Picky()


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="reflect"),
    ).double()


def test_model_with_weights_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = make_model()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    png = tmp_path / "s.png"
    assert (
        main(
            [
                "--model",
                "test_cli:make_model",
                "--weights",
                str(tmp_path / "w.pt"),
                "--input-shape",
                "2,5,5",
                "--format",
                "json",
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    rows = _rows(capsys.readouterr().out)
    ref = torch_dense_sv(model[0].weight.detach().numpy(), 5, 1, 1)
    assert rows["0"]["sigma_max"] == pytest.approx(ref[0], rel=1e-12)  # the loaded weights
    assert rows["2"]["type"] == "Conv2d"
    assert png.stat().st_size > 1000


def test_progress_names_layers_in_plain_lines(tmp_path):
    k = np.random.default_rng(0).standard_normal((4, 2, 3, 3))
    np.savez(tmp_path / "k.npz", alpha=k, beta=k)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "convsv.cli",
            "--kernels",
            str(tmp_path / "k.npz"),
            "--n",
            "8",
            "--progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "layer 1/2 alpha" in proc.stderr
    assert "layer 2/2 beta" in proc.stderr
    assert "\r" not in proc.stderr
    assert "\x1b" not in proc.stderr
    assert "Lipschitz bound of the conv stack" not in proc.stdout


def test_example_networks_have_consistent_shapes():
    for layers in (resnet18_cifar(), wrn_16_10()):
        assert layers[0].c_in == 3
        for a in layers:
            assert a.n % a.stride == 0
    assert [lay.c_out for lay in wrn_16_10() if lay.name.endswith("conv2")] == [
        160,
        160,
        320,
        320,
        640,
        640,
    ]
    assert math.isclose(len(resnet18_cifar()), 20)


def test_torch_backend_hwio_float32_csv_and_method(tmp_path, capsys):
    # (helper-37) hwio kernels failed on the torch backend; a float32 torch kernel got a
    # float64-wide interval that missed its true value; csv rounded lower and upper to
    # the same 5 digits; --method fft was reported as lfa
    rng = np.random.default_rng(7)
    k = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    np.save(tmp_path / "hwio.npy", np.moveaxis(k, (0, 1), (-1, -2)))
    np.save(tmp_path / "k.npy", k)
    ref = torch_dense_sv(k.astype(np.float64), 8, 1, 1, mode="circular")
    argv = ["--n", "8", "--backend", "torch", "--format", "json"]
    assert main(["--kernels", str(tmp_path / "hwio.npy"), "--layout", "hwio", *argv]) == 0
    row = _rows(capsys.readouterr().out)["hwio.npy"]
    assert row["lower"] <= ref[0] <= row["upper"]
    assert main(["--kernels", str(tmp_path / "k.npy"), *argv]) == 0
    row = _rows(capsys.readouterr().out)["k.npy"]
    assert row["lower"] <= ref[0] <= row["upper"]
    assert main(["--kernels", str(tmp_path / "k.npy"), "--n", "8", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rec = dict(zip(lines[0].split(","), lines[1].split(",")))
    assert float(rec["lower"]) < float(rec["sigma_max"]) < float(rec["upper"])
    assert float(rec["lower"]) <= ref[0] <= float(rec["upper"])
    assert (
        main(
            [
                "--kernels",
                str(tmp_path / "k.npy"),
                "--n",
                "8",
                "--method",
                "fft",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert _rows(capsys.readouterr().out)["k.npy"]["method"] == "fft"
