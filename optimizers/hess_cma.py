"""``hess-cma``: Cholesky CMA-ES in the top-k eigenbasis of a GAN metric (geometry_topology.md §A7).

Samples are x = x₀ + y·diag(λ_i^{−p})·U_kᵀ where y runs the ``cma`` strategy in k dimensions
(so x = m + σ ξ A with A = diag(λ^{−p}) U_kᵀ while the factor is still the identity). The
eigenbasis comes from ``analysis.geometry``; this module only takes the arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Optimizer, OptimizerError, check_float, check_int, register
from .cma import CholeskyCMAES, cma_hyperparameters


@register
class HessianCMAES(CholeskyCMAES):
    """``hess-cma``: ``cma`` on coordinates y ∈ R^k, codes x₀ + (y·λ^{−p}) U_kᵀ.

    Hyperparameters:
      basis: (dim, k) array with orthonormal columns U_k (required).
      eigvals: (k,) positive eigenvalues λ_i (required; clip zeros upstream).
      p: exponent of the per-axis scale λ_i^{−p} (default 0.25; 0.4 was used for BigGAN).
      sigma0: default 0.4 (published for fc6 with k = 500; 0.2 for BigGAN).
      population, init_code (x₀, default zeros), first_generation, Aupdate_freq: as for ``cma``.
    The state records basis and eigvals by SHA-256: load it into a hess-cma created with the same arrays.
    """

    name = "hess-cma"
    fingerprinted_hyperparameters = ("basis", "eigvals")

    def __init__(
        self,
        dim: int,
        *,
        seed: int | None = None,
        basis: Any = None,
        eigvals: Any = None,
        p: float = 0.25,
        population: int = 40,
        sigma0: float = 0.4,
        init_code: Any = None,
        first_generation: str = "sample",
        Aupdate_freq: int | None = 10,
    ):
        dim = check_int("dim", dim, 1)
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


def _check_eigenbasis(basis: Any, eigvals: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if basis is None or eigvals is None:
        raise OptimizerError("hess-cma needs basis (dim×k eigenvectors) and eigvals (k,), e.g. from analysis.geometry")
    basis = np.array(basis, dtype=np.float64)
    eigvals = np.array(eigvals, dtype=np.float64)
    if basis.ndim != 2 or basis.shape[0] != dim or not 1 <= basis.shape[1] <= dim:
        raise OptimizerError(f"basis must have shape ({dim}, k) with 1 <= k <= {dim}, got {basis.shape}")
    k = basis.shape[1]
    if eigvals.shape != (k,):
        raise OptimizerError(f"eigvals must have shape ({k},) to match the basis, got {eigvals.shape}")
    if not np.all(np.isfinite(basis)) or not np.all(np.isfinite(eigvals)) or not np.all(eigvals > 0):
        raise OptimizerError("basis must be finite and eigvals finite and > 0 (clip tiny eigenvalues upstream)")
    if not np.allclose(basis.T @ basis, np.eye(k), atol=1e-6):
        raise OptimizerError("basis columns must be orthonormal (eigenvectors of a symmetric matrix)")
    return basis, eigvals
