"""What the engine records when a generation completes: the curve point event and the drift alarm.

``generation.completed`` is the engine's one hook (called inside the transaction that completes the
generation). It logs a ``generation.completed`` event whose data holds the point of the score curve
(mean ± SEM, max, reference mean ± SEM) and the drift state: the reference images' rates (each image's
over the objective's channels with its counting time, and each channel's), the drop, and the channels' low
runs, and logs a ``drift.reference`` or ``channel.silent`` warning when `server.drift` says so. Both reach live
dashboards through ``log_event``. The alarm's memory of the thread (``DriftHistory``) lives in the
thread's runtime, so completing a generation reads nothing; a rebuilt runtime loads it from the events.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from server import drift
from server.objectives import channel_ranges, rate_matrix
from server.session_config import DriftConfig
from server.store.db import Transaction
from server.store.models import Event, EventLevel, Thread
from server.store.records import log_event

log = logging.getLogger(__name__)

GENERATION_COMPLETED = "generation.completed"
CHANNEL_SILENT = "channel.silent"


def _level(data: dict) -> drift.Level:
    """A stored generation's reference level. An event from before the per-image levels were stored pairs no
    image (its thread gets no reference check; the silent check reads its channel rates)."""
    images = {stimulus: tuple(level) for stimulus, level in data.get("reference_levels", {}).items()}
    return drift.Level(images, tuple(data.get("channel_rates", [])))


def reference_levels(rates: dict[str, list[list[float]]], channels, window_s: float
                     ) -> tuple[dict[str, tuple[float, float]], list[float | None], list[float]]:
    """From the reference images' presentations (``rates``): each image's mean rate over ``channels`` (the
    objective's) and its counting time (``window_s`` for each rate counted), by stimulus id; each channel's mean
    over every presentation (None where none counted it) and counting time.

    The drift alarm reads rates, not scores: a ``zscore`` objective's scores are relative to their
    generation, and the evolved images may drive a channel down on purpose; the references stay the same.
    One matrix of every presentation, summed per image: this runs in each generation's step."""
    columns, rows = sorted(channels), [row for shown in rates.values() for row in shown]
    widest = max((len(row) for row in rows), default=0)
    every = rate_matrix(rows, max(widest, columns[-1] + 1))  # NaN where a row has no such channel
    owner = np.repeat(np.arange(len(rates)), [len(shown) for shown in rates.values()])
    chosen = every[:, columns]
    counted = np.isfinite(chosen)
    sums, counts = np.zeros((len(rates), len(columns))), np.zeros((len(rates), len(columns)))
    np.add.at(sums, owner, np.where(counted, chosen, 0.0))
    np.add.at(counts, owner, counted)
    answered = counts > 0  # the image's channels counted at least once: each channel's mean, then their mean
    channel_means = np.divide(sums, counts, out=np.zeros_like(sums), where=answered)
    with np.errstate(invalid="ignore"):  # an image none of whose channels counted is left out below
        image_rates = channel_means.sum(axis=1) / answered.sum(axis=1)
    per_image = {stimulus: (float(image_rates[i]), window_s * int(counts[i].sum()))
                 for i, stimulus in enumerate(rates) if counts[i].any()}
    finite = np.isfinite(every[:, :widest])
    channel_counts = finite.sum(axis=0)
    channel_sums = np.where(finite, every[:, :widest], 0.0).sum(axis=0)
    return (per_image, [float(total / n) if n else None for total, n in zip(channel_sums, channel_counts)],
            [window_s * int(n) for n in channel_counts])


@dataclass
class DriftHistory:
    """What the drift alarm needs of a thread's past, kept in its runtime: the early levels, the last point
    and the channels already reported silent (and the thread's name, which its messages start with)."""

    name: str  # "thread 3 'ch5-cma'"
    config: DriftConfig
    window_s: float  # the session's response window, which a rate's spikes were counted in
    early: list[drift.Level]  # the first ``config.baseline_generations`` generations' levels
    previous: dict  # the last ``generation.completed`` data ({} before the first)
    reported_silent: set[int]  # each channel's ``channel.silent`` warning is logged once
    _baseline: drift.Level | None = field(default=None, init=False, repr=False)  # once ``early`` is complete

    def baseline(self) -> drift.Level | None:
        """The early level the alarm compares each generation with; None until the early generations are in."""
        if self._baseline is None and len(self.early) == self.config.baseline_generations:
            self._baseline = drift.baseline(self.early)
        return self._baseline

    @classmethod
    def load(cls, db: DBSession, thread_id: int, config: DriftConfig) -> DriftHistory:
        """From the thread's ``generation.completed`` events (a runtime rebuilt after a restart)."""
        history = select(Event.data_json).where(Event.thread_id == thread_id, Event.kind == GENERATION_COMPLETED)
        early = [_level(d) for d in db.scalars(history.order_by(Event.id).limit(config.baseline_generations))]
        silent = db.scalars(select(Event.data_json).where(Event.thread_id == thread_id, Event.kind == CHANNEL_SILENT))
        thread = db.get(Thread, thread_id)
        start, end = thread.session.config_json["response_window_ms"]
        return cls(f"thread {thread_id} {thread.name!r}", config, (end - start) / 1000, early,
                   db.scalars(history.order_by(Event.id.desc()).limit(1)).first() or {},
                   {channel for data in silent for channel in data["channels"]})


def generation_completed(db: Transaction, history: DriftHistory, session_id: int, thread_id: int, number: int, scores,
                         reference_scores, reference_rates: dict[str, list[list[float]]], channels) -> dict:
    """Log the curve point of generation ``number`` and any drift warning (not committed), and add it to
    ``history``; returns the data. ``reference_rates``: each reference image's presentations' rates;
    ``channels``: those the objective reads."""
    mean, sem = drift.mean_sem(scores)
    reference_mean, reference_sem = drift.mean_sem(reference_scores)
    per_image, channel_rates, channel_seconds = reference_levels(reference_rates, channels, history.window_s)
    reference_rate_mean, reference_rate_sem = drift.mean_sem([rate for rate, _ in per_image.values()])
    finite = [s for s in scores if s is not None and math.isfinite(s)]
    data = {
        "generation": number, "mean": mean, "sem": sem, "max": max(finite) if finite else None,
        "n_scored": len(finite), "reference_mean": reference_mean, "reference_sem": reference_sem,
        "reference_rate_mean": reference_rate_mean, "reference_rate_sem": reference_rate_sem,
        "reference_levels": {stimulus: list(level) for stimulus, level in per_image.items()},
        "channel_rates": channel_rates, "drop_sem": None, "low_streak": 0, "silent_channels": [], "low_channels": [],
    }
    config, early, previous = history.config, history.early, history.previous
    current = drift.Level(per_image, tuple(channel_rates))
    if (base := history.baseline()) is not None:
        low = drift.reference_drop(base, current)
        if low is not None:
            data["drop_sem"] = low.drop
            data["low_streak"] = streak = previous.get("low_streak", 0) + 1 if low.drop > config.drop_sem else 0
            if streak == config.consecutive:
                log_event(db, "drift.reference",
                          f"{history.name}: generation {number}: reference images fire {low.mean:.3g} spikes/s "
                          f"against their early {low.early_mean:.3g}, {low.drop:.1f} SEM below (SEM {low.sem:.2g}, "
                          f"each of {low.images} images paired with its early rate) for {streak} generations; "
                          f"check the recording (electrode drift, lost unit)",
                          level=EventLevel.WARNING, thread_id=thread_id, session_id=session_id,
                          data={"generation": number, "drop_sem": low.drop, "early_mean": low.early_mean,
                                "mean": low.mean, "sem": low.sem, "images": low.images})
        runs = {channel: (spikes, seconds) for channel, spikes, seconds in previous.get("low_channels", [])}
        runs, silent = drift.silent_channels(base.channel_rates, channel_rates, channel_seconds,
                                             config.silent_fraction, runs)
        data["low_channels"] = [[channel, *run] for channel, run in sorted(runs.items())]
        data["silent_channels"] = silent
        newly = sorted(set(silent) - history.reported_silent)
        if newly:
            history.reported_silent.update(newly)
            log_event(db, CHANNEL_SILENT,
                      f"{history.name}: generation {number}: channel(s) {channel_ranges(newly)} fire below "
                      f"{config.silent_fraction:g} of their early rate to the reference images, too few spikes for "
                      f"a channel still at that rate (P < {drift.SILENT_P:g}); check the electrode",
                      level=EventLevel.WARNING, thread_id=thread_id, session_id=session_id,
                      data={"generation": number, "channels": newly})
    log_event(db, GENERATION_COMPLETED,
              f"{history.name}: generation {number}: mean {_fmt(mean)} ± {_fmt(sem)}, max {_fmt(data['max'])}, "
              f"references {_fmt(reference_mean)} ± {_fmt(reference_sem)}",
              thread_id=thread_id, session_id=session_id, data=data)
    if len(early) < config.baseline_generations:
        early.append(current)
    history.previous = data
    return data


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
