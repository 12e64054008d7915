"""`actmax analyze geometry`'s report (server.geometry) on DCGAN faces at two positions."""

import json

import numpy as np
import pytest

from generators import GeneratorError
from rig_client.version import package_version
from server.cli import main
from server.geometry import report
from tests.analysis.test_geometry import dcgan  # noqa: F401  (the fixture: skips without the weights)


@pytest.mark.usefixtures("dcgan")
def test_report_writes_outputs(tmp_path):
    summary = report("dcgan-faces", tmp_path, n_positions=2, method="jac", progress=False)
    for name in ("summary.json", "spectra.png", "homogeneity.png", "walk_real.png", "walk_shuffled.png",
                 "eigenbasis.npz", "hessians.npz"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    for model in ("real", "shuffled"):
        assert {"dims_99", "dims_999", "dims_9999", "corr_log_mean", "corr_lin_median"} <= set(summary[model])
    assert summary["k"] == summary["d"] == 100 and summary["eigenbasis_dropped"] == 0
    assert summary["actmax_version"] == package_version()  # which build made these numbers
    basis = np.load(tmp_path / "eigenbasis.npz")
    assert basis["basis"].shape == (100, 100) and basis["eigvals"].shape == (100,)
    assert np.all(np.diff(basis["eigvals"]) <= 1e-12)


@pytest.mark.usefixtures("dcgan")
def test_a_lanczos_report_is_of_the_top_k_and_its_eigenbasis_of_positive_eigenvalues(tmp_path):
    summary = report("dcgan-faces", tmp_path, n_positions=2, method="hvp_ad", k=10, progress=False)
    assert (summary["k"], summary["d"]) == (10, 100)
    for model in ("real", "shuffled"):  # 99% of the top 10 needs the 10th: beyond what k = 10 resolves
        assert summary[model]["dims_99"] is None
    assert np.load(tmp_path / "hessians.npz")["eigvals_real"].shape == (2, 10)
    basis = np.load(tmp_path / "eigenbasis.npz")  # H_avg of two rank-10 Hessians has rank 20
    assert summary["eigenbasis_dropped"] == 80 and basis["basis"].shape == (100, 20)
    assert np.all(basis["eigvals"] > 0)


def test_weights_load_from_the_servers_weights_folder_or_weights(tmp_path, monkeypatch, capsys):
    """As `actmax serve`: ACTMAX_WEIGHTS_DIR/<generator>/, or the --weights given (unreadable ones here)."""
    (tmp_path / "weights" / "dcgan-faces").mkdir(parents=True)
    (tmp_path / "weights" / "dcgan-faces" / "weights.tar").write_bytes(b"not weights")
    monkeypatch.setenv("ACTMAX_WEIGHTS_DIR", str(tmp_path / "weights"))
    with pytest.raises(GeneratorError, match=f"from {tmp_path / 'weights' / 'dcgan-faces' / 'weights.tar'}"):
        report("dcgan-faces", tmp_path / "out", n_positions=2, progress=False)
    other = tmp_path / "other.tar"
    other.write_bytes(b"neither")
    assert main(["analyze", "geometry", "dcgan-faces", "--weights", str(other), "--out", str(tmp_path)]) == 2
    assert f"from {other}" in capsys.readouterr().err
