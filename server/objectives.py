"""Objectives: how a presentation's per-channel rates become the one score an optimizer sees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rig_client.protocol import ProtocolError

COMBINE = {"mean": np.mean, "sum": np.sum}


@dataclass(frozen=True)
class Objective:
    """Score = combine(rates[channels]) per presentation; the channels are the rig's channel indices."""

    channels: tuple[int, ...]
    combine: str = "mean"

    @classmethod
    def from_config(cls, config: dict) -> Objective:
        return cls(tuple(int(c) for c in config["channels"]), config.get("combine", "mean"))

    def check_rates(self, rates: list) -> None:
        """Raise ``ProtocolError`` if a presentation's rates do not cover the channels scored."""
        if len(rates) <= max(self.channels):
            raise ProtocolError(
                "bad_field",
                f"rates has {len(rates)} channel(s) but this thread scores channel {max(self.channels)}",
            )

    def __call__(self, rates: np.ndarray) -> np.ndarray:
        """Scores for rates of shape (n_presentations, n_channels); NaN where a channel is missing."""
        rates = np.asarray(rates, dtype=float).reshape(len(rates), -1)
        return COMBINE[self.combine](rates[:, list(self.channels)], axis=1)
