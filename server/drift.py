"""Reference-drift alarm: pure checks of one generation's reference responses against the early ones.

Recordings drift and electrodes lose units during a long evolution. The references are the same images
every generation, so each should keep firing at its own early level. Rates are spikes/s counted in the
response window: a rate counted over T seconds (presentations x channels x window) has Poisson variance
rate / T.

References low. Image i's early level e_i is its rate over its presentations in the first
``baseline_generations`` generations (counted over T0_i seconds), x_i its rate this generation (over T_i).
Over the n images answered in both, with means m_0 of e_i and m of x_i, and a = sum(x) / sum(e) the gain
(the one factor a drifting electrode or an adapting unit applies to every image):

    drop = (m_0 - m) / SEM,   SEM = max( sd(x_i - a e_i) / sqrt(n),  sqrt(sum(x_i / T_i + e_i / T0_i)) / n )

Each image is paired with its own early level, so the unit's tuning over the images (the spread of e_i,
which a gain only scales) counts as no noise. The first term is what one gain leaves unexplained
(measurement noise, and any change that is not a gain); the second is the counting noise alone, so that a
generation of a few spikes (or none) is never taken for a precise one. The references are *low* when
drop > ``drop_sem``; the alarm fires when that has held for ``consecutive`` generations. Counting noise
alone, with 10 references shown once in a 150 ms window (baseline 5 generations): references that fired
27 spikes/s early and half that now are 3.8 SEM below, at 40 % 4.9 SEM; at 3 spikes/s early only a total
loss (4.7 SEM) shows.

Channel silent. A channel is *low* in a generation when its rate to the references is below
``silent_fraction`` of its early rate r_0. A run of low generations pools its spikes k over its counting
time t; the channel is *silent* once a channel still firing r_0 would count k spikes or fewer with
probability P(K <= k), K ~ Poisson(r_0 t), below ``SILENT_P``, that is after about ln(1 / SILENT_P) = 9.2
expected spikes. A healthy unit at 1.3 spikes/s shown 10 references x 0.15 s expects 2 spikes a
generation: one generation with none (P = e^-2 = 14 %; a one-generation rule warns in 89 % of 20-generation
threads) is no evidence, five in a row are (e^-10 = 4.5e-5). Such a unit warns in about 0.2 % of
20-generation threads (its early rate is itself measured), and the same unit gone silent is reported after
about five silent generations; a channel that fired 6.2 spikes/s or more is reported in its first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from server.objectives import rate_matrix

SILENT_P = 1e-4  # a low run whose spike count a channel still at its early rate would give this rarely is silence


@dataclass(frozen=True)
class Level:
    """One generation's reference responses: each reference image's rate (spikes/s on the objective's channels)
    and counting time (s), by stimulus id; each channel's mean rate over every presentation (None: not counted)."""

    images: dict[str, tuple[float, float]]
    channel_rates: tuple[float | None, ...]


@dataclass(frozen=True)
class Drop:
    """This generation's reference images against their own early levels (see the module docstring)."""

    images: int  # the n images answered both now and early
    early_mean: float  # m_0
    mean: float  # m
    sem: float
    drop: float  # (m_0 - m) / sem


def mean_sem(values) -> tuple[float | None, float | None]:
    """Mean and standard error (ddof 1) of the finite values; SEM 0 for one value, both None for none."""
    finite = np.asarray([v for v in values if v is not None], dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None, None
    sem = float(finite.std(ddof=1) / math.sqrt(finite.size)) if finite.size > 1 else 0.0
    return float(finite.mean()), sem


def baseline(early: list[Level]) -> Level:
    """The early level from the first generations' levels: each image's rate over all its early presentations
    (weighted by counting time), each channel's mean of its early rates."""
    pooled: dict[str, tuple[float, float]] = {}
    for level in early:
        for stimulus, (rate, seconds) in level.images.items():
            spikes, time = pooled.get(stimulus, (0.0, 0.0))
            pooled[stimulus] = (spikes + rate * seconds, time + seconds)
    images = {stimulus: (spikes / time, time) for stimulus, (spikes, time) in pooled.items() if time > 0}
    with warnings.catch_warnings():  # a channel silent in every early generation stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        rates = np.nanmean(rate_matrix([level.channel_rates for level in early]), axis=0)
    return Level(images, tuple(float(r) for r in rates))


def reference_drop(base: Level, current: Level) -> Drop | None:
    """How far the current reference images fire below their own early levels; None when no image was answered
    both early and now. ``drop`` is inf when both SEM terms are 0 and the references fell."""
    shared = [stimulus for stimulus in current.images if stimulus in base.images]
    if not shared:
        return None
    x, seconds = np.array([current.images[s] for s in shared], dtype=float).T
    e, early_seconds = np.array([base.images[s] for s in shared], dtype=float).T
    n = len(shared)
    gain = x.sum() / e.sum() if e.sum() > 0 else 1.0
    fit = float((x - gain * e).std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    counting = math.sqrt(float(np.sum(np.clip(x, 0, None) / seconds + np.clip(e, 0, None) / early_seconds))) / n
    sem = max(fit, counting)
    gap = float(e.mean() - x.mean())
    drop = gap / sem if sem > 0 else (math.inf if gap > 0 else 0.0)
    return Drop(n, float(e.mean()), float(x.mean()), sem, drop)


def poisson_cdf(k: float, mean: float) -> float:
    """P(K <= k), K Poisson with this mean and k rounded to whole spikes (exact; quick for k below the mean)."""
    k = round(k)
    if k < 0:
        return 0.0
    if mean <= 0:
        return 1.0
    term = math.exp(k * math.log(mean) - mean - math.lgamma(k + 1))
    total = 0.0
    for j in range(k, -1, -1):
        total += term
        term *= j / mean
        if term <= total * 1e-17:
            break
    return total


def silent_channels(early_rates, rates, seconds, silent_fraction: float,
                    runs: dict[int, tuple[float, float]]) -> tuple[dict[int, tuple[float, float]], list[int]]:
    """The low runs after this generation and the channels silent now (see the module docstring).

    ``early_rates``, ``rates`` and ``seconds``: each channel's early rate, its rate this generation (None: not
    counted, its run goes on unchanged) and counting time; ``runs``: each low channel's spikes and counting time
    since its run began, as the previous generation left them."""
    now: dict[int, tuple[float, float]] = {}
    silent = []
    for channel, (early, rate, time) in enumerate(zip(early_rates, rates, seconds)):
        if not early > 0:  # never fired early on (or never counted: NaN)
            continue
        if rate is None:
            if channel in runs:
                now[channel] = runs[channel]
            continue
        if rate >= silent_fraction * early:
            continue
        spikes, counted = runs.get(channel, (0.0, 0.0))
        now[channel] = spikes, counted = spikes + rate * time, counted + time
        if poisson_cdf(spikes, early * counted) < SILENT_P:
            silent.append(channel)
    return now, silent
