"""Genetic algorithm of the Ponce lab ("GA-classic"), spec/optimizers.md §1.3, with XDream's options.

One generation: kT = max(kT_multiplier·std(scores), 1e-8); sort scores descending (optionally
clip them at a percentile, XDream); fitness exp((s − s_max)/kT); keep the ``n_conserve`` best
unchanged (they are presented and scored again); make the rest as children of two parents drawn
by roulette on fitness with replacement from all scored codes, each gene from parent 1 with
probability ``parental_skew``; mutate each child gene with probability ``mutation_rate`` by
N(0, mutation_size²). Unscored (NaN) codes are carried into the next generation unchanged, so
they are presented again; they take the places of children.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Optimizer, OptimizerError, check_float, check_int, register


@register
class GeneticAlgorithm(Optimizer):
    """``ga``: Ponce-lab GA (defaults: 40 / 10 elites / rate 0.25 / size 0.75 / kT 2σ / skew 0.75).

    Hyperparameters:
      population (40), n_conserve (elites; default population // 4: 10 at 40), mutation_rate (0.25), mutation_size (0.75),
      parental_skew (0.75);
      kT_multiplier (default 2) or, as in XDream, selectivity with kT = std/selectivity (give one);
      score_clip_percentile: None (default, as published) or a percentile in (0, 100] at which
        the scores are clipped before fitness (XDream uses 95).
    The initial population is N(0, I), as published.
    """

    name = "ga"

    def __init__(
        self,
        dim: int,
        *,
        seed: int | None = None,
        population: int = 40,
        n_conserve: int | None = None,
        mutation_rate: float = 0.25,
        mutation_size: float = 0.75,
        parental_skew: float = 0.75,
        kT_multiplier: float | None = None,
        selectivity: float | None = None,
        score_clip_percentile: float | None = None,
    ):
        population = check_int("population", population, 2)
        if kT_multiplier is not None and selectivity is not None:
            raise OptimizerError("give kT_multiplier or selectivity (kT = std/selectivity), not both")
        if kT_multiplier is not None:
            kT_multiplier = check_float("kT_multiplier", kT_multiplier, 0.0, low_open=True)
        if selectivity is not None:
            selectivity = check_float("selectivity", selectivity, 0.0, low_open=True)
        if score_clip_percentile is not None:
            score_clip_percentile = check_float(
                "score_clip_percentile", score_clip_percentile, 0.0, 100.0, low_open=True
            )
        hyperparameters = {
            "population": population,
            "n_conserve": check_int("n_conserve", population // 4 if n_conserve is None else n_conserve, 0,
                                    population - 1),
            "mutation_rate": check_float("mutation_rate", mutation_rate, 0.0, 1.0),
            "mutation_size": check_float("mutation_size", mutation_size, 0.0),
            "parental_skew": check_float("parental_skew", parental_skew, 0.0, 1.0),
            "kT_multiplier": kT_multiplier,
            "selectivity": selectivity,
            "score_clip_percentile": score_clip_percentile,
        }
        super().__init__(dim, seed=seed, hyperparameters=hyperparameters)
        if selectivity is not None:
            self.kT_multiplier = 1.0 / selectivity
        else:
            self.kT_multiplier = 2.0 if kT_multiplier is None else kT_multiplier
        self.population: np.ndarray | None = None
        self.kT: float | None = None

    def _propose(self) -> np.ndarray:
        if self.population is None:
            self.population = self._rng.standard_normal((self.hyperparameters["population"], self.dim))
        return self.population

    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        hp = self.hyperparameters
        scored = ~np.isnan(scores)
        if not scored.any():
            return
        order = np.argsort(-scores[scored], kind="stable")
        parents = codes[scored][order]
        sorted_scores = scores[scored][order]
        self.kT = max(self.kT_multiplier * float(np.std(sorted_scores)), 1e-8)
        if hp["score_clip_percentile"] is not None:
            sorted_scores = np.minimum(sorted_scores, np.percentile(sorted_scores, hp["score_clip_percentile"]))
        fitness = np.exp((sorted_scores - sorted_scores[0]) / self.kT)

        unscored = codes[~scored]
        elites = parents[: hp["n_conserve"]]
        n_children = hp["population"] - len(elites) - len(unscored)
        children = self._mutate(self._mate(parents, fitness, n_children))
        self.population = np.vstack([elites, children, unscored])

    def _mate(self, parents: np.ndarray, fitness: np.ndarray, n_children: int) -> np.ndarray:
        """Uniform crossover of roulette-selected parent pairs (with replacement)."""
        probabilities = fitness / fitness.sum()
        first = self._rng.choice(len(parents), size=n_children, p=probabilities)
        second = self._rng.choice(len(parents), size=n_children, p=probabilities)
        from_first = self._rng.random((n_children, self.dim)) < self.hyperparameters["parental_skew"]
        return np.where(from_first, parents[first], parents[second])

    def _mutate(self, children: np.ndarray) -> np.ndarray:
        mutated = self._rng.random(children.shape) < self.hyperparameters["mutation_rate"]
        children = children.copy()
        children[mutated] += self._rng.normal(0.0, self.hyperparameters["mutation_size"], int(mutated.sum()))
        return children

    def _strategy_state(self) -> dict[str, Any]:
        return {"population": None if self.population is None else self.population.copy(), "kT": self.kT}

    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        self.population = None if state["population"] is None else np.array(state["population"], dtype=np.float64)
        self.kT = None if state["kT"] is None else float(state["kT"])
