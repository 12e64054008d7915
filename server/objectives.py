"""Objectives: how a presentation's per-channel rates become the one score an optimizer sees."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rig_client.protocol import ErrorCode
from server import RigInputError
from server.session_config import ObjectiveConfig

COMBINE = {"mean": np.mean, "sum": np.sum}


@dataclass(frozen=True)
class Objective:
    """Score = combine(rates[channels]) per presentation; the channels are the rig's channel indices."""

    channels: tuple[int, ...]
    combine: str

    @classmethod
    def from_config(cls, config: ObjectiveConfig | dict) -> Objective:
        """From a thread's objective settings (a stored ``objective_json`` is validated again)."""
        config = ObjectiveConfig.model_validate(config)
        return cls(tuple(config.channels), config.combine)

    def check_rates(self, rates: list) -> None:
        """Raise ``RigInputError`` if a presentation's rates do not cover the channels scored."""
        if len(rates) <= max(self.channels):
            raise RigInputError(
                ErrorCode.BAD_FIELD,
                f"rates has {len(rates)} channel(s) but this thread scores channel {max(self.channels)}",
            )

    def __call__(self, rates: np.ndarray) -> np.ndarray:
        """Scores for rates of shape (n_presentations, n_channels); NaN where a channel is missing."""
        rates = np.asarray(rates, dtype=float).reshape(len(rates), -1)
        return COMBINE[self.combine](rates[:, list(self.channels)], axis=1)

    def score(self, rates: Sequence[float | None]) -> float:
        """One presentation's score from its stored rates (None, JSON's NaN, counts as missing)."""
        return float(self([[np.nan if r is None else r for r in rates]])[0])

    def mean_score(self, presentations: Sequence[Sequence[float | None]] | None) -> float:
        """A stimulus's score: the mean over its presentations that scored; NaN if none did."""
        scores = np.array([self.score(rates) for rates in presentations or ()])
        finite = scores[np.isfinite(scores)]
        return float(finite.mean()) if finite.size else float("nan")
