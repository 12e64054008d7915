"""`actmax analyze geometry`'s report (server.geometry) on DCGAN faces at two positions."""

import json

import numpy as np
import pytest

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
    basis = np.load(tmp_path / "eigenbasis.npz")
    assert basis["basis"].shape == (100, 100) and basis["eigvals"].shape == (100,)
    assert np.all(np.diff(basis["eigvals"]) <= 1e-12)
