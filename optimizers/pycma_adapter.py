"""``pycma``: the reference CMA-ES of the ``cma`` package (spec §1.2), as an actmax optimizer.

pycma minimises, so scores are negated. Its samples are drawn through this optimizer's numpy
Generator (pycma's ``randn`` option), so pycma never touches numpy's global RNG. pycma's own
state is not serialisable without pickle; the state dict therefore holds the scores told so far
and ``load_state_dict`` replays them from the initial RNG state, which reproduces the run bit for
bit (replay costs one pycma generation per told generation).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .base import MissingDependencyError, Optimizer, OptimizerError, check_code, check_float, check_int, register


def _import_cma():
    try:
        import cma
    except ImportError as exc:
        raise MissingDependencyError(
            "the pycma optimizer needs the 'cma' package: pip install 'actmax[reference]' (or pip install cma)"
        ) from exc
    return cma


@register
class PycmaAdapter(Optimizer):
    """``pycma``: pycma's CMAEvolutionStrategy, full covariance or diagonal (``diagonal=True``).

    Hyperparameters: population (40), sigma0 (2.0, as in the benchmark), init_code (zeros),
    diagonal (False; True is "pycmaDiagonal", option CMA_diagonal).
    NaN scores are replaced by the median of the generation's scored values (pycma's own rule,
    applied here without its warning); a generation with no score is not told to pycma.
    """

    name = "pycma"

    def __init__(
        self,
        dim: int,
        *,
        seed: int | None = None,
        population: int = 40,
        sigma0: float = 2.0,
        init_code: Any = None,
        diagonal: bool = False,
    ):
        if init_code is not None:
            init_code = check_code("init_code", init_code, check_int("dim", dim, 1))
        if not isinstance(diagonal, (bool, np.bool_)):
            raise OptimizerError(f"diagonal must be True or False, got {diagonal!r}")
        hyperparameters = {
            "population": check_int("population", population, 2),
            "sigma0": check_float("sigma0", sigma0, 0.0, low_open=True),
            "init_code": init_code,
            "diagonal": bool(diagonal),
        }
        super().__init__(dim, seed=seed, hyperparameters=hyperparameters)
        self._cma = _import_cma()
        self._initial_rng_state = self._rng.bit_generator.state
        self._scores_told: list[np.ndarray] = []
        self._start()

    def _start(self) -> None:
        hp = self.hyperparameters
        options = {
            "popsize": hp["population"],
            "CMA_diagonal": hp["diagonal"],
            "randn": lambda *shape: self._rng.standard_normal(shape),
            "seed": np.nan,  # pycma seeds numpy's global RNG unless the seed is NaN
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
        }
        x0 = np.zeros(self.dim) if hp["init_code"] is None else hp["init_code"]
        self.es = self._cma.CMAEvolutionStrategy(x0, hp["sigma0"], options)
        self._solutions: list[np.ndarray] = []  # pycma's own arrays: it recognises them in tell()

    def _propose(self) -> np.ndarray:
        self._solutions = self.es.ask()
        return np.array(self._solutions, dtype=np.float64)

    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        self._tell_es(scores)
        self._scores_told.append(scores.copy())

    def _tell_es(self, scores: np.ndarray) -> None:
        scored = ~np.isnan(scores)
        if not scored.any():
            return
        scores = np.where(scored, scores, np.median(scores[scored]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es.tell(self._solutions, list(-scores))

    def _strategy_state(self) -> dict[str, Any]:
        told = np.array(self._scores_told, dtype=np.float64).reshape(
            len(self._scores_told), self.hyperparameters["population"]
        )
        return {"initial_rng": self._initial_rng_state, "scores_told": told}

    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        resumed_rng = self._rng.bit_generator.state
        resumed_asked = self._asked
        self._rng.bit_generator.state = state["initial_rng"]
        self._initial_rng_state = state["initial_rng"]
        self._start()
        self._scores_told = []
        for scores in np.asarray(state["scores_told"], dtype=np.float64):
            self._update(self._propose(), scores)
        if resumed_asked is not None:
            if not np.array_equal(self._propose(), resumed_asked):
                raise OptimizerError("replaying the pycma state did not reproduce its pending codes")
        if self._rng.bit_generator.state != resumed_rng:
            raise OptimizerError("replaying the pycma state did not reproduce its RNG state")
