"""hess-cma: CMA-ES in a synthetic top-k eigenbasis (geometry_topology.md §A7)."""

from __future__ import annotations

import numpy as np
import pytest

import optimizers
from optimizers import OptimizerError

from .cases import synthetic_eigenbasis


def test_codes_are_origin_plus_scaled_eigenbasis_coordinates():
    dim, k = 16, 4
    basis, eigvals = synthetic_eigenbasis(dim, k)
    origin = np.linspace(-1, 1, dim)
    opt = optimizers.create("hess-cma", dim, seed=0, basis=basis, eigvals=eigvals, p=0.25, init_code=origin)
    codes = opt.ask()
    assert codes.shape == (40, dim)
    coordinates = (codes - origin) @ basis  # the displacement lies in span(U_k) ...
    np.testing.assert_allclose(codes - origin, coordinates @ basis.T, atol=1e-12)
    # ... and is x = m + σ ξ diag(λ^-p) U_kᵀ while the factor is the identity.
    np.testing.assert_allclose(coordinates, 0.4 * opt._normals * eigvals**-0.25, atol=1e-12)


def test_optimises_within_the_subspace():
    dim, k = 30, 6
    basis, eigvals = synthetic_eigenbasis(dim, k)
    target = basis @ np.arange(1.0, k + 1)
    opt = optimizers.create("hess-cma", dim, seed=0, basis=basis, eigvals=eigvals, population=12, sigma0=0.5)
    for _ in range(80):
        codes = opt.ask()
        opt.tell(codes, -np.sum((codes - target) ** 2, axis=1))
    assert opt.best_score > -1e-3


@pytest.mark.parametrize(
    ("basis", "eigvals", "message"),
    [
        (np.ones((10, 2)), np.ones(2), "orthonormal"),
        (np.eye(10)[:, :3], np.ones(2), r"eigvals must have shape \(3,\)"),
        (np.eye(10)[:, :3], np.array([1.0, 0.0, 1.0]), "> 0"),
        (np.eye(9)[:, :3], np.ones(3), r"basis must have shape \(10, k\)"),
    ],
)
def test_bad_eigenbases_are_refused(basis, eigvals, message):
    with pytest.raises(OptimizerError, match=message):
        optimizers.create("hess-cma", 10, basis=basis, eigvals=eigvals)


def test_state_names_the_basis_by_fingerprint():
    basis, eigvals = synthetic_eigenbasis(10, 3)
    opt = optimizers.create("hess-cma", 10, seed=0, basis=basis, eigvals=eigvals)
    state = optimizers.loads_state(optimizers.dumps_state(opt.state_dict()))
    assert set(state["hyperparameters"]["basis"]) == {"sha256"}
    other_basis, _ = synthetic_eigenbasis(10, 3, seed=1)
    with pytest.raises(OptimizerError, match="different 'basis'"):
        optimizers.create("hess-cma", 10, basis=other_basis, eigvals=eigvals).load_state_dict(state)


def test_an_eigenbasis_file_gives_its_leading_k_eigenvectors(tmp_path):
    basis, eigvals = synthetic_eigenbasis(10, 5)
    path = tmp_path / "eigenbasis.npz"
    np.savez(path, basis=basis, eigvals=eigvals, generator="dcgan-faces")  # as `actmax analyze geometry` writes
    from_file = optimizers.create("hess-cma", 10, seed=0, eigenbasis=str(path), k=3)
    from_arrays = optimizers.create("hess-cma", 10, seed=0, basis=basis[:, :3], eigvals=eigvals[:3])
    np.testing.assert_array_equal(from_file.ask(), from_arrays.ask())
    state = optimizers.loads_state(optimizers.dumps_state(from_file.state_dict()))
    resumed = optimizers.create("hess-cma", 10, eigenbasis=str(path), k=3)
    resumed.load_state_dict(state)  # the file's arrays are the fingerprinted ones
    np.testing.assert_array_equal(resumed.ask(), from_file.ask())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eigenbasis": "nowhere.npz"}, "nowhere.npz: no such file"),
        ({"k": 3}, "give eigenbasis"),
        ({"eigenbasis": "{file}", "k": 6}, r"k must be an integer in \[1, 5\]"),
        ({"eigenbasis": "{file}", "k": True}, "k must be an integer"),
        ({"eigenbasis": "{file}", "basis": np.eye(10)[:, :2], "eigvals": np.ones(2)}, "not both"),
        ({"eigenbasis": "{junk}"}, r"not a readable .npz \(neither an .npz archive nor an .npy array\)"),
        ({"eigenbasis": "{other}"}, "holds no basis and eigvals"),
        ({"eigenbasis": "{npy}"}, "holds no basis and eigvals"),
    ],
)
def test_bad_eigenbasis_files_are_refused_naming_the_problem(tmp_path, params, message):
    basis, eigvals = synthetic_eigenbasis(10, 5)
    files = {"{file}": tmp_path / "eigenbasis.npz", "{junk}": tmp_path / "junk.npz", "{other}": tmp_path / "h.npz",
             "{npy}": tmp_path / "basis.npy"}
    np.savez(files["{file}"], basis=basis, eigvals=eigvals)
    np.save(files["{npy}"], basis)
    files["{junk}"].write_bytes(b"not a zip")
    np.savez(files["{other}"], codes=basis)
    params = {key: str(files.get(value, value)) if key == "eigenbasis" else value for key, value in params.items()}
    with pytest.raises(OptimizerError, match=message):
        optimizers.create("hess-cma", 10, **params)


def test_an_eigenbasis_of_another_dimension_names_the_codes_dimension(tmp_path):
    basis, eigvals = synthetic_eigenbasis(12, 4)
    np.savez(tmp_path / "e.npz", basis=basis, eigvals=eigvals)
    with pytest.raises(OptimizerError, match=r"shape \(10, k\).*code has 10 dimensions.*\(12, 4\)"):
        optimizers.create("hess-cma", 10, eigenbasis=str(tmp_path / "e.npz"))
