"""Cholesky CMA-ES of Wang & Ponce (GECCO 2022), spec/optimizers.md §1.1.

A stripped-down CMA-ES: weighted recombination of the best half, cumulative step-size
adaptation, and a rank-one update of a factor A (C = AᵀA) and of A⁻¹ applied only when more
than ``Aupdate_freq``·λ samples were drawn since the last update. No rank-μ update, no active
update, no h_σ stall. Samples are row vectors: x = m + σ ξ A.

A starts as the identity and each update is "scale plus rank one", so A and A⁻¹ are kept exactly
as ``scale·I + LᵀR`` (``ScaledIdentityPlusLowRank``): sampling costs O(λ·N·k) for k updates so
far instead of the O(λ·N²) of a dense product.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .base import Optimizer, OptimizerError, check_choice, check_code, check_float, check_int, register


class ScaledIdentityPlusLowRank:
    """An N×N matrix ``scale·I + leftᵀ @ right`` (left, right: k×N), dense once k passes N/2."""

    def __init__(self, dim: int):
        self.dim = dim
        self.scale = 1.0
        self.left = np.zeros((0, dim))
        self.right = np.zeros((0, dim))
        self.dense: np.ndarray | None = None

    def row_times(self, rows: np.ndarray) -> np.ndarray:
        """``rows @ M`` for a vector or a stack of row vectors."""
        if self.dense is not None:
            return rows @ self.dense
        return self.scale * rows + (rows @ self.left.T) @ self.right

    def times_column(self, vector: np.ndarray) -> np.ndarray:
        """``M @ vector``."""
        if self.dense is not None:
            return self.dense @ vector
        return self.scale * vector + self.left.T @ (self.right @ vector)

    def scale_and_add_outer(self, factor: float, left: np.ndarray, right: np.ndarray) -> None:
        """``M ← factor·M + outer(left, right)``."""
        if self.dense is None and len(self.left) + 1 > self.dim // 2:
            self.dense = self.to_dense()
        if self.dense is not None:
            self.dense = factor * self.dense + np.outer(left, right)
            return
        self.scale *= factor
        self.right = np.vstack([factor * self.right, right])
        self.left = np.vstack([self.left, left])

    def to_dense(self) -> np.ndarray:
        if self.dense is not None:
            return self.dense.copy()
        return self.scale * np.eye(self.dim) + self.left.T @ self.right

    def state(self) -> dict[str, Any]:
        return {"scale": self.scale, "left": self.left, "right": self.right, "dense": self.dense}

    def load(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.left = np.array(state["left"], dtype=np.float64).reshape(-1, self.dim)
        self.right = np.array(state["right"], dtype=np.float64).reshape(-1, self.dim)
        self.dense = None if state["dense"] is None else np.array(state["dense"], dtype=np.float64)


def log_rank_weights(mu: float) -> np.ndarray:
    """w_i ∝ ln(μ + ½) − ln i for i = 1..⌊μ⌋, summing to 1 (best first); μ = λ/2 in CMA-ES."""
    weights = math.log(mu + 0.5) - np.log(np.arange(1, math.floor(mu) + 1))
    return weights / weights.sum()


def select_parents(scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the best scored samples (NaN excluded), best first, and their weights.

    With fewer scored samples than weights, the leading weights are renormalised to sum to 1.
    """
    scored = np.flatnonzero(~np.isnan(scores))
    ranked = scored[np.argsort(-scores[scored], kind="stable")][: len(weights)]
    if len(ranked) < len(weights):
        weights = weights[: len(ranked)] / weights[: len(ranked)].sum()
    return ranked, weights


def effective_mu(weights: np.ndarray) -> float:
    return float(weights.sum() ** 2 / np.sum(weights**2))


class CMAStrategyParameters:
    """The constants of §1.1 for search dimension N and population λ."""

    def __init__(self, dim: int, population: int):
        n = dim
        self.population = population
        self.weights = log_rank_weights(population / 2)
        self.mu = len(self.weights)
        self.mu_eff = effective_mu(self.weights)
        self.c_c = 4 / (n + 4)
        self.c_sigma = math.sqrt(self.mu_eff) / (math.sqrt(self.mu_eff) + math.sqrt(n))
        self.c_1 = 2 / (n + math.sqrt(2)) ** 2
        self.d_sigma = 1 + self.c_sigma + 2 * max(0.0, math.sqrt((self.mu_eff - 1) / (n + 1)) - 1)
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))


def cma_hyperparameters(
    dim: int, population: Any, sigma0: Any, init_code: Any, first_generation: Any, Aupdate_freq: Any
) -> dict[str, Any]:
    """Validated hyperparameters shared by ``cma`` and ``hess-cma``."""
    if init_code is not None:
        init_code = check_code("init_code", init_code, check_int("dim", dim, 1))
    return {
        "population": check_int("population", population, 2),
        "sigma0": check_float("sigma0", sigma0, 0.0, low_open=True),
        "init_code": init_code,
        "first_generation": check_choice("first_generation", first_generation, ("sample", "init")),
        "Aupdate_freq": None if Aupdate_freq is None else check_int("Aupdate_freq", Aupdate_freq, 1),
    }


@register
class CholeskyCMAES(Optimizer):
    """``cma``: Cholesky CMA-ES (spec §1.1), maximising.

    Hyperparameters:
      population: λ, samples per generation (default 40); μ = ⌊λ/2⌋ parents.
      sigma0: initial step size (default 3.0, published for the 4096-d fc6 GAN; ≈1 for the
        100-d DCGAN).
      init_code: initial mean (default zeros).
      first_generation: "sample" (default) — generation 0 is λ samples around init_code, so every
        generation is a full batch; "init" — generation 0 is the single code init_code, as published.
      Aupdate_freq: factor update when more than Aupdate_freq·λ samples were drawn since the last
        one (default 10); None uses the MATLAB in-vivo threshold λ/(c₁·N·10).
    NaN scores are left out of the ranking; with fewer than μ scored samples the top ones get the
    leading weights renormalised (μ_eff recomputed); with none scored the distribution is unchanged.
    """

    name = "cma"

    def __init__(
        self,
        dim: int,
        *,
        seed: int | None = None,
        population: int = 40,
        sigma0: float = 3.0,
        init_code: Any = None,
        first_generation: str = "sample",
        Aupdate_freq: int | None = 10,
    ):
        hyperparameters = cma_hyperparameters(dim, population, sigma0, init_code, first_generation, Aupdate_freq)
        super().__init__(dim, seed=seed, hyperparameters=hyperparameters)
        init_code = hyperparameters["init_code"]
        self._init_search(self.dim, np.zeros(self.dim) if init_code is None else init_code)

    def _init_search(self, search_dim: int, initial_mean: np.ndarray) -> None:
        """Set up the strategy in a ``search_dim``-dimensional coordinate space."""
        hp = self.hyperparameters
        self.search_dim = search_dim
        self.params = CMAStrategyParameters(search_dim, hp["population"])
        if hp["Aupdate_freq"] is None:
            self.update_threshold = hp["population"] / self.params.c_1 / search_dim / 10
        else:
            self.update_threshold = hp["Aupdate_freq"] * hp["population"]
        self.mean = np.array(initial_mean, dtype=np.float64)
        self.sigma = hp["sigma0"]
        self.path_sigma = np.zeros(search_dim)
        self.path_c = np.zeros(search_dim)
        self.factor = ScaledIdentityPlusLowRank(search_dim)
        self.factor_inverse = ScaledIdentityPlusLowRank(search_dim)
        self.n_sampled = 0
        self.n_sampled_at_factor_update = 0
        self.n_factor_updates = 0
        self._normals: np.ndarray | None = None  # ξ of the pending samples; None: the init code alone
        self._points: np.ndarray | None = None  # pending samples in search coordinates

    def _to_codes(self, points: np.ndarray) -> np.ndarray:
        """Search coordinates -> codes (identity here; ``hess-cma`` maps to the full space)."""
        return points

    def covariance(self) -> np.ndarray:
        """C = AᵀA (dense; for analysis at small dimension)."""
        factor = self.factor.to_dense()
        return factor.T @ factor

    def _propose(self) -> np.ndarray:
        if self.generation == 0 and self.hyperparameters["first_generation"] == "init":
            self._normals = None
            self._points = self.mean[None, :].copy()
        else:
            self._normals = self._rng.standard_normal((self.params.population, self.search_dim))
            self._points = self.mean + self.sigma * self.factor.row_times(self._normals)
            self.n_sampled += self.params.population
        return self._to_codes(self._points)

    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        if self._normals is None:  # the single init code: nothing to learn from its score
            return
        p = self.params
        ranked, weights = select_parents(scores, p.weights)
        if len(ranked) == 0:
            return
        mu_eff = effective_mu(weights)
        self.mean = weights @ self._points[ranked]
        mean_normal = weights @ self._normals[ranked]
        self.path_sigma = (1 - p.c_sigma) * self.path_sigma + math.sqrt(
            p.c_sigma * (2 - p.c_sigma) * mu_eff
        ) * mean_normal
        self.path_c = (1 - p.c_c) * self.path_c + math.sqrt(p.c_c * (2 - p.c_c) * mu_eff) * self.factor.row_times(
            mean_normal
        )
        self.sigma *= math.exp((p.c_sigma / p.d_sigma) * (np.linalg.norm(self.path_sigma) / p.chi_n - 1))
        if self.n_sampled - self.n_sampled_at_factor_update > self.update_threshold:
            self.n_sampled_at_factor_update = self.n_sampled
            self._update_factors()

    def _update_factors(self) -> None:
        """Rank-one update of A and A⁻¹ along p_c (Suttorp, Hansen & Igel form)."""
        c_1 = self.params.c_1
        v = self.factor_inverse.row_times(self.path_c)
        norm_v2 = float(v @ v)
        if norm_v2 == 0.0:
            return
        root = math.sqrt(1 + norm_v2 * c_1 / (1 - c_1))
        shrink = math.sqrt(1 - c_1)
        inverse_times_v = self.factor_inverse.times_column(v)
        self.factor.scale_and_add_outer(shrink, v, (shrink / norm_v2) * (root - 1) * self.path_c)
        self.factor_inverse.scale_and_add_outer(
            1 / shrink, inverse_times_v, -(1 / shrink / norm_v2) * (1 - 1 / root) * v
        )
        self.n_factor_updates += 1

    def _strategy_state(self) -> dict[str, Any]:
        return {
            "mean": self.mean.copy(),
            "sigma": self.sigma,
            "path_sigma": self.path_sigma.copy(),
            "path_c": self.path_c.copy(),
            "factor": self.factor.state(),
            "factor_inverse": self.factor_inverse.state(),
            "n_sampled": self.n_sampled,
            "n_sampled_at_factor_update": self.n_sampled_at_factor_update,
            "n_factor_updates": self.n_factor_updates,
            "normals": self._normals,
            "points": self._points,
        }

    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        if np.shape(state["mean"]) != (self.search_dim,):
            raise OptimizerError(f"state mean has shape {np.shape(state['mean'])}, expected ({self.search_dim},)")
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.sigma = float(state["sigma"])
        self.path_sigma = np.array(state["path_sigma"], dtype=np.float64)
        self.path_c = np.array(state["path_c"], dtype=np.float64)
        self.factor.load(state["factor"])
        self.factor_inverse.load(state["factor_inverse"])
        self.n_sampled = int(state["n_sampled"])
        self.n_sampled_at_factor_update = int(state["n_sampled_at_factor_update"])
        self.n_factor_updates = int(state["n_factor_updates"])
        self._normals = None if state["normals"] is None else np.array(state["normals"], dtype=np.float64)
        self._points = None if state["points"] is None else np.array(state["points"], dtype=np.float64)
