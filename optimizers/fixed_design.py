"""``fixed-design``: a fixed set of codes, shown once, for experiments that measure rather than search.

A Manifold tuning map (geometry_topology.md §B1) is such a design: its grid codes are computed once
from an evolution's trajectory and presented as one generation. Running the design through the
ask/tell interface gives it the same persistence, references, timeouts and resume as a search.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Optimizer, OptimizerError, check_int, register


@register
class FixedDesign(Optimizer):
    """``fixed-design``: every ``ask`` returns the given codes; ``tell`` only records the scores.

    Hyperparameters:
      codes: (n, dim) array of finite codes (required).
    The state records the codes by SHA-256: load it into a fixed-design created with the same codes.
    """

    name = "fixed-design"
    fingerprinted_hyperparameters = ("codes",)

    def __init__(self, dim: int, *, seed: int | None = None, codes: Any = None):
        dim = check_int("dim", dim, 1)
        super().__init__(dim, seed=seed, hyperparameters={"codes": _check_codes(codes, dim)})

    def _propose(self) -> np.ndarray:
        return self.hyperparameters["codes"].copy()

    def _update(self, codes: np.ndarray, scores: np.ndarray) -> None:
        """A design learns nothing; the base class has counted the scores and kept the best."""

    def _strategy_state(self) -> dict[str, Any]:
        return {}

    def _load_strategy_state(self, state: dict[str, Any]) -> None:
        pass


def _check_codes(codes: Any, dim: int) -> np.ndarray:
    if codes is None:
        raise OptimizerError(f"fixed-design needs codes, an (n, {dim}) array of the codes to present")
    try:
        codes = np.array(codes, dtype=np.float64)
    except (TypeError, ValueError):
        raise OptimizerError(f"codes must be an (n, {dim}) array of numbers") from None
    if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] != dim:
        raise OptimizerError(f"codes must have shape (n, {dim}) with n >= 1, got {codes.shape}")
    if not np.all(np.isfinite(codes)):
        raise OptimizerError("codes must be finite")
    return codes
