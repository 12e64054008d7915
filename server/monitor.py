"""What the engine records when a generation completes: the curve point event and the drift alarm.

``generation.completed`` is the engine's one hook (called inside the transaction that completes the
generation). It logs a ``generation.completed`` event whose data holds the point of the score curve
(mean ± SEM, max, reference mean ± SEM) and the drift state: the reference images' rates (their mean
over the objective's channels, and each channel's), and logs a ``drift.reference`` or ``channel.silent``
warning when `server.drift` says so. Both reach live
dashboards through ``log_event``. The alarm's memory of the thread (``DriftHistory``) lives in the
thread's runtime, so completing a generation reads nothing; a rebuilt runtime loads it from the events.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

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


def _level(data: dict) -> drift.Level | None:
    if data.get("reference_rate_mean") is None:
        return None  # no reference answered (or an event from before the level was measured in rates)
    return drift.Level(data["reference_rate_mean"], data["reference_rate_sem"], tuple(data["channel_rates"]))


def _mean_rows(rows: list[list[float | None]], width: int | None = None) -> np.ndarray:
    with warnings.catch_warnings():  # a channel no presentation counted is NaN, without numpy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(rate_matrix(rows, width), axis=0)


def reference_levels(rates: dict[str, list[list[float]]], channels) -> tuple[list[float], list[float | None]]:
    """From the reference images' presentations (``rates``): each image's mean rate over ``channels`` (the
    objective's), and each channel's mean over every presentation (None where none counted it).

    The drift alarm reads rates, not scores: a ``zscore`` objective's scores are relative to their
    generation, and the evolved images may drive a channel down on purpose; the references stay the same."""
    shown = [rows for rows in rates.values() if rows]
    columns = sorted(channels)
    with warnings.catch_warnings():  # an image none of whose channels counted is NaN, without numpy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        per_image = [float(np.nanmean(_mean_rows(rows, columns[-1] + 1)[columns])) for rows in shown]
    per_channel = _mean_rows([row for rows in shown for row in rows]) if shown else []
    return per_image, [None if not np.isfinite(r) else float(r) for r in per_channel]


@dataclass
class DriftHistory:
    """What the drift alarm needs of a thread's past, kept in its runtime: the early levels, the last point
    and the channels already reported silent (and the thread's name, which its messages start with)."""

    name: str  # "thread 3 'ch5-cma'"
    config: DriftConfig
    early: list[drift.Level | None]  # the first ``config.baseline_generations`` generations' levels
    previous: dict  # the last ``generation.completed`` data ({} before the first)
    reported_silent: set[int]  # each channel's ``channel.silent`` warning is logged once

    @classmethod
    def load(cls, db: DBSession, thread_id: int, config: DriftConfig) -> DriftHistory:
        """From the thread's ``generation.completed`` events (a runtime rebuilt after a restart)."""
        history = select(Event.data_json).where(Event.thread_id == thread_id, Event.kind == GENERATION_COMPLETED)
        early = [_level(d) for d in db.scalars(history.order_by(Event.id).limit(config.baseline_generations))]
        silent = db.scalars(select(Event.data_json).where(Event.thread_id == thread_id, Event.kind == CHANNEL_SILENT))
        name = f"thread {thread_id} {db.get(Thread, thread_id).name!r}"
        return cls(name, config, early, db.scalars(history.order_by(Event.id.desc()).limit(1)).first() or {},
                   {channel for data in silent for channel in data["channels"]})


def generation_completed(db: Transaction, history: DriftHistory, session_id: int, thread_id: int, number: int, scores,
                         reference_scores, reference_rates: dict[str, list[list[float]]], channels) -> dict:
    """Log the curve point of generation ``number`` and any drift warning (not committed), and add it to
    ``history``; returns the data. ``reference_rates``: each reference image's presentations' rates;
    ``channels``: those the objective reads."""
    mean, sem = drift.mean_sem(scores)
    reference_mean, reference_sem = drift.mean_sem(reference_scores)
    per_image, channel_rates = reference_levels(reference_rates, channels)
    reference_rate_mean, reference_rate_sem = drift.mean_sem(per_image)
    finite = [s for s in scores if s is not None and np.isfinite(s)]
    data = {
        "generation": number, "mean": mean, "sem": sem, "max": max(finite) if finite else None,
        "n_scored": len(finite), "reference_mean": reference_mean, "reference_sem": reference_sem,
        "reference_rate_mean": reference_rate_mean, "reference_rate_sem": reference_rate_sem,
        "channel_rates": channel_rates, "drop_sem": None, "low_streak": 0, "silent_channels": [],
    }
    config, early, previous = history.config, history.early, history.previous
    current = _level(data)
    if current is not None and len(early) == config.baseline_generations and None not in early:
        base = drift.baseline(early)
        data["drop_sem"] = drop = drift.drop_in_sem(base, current)
        data["low_streak"] = streak = previous.get("low_streak", 0) + 1 if drop > config.drop_sem else 0
        if streak == config.consecutive:
            log_event(db, "drift.reference",
                      f"{history.name}: generation {number}: reference images fire {current.mean:.3g} ± "
                      f"{current.sem:.2g} spikes/s, {drop:.1f} SEM below their early {base.mean:.3g} ± "
                      f"{base.sem:.2g} for {streak} generations; check the recording (electrode drift, lost unit)",
                      level=EventLevel.WARNING, thread_id=thread_id, session_id=session_id,
                      data={"generation": number, "drop_sem": drop, "early_mean": base.mean})
        data["silent_channels"] = silent = drift.silent_channels(base, current, config.silent_fraction)
        newly = sorted(set(silent) - history.reported_silent)
        if newly:
            history.reported_silent.update(newly)
            log_event(db, CHANNEL_SILENT,
                      f"{history.name}: generation {number}: channel(s) {channel_ranges(newly)} fire below "
                      f"{config.silent_fraction:g} of their early rate to the reference images; check the electrode",
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
