"""The ``convsv`` command-line report."""

from __future__ import annotations

import numpy as np

import convsv
from convsv.cli import main, resnet18_cifar, wrn_16_10


def test_report_of_kernels_from_a_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    k1, k2 = rng.standard_normal((8, 4, 3, 3)), rng.standard_normal((4, 8, 1, 1))
    path = tmp_path / "net.npz"
    np.savez(path, first=k1, second=k2)
    assert main(["--kernels", str(path), "--n", "8", "--stride", "2"]) == 0
    out = capsys.readouterr().out
    for name, k in (("first", k1), ("second", k2)):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        smax = float(line.split()[5])
        assert abs(smax - float(convsv.operator_norm(k, 8, 2))) < 1e-4
    assert "2 layers" in out


def test_example_networks_have_consistent_shapes():
    for layers in (resnet18_cifar(), wrn_16_10()):
        assert layers[0].c_in == 3
        for a in layers:
            assert a.n % a.stride == 0
    assert [lay.c_out for lay in wrn_16_10() if lay.name.endswith("conv2")] == [160, 160, 320, 320, 640, 640]


def test_missing_backend_is_reported(capsys):
    assert main(["--backend", "no_such_backend_module"]) == 2
    assert "not installed" in capsys.readouterr().err
