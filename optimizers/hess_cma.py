"""``hess-cma``: Cholesky CMA-ES in the top-k eigenbasis of a GAN metric (geometry_topology.md §A7).

Samples are x = x₀ + y·diag(λ_i^{−p})·U_kᵀ where y runs the ``cma`` strategy in k dimensions
(so x = m + σ ξ A with A = diag(λ^{−p}) U_kᵀ while the factor is still the identity). The
eigenbasis comes from ``analysis.geometry``: as arrays, or as the ``eigenbasis.npz`` that
``actmax analyze geometry`` writes.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import Optimizer, OptimizerError, check_float, check_int, register
from .cma import CholeskyCMAES, cma_hyperparameters


@register
class HessianCMAES(CholeskyCMAES):
    """``hess-cma``: ``cma`` on coordinates y ∈ R^k, codes x₀ + (y·λ^{−p}) U_kᵀ.

    Hyperparameters:
      basis: (dim, k) array with orthonormal columns U_k, and
      eigvals: (k,) positive eigenvalues λ_i (clip zeros upstream); or instead of both
      eigenbasis: path of an ``eigenbasis.npz`` (``actmax analyze geometry``) and k: its leading eigenvectors
        used (default all); the resolved arrays are what the optimizer keeps.
      p: exponent of the per-axis scale λ_i^{−p} (default 0.25; 0.4 was used for BigGAN).
      sigma0: default 0.4 (published for fc6 with k = 500; 0.2 for BigGAN).
      population, init_code (x₀, default zeros), first_generation, Aupdate_freq: as for ``cma``.
    The state records basis and eigvals by SHA-256: load it into a hess-cma created with the same arrays.
    """

    name = "hess-cma"
    fingerprinted_hyperparameters = ("basis", "eigvals")
    generator_defaults = ("init_code",)  # sigma0 is a step in the scaled eigen-coordinates, not in the latent

    def __init__(
        self,
        dim: int,
        *,
        seed: int | None = None,
        basis: Any = None,
        eigvals: Any = None,
        eigenbasis: str | Path | None = None,
        k: int | None = None,
        p: float = 0.25,
        population: int = 40,
        sigma0: float = 0.4,
        init_code: Any = None,
        first_generation: str = "sample",
        Aupdate_freq: int | None = 10,
    ):
        dim = check_int("dim", dim, 1)
        if eigenbasis is not None or k is not None:
            if basis is not None or eigvals is not None:
                raise OptimizerError("give hess-cma either eigenbasis (with k) or basis and eigvals, not both")
            basis, eigvals = load_eigenbasis(eigenbasis, k)
        basis, eigvals = _check_eigenbasis(basis, eigvals, dim)
        hyperparameters = cma_hyperparameters(dim, population, sigma0, init_code, first_generation, Aupdate_freq)
        hyperparameters.update(basis=basis, eigvals=eigvals, p=check_float("p", p, 0.0, 2.0))
        Optimizer.__init__(self, dim, seed=seed, hyperparameters=hyperparameters)
        self.origin = np.zeros(dim) if hyperparameters["init_code"] is None else hyperparameters["init_code"]
        self.axis_scales = eigvals ** (-hyperparameters["p"])
        self._init_search(basis.shape[1], np.zeros(basis.shape[1]))

    def _to_codes(self, points: np.ndarray) -> np.ndarray:
        basis = self.hyperparameters["basis"]
        return self.origin + (points * self.axis_scales) @ basis.T


def load_eigenbasis(path: Any, k: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``k`` (default all) columns of ``basis`` and entries of ``eigvals`` of an ``eigenbasis.npz``
    (read without pickle); OptimizerError naming the file and the problem."""
    if path is None:
        raise OptimizerError("k is the number of eigenvectors of an eigenbasis: give eigenbasis (an eigenbasis.npz) "
                             "too")
    if not isinstance(path, str | Path):
        raise OptimizerError(f"eigenbasis must be the path of an eigenbasis.npz, got {path!r}")
    try:
        with _open_regular_file(Path(path).expanduser()) as file:
            loaded = np.load(file, allow_pickle=False)
            members = getattr(loaded, "files", [])  # a .npy file is one array, no members
            arrays = {key: loaded[key] for key in ("basis", "eigvals") if key in members}
    except FileNotFoundError:
        raise OptimizerError(f"eigenbasis {path}: no such file (a path on the server; `actmax analyze geometry` "
                             "writes eigenbasis.npz)") from None
    except IsADirectoryError:
        raise OptimizerError(f"eigenbasis {path} is a folder, not a file; give the eigenbasis.npz that "
                             "`actmax analyze geometry` writes") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and "allow_pickle" in str(error):  # numpy's text would invite pickle
            error = "neither an .npz archive nor an .npy array"
        elif isinstance(error, EOFError):
            error = "empty or cut short"
        raise OptimizerError(f"eigenbasis {path} is not a readable .npz ({error}); give the eigenbasis.npz that "
                             "`actmax analyze geometry` writes") from None
    if "basis" not in arrays or "eigvals" not in arrays:
        raise OptimizerError(f"eigenbasis {path} holds no basis and eigvals arrays; give the eigenbasis.npz that "
                             "`actmax analyze geometry` writes")
    basis, eigvals = arrays["basis"], arrays["eigvals"]
    if basis.ndim != 2:
        raise OptimizerError(f"eigenbasis {path}: basis must be (dim, r), got shape {basis.shape}")
    r = basis.shape[1]
    k = r if k is None else check_int("k", k, 1, r)
    return basis[:, :k], eigvals[:k]


def _open_regular_file(path: Path):
    """``path`` open for reading if it is a regular file: a device, pipe or socket (``/dev/stdin``, a FIFO) would
    block or never end, so it is an OSError, checked on the opened file (no race with a swapped path)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise OSError("not a regular file but a device, pipe or socket")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_eigenbasis(basis: Any, eigvals: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if basis is None or eigvals is None:
        raise OptimizerError("hess-cma needs an eigenbasis: eigenbasis (the path of the eigenbasis.npz that "
                             "`actmax analyze geometry` writes) with k, or basis (dim×k eigenvectors) and eigvals (k,)")
    try:
        basis = np.array(basis, dtype=np.float64)
        eigvals = np.array(eigvals, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptimizerError("basis and eigvals must be arrays of numbers") from None
    if basis.ndim != 2 or basis.shape[0] != dim or not 1 <= basis.shape[1] <= dim:
        raise OptimizerError(f"basis must have shape ({dim}, k) with 1 <= k <= {dim} (the generator's code has "
                             f"{dim} dimensions), got {basis.shape}")
    k = basis.shape[1]
    if eigvals.shape != (k,):
        raise OptimizerError(f"eigvals must have shape ({k},) to match the basis, got {eigvals.shape}")
    if not np.all(np.isfinite(basis)) or not np.all(np.isfinite(eigvals)) or not np.all(eigvals > 0):
        raise OptimizerError("basis must be finite and eigvals finite and > 0 (clip tiny eigenvalues upstream)")
    if not np.allclose(basis.T @ basis, np.eye(k), atol=1e-6):
        raise OptimizerError("basis columns must be orthonormal (eigenvectors of a symmetric matrix)")
    return basis, eigvals
