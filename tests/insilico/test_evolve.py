"""The in-process evolution loop: bookkeeping, evaluation counting, noise handling, reproducibility."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import optimizers
from insilico import InsilicoError
from insilico.evolve import EvolutionResult, evolve

DIM = 8


class IdentityGenerator:
    """'Images' are the codes themselves."""

    latent_dim = DIM

    def generate(self, codes: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(codes))


class Quadratic:
    """A unit with its optimum at `target`: 50 - |z - target|^2, returned as (n, 1) like UnitScorer."""

    def __init__(self) -> None:
        self.target = torch.linspace(-1, 1, DIM, dtype=torch.float64)

    def score(self, images: torch.Tensor) -> np.ndarray:
        return (50.0 - ((images - self.target) ** 2).sum(dim=1, keepdim=True)).numpy()


class Spy(optimizers.Optimizer):
    """Random search that remembers every score it is told (registered only while a test uses it)."""

    name = "test-insilico-spy"

    def __init__(self, dim: int, *, seed: int | None = None, population: int = 4):
        super().__init__(dim, seed=seed, hyperparameters={"population": population})
        self.told: list[np.ndarray] = []

    def _propose(self) -> np.ndarray:
        return self._rng.standard_normal((self.hyperparameters["population"], self.dim))

    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        self.told.append(scores)
        SPIED.append(scores)

    def _strategy_state(self) -> dict[str, Any]:
        return {}

    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        pass


SPIED: list[np.ndarray] = []


def run(name: str, population: int = 6, **kwargs: Any) -> EvolutionResult:
    return evolve(name, IdentityGenerator(), Quadratic(), population=population, **kwargs)


@pytest.mark.parametrize("label, expected", [
    ("cma-sigma1", 1 + 9 * 6),      # CMA's published single first image G(init_code)
    ("sphere-cma-r10", 6 + 9 * 7),  # SphereCMA re-scores its centre: population + 1 after generation 0
    ("ga", 10 * 6),
    ("pycma-diag", 10 * 6),
])
def test_counts_every_asked_image_as_published(label: str, expected: int) -> None:
    result = run(label, n_generations=10, population=6, seed=3)
    assert result.n_evaluations == expected == result.generation_size.sum()
    assert result.n_generations == 10
    assert np.all(np.diff(result.cum_clean_max) >= 0)
    assert result.best_clean == result.clean_max.max() == result.cum_clean_max[-1]
    assert Quadratic().score(torch.as_tensor(result.best_code[None]))[0, 0] == pytest.approx(result.best_clean)
    assert result.cum_max_at(5) == result.cum_clean_max[4]
    assert result.cum_max_at(10_000) == result.best_clean
    assert np.allclose(result.cum_clean_max_per_generation, np.maximum.accumulate(result.clean_max))
    assert result.final_codes.shape == (result.generation_size[-1], DIM)
    assert result.final_code_norm == pytest.approx(np.linalg.norm(result.final_codes, axis=1).mean())


def test_cma_improves_and_reports_its_covariance() -> None:
    result = run("cma-sigma1", n_generations=40, population=10, seed=0)
    assert result.best_clean > result.clean_max[1] and result.best_clean > 49.0
    cond, deviation = result.covariance_stats()
    assert cond >= 1.0 and 0.0 <= deviation < 1.0
    assert np.isnan(run("ga", n_generations=2, population=4, seed=0).covariance_stats()[0])


@pytest.fixture
def spy(monkeypatch) -> type[Spy]:
    """``Spy`` in the registry for this test only, so the registry-wide contract tests never see it."""
    monkeypatch.setitem(optimizers.base._REGISTRY, Spy.name, Spy)
    return Spy


def test_optimizer_sees_only_the_noisy_scores(spy) -> None:
    SPIED.clear()

    def shifted(clean: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
        return clean - 1000.0 * eps

    result = evolve("test-insilico-spy", IdentityGenerator(), Quadratic(), n_generations=3, population=4,
                    noise_eps=0.5, seed=1, noise=shifted)
    assert len(SPIED) == 3 and all(np.all(s < -400) for s in SPIED)
    assert np.allclose(result.noisy_max, result.clean_max - 500.0)
    assert result.best_noisy == pytest.approx(result.best_clean - 500.0)


def test_gain_noise_is_reproducible_and_changes_the_search() -> None:
    pytest.importorskip("rig_client.noise")
    a = run("cma-sigma1", n_generations=6, population=6, seed=7, noise_eps=0.5)
    b = run("cma-sigma1", n_generations=6, population=6, seed=7, noise_eps=0.5)
    clean = run("cma-sigma1", n_generations=6, population=6, seed=7)
    assert np.array_equal(a.cum_clean_max, b.cum_clean_max) and np.array_equal(a.final_codes, b.final_codes)
    assert not np.array_equal(a.final_codes, clean.final_codes)
    assert np.array_equal(clean.noisy_max, clean.clean_max)


def test_benchmark_optimizers_keep_the_published_proportions() -> None:
    assert optimizers.create("ga", 100).hyperparameters["n_conserve"] == 10  # 10 elites of 40
    sphere = optimizers.create("sphere-cma-r10", 100, population=8).hyperparameters
    assert (sphere["n_parents"], sphere["radius"]) == (4, 10.0)
    assert optimizers.create("pycma-diag", 100).hyperparameters["diagonal"] is True
    with pytest.raises(optimizers.OptimizerError, match="unknown optimizer"):
        run("nelder-mead")


def test_rejects_bad_arguments() -> None:
    with pytest.raises(InsilicoError, match="noise_eps"):
        run("ga", n_generations=2, noise_eps=-0.1)
    with pytest.raises(InsilicoError, match="n_generations"):
        run("ga", n_generations=0)
    with pytest.raises(InsilicoError, match="one score per image"):
        evolve("ga", IdentityGenerator(), lambda images: np.zeros((len(images), 2)), n_generations=1,
               population=12)
    with pytest.raises(optimizers.OptimizerError):
        evolve("ga", IdentityGenerator(), Quadratic(), n_generations=1, population=12,
               optimizer_params={"sigma0": 1.0})
