"""Reference-drift alarm: pure checks of one generation's reference responses against the early ones.

Recordings drift and electrodes lose units during a long evolution. The references are the same
images every generation, so their responses should stay level. For generation g with reference
mean m_g and SEM s_g (over the reference images), and the early level m_0 (mean of the reference
means of the first ``baseline_generations``) with SEM s_0 (their spread over sqrt(count)):

    drop_g = (m_0 - m_g) / sqrt(s_0^2 + s_g^2)        (in SEM units)

The references are *low* when drop_g > ``drop_sem``; the alarm fires when that has held for
``consecutive`` generations. A channel is *silent* when its mean rate this generation (over every
presentation) is below ``silent_fraction`` of its early mean rate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from server.objectives import rate_matrix


@dataclass(frozen=True)
class Level:
    """One generation's reference level: mean and SEM over the reference images, per-channel mean rates."""

    mean: float
    sem: float
    channel_rates: tuple[float, ...]


def mean_sem(values) -> tuple[float | None, float | None]:
    """Mean and standard error (ddof 1) of the finite values; SEM 0 for one value, both None for none."""
    finite = np.asarray([v for v in values if v is not None], dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None, None
    sem = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else 0.0
    return float(finite.mean()), sem


def baseline(early: list[Level]) -> Level:
    """The early level from the first generations' levels."""
    mean, sem = mean_sem([level.mean for level in early])
    with warnings.catch_warnings():  # a channel silent in every early generation stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        rates = np.nanmean(rate_matrix([level.channel_rates for level in early]), axis=0)
    return Level(mean, sem, tuple(float(r) for r in rates))


def drop_in_sem(base: Level, current: Level) -> float:
    """How many SEM the current reference mean is below the baseline (negative: above); inf if both SEM are 0."""
    gap = base.mean - current.mean
    scale = math.hypot(base.sem, current.sem)
    if scale == 0:
        return math.inf if gap > 0 else 0.0
    return gap / scale


def silent_channels(base: Level, current: Level, silent_fraction: float) -> list[int]:
    """Channels that fired early on and now fire below ``silent_fraction`` of that rate."""
    return [
        channel for channel, (early, now) in enumerate(zip(base.channel_rates, current.channel_rates))
        if early > 0 and now < silent_fraction * early
    ]
