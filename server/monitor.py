"""What the engine records when a generation completes: the curve point event and the drift alarm.

``generation.completed`` is the engine's one hook (called inside the transaction that completes the
generation). It logs a ``generation.completed`` event whose data holds the point of the score curve
(mean ± SEM, max, reference mean ± SEM, per-channel mean rates) and the drift state, and logs a
``drift.reference`` or ``channel.silent`` warning when `server.drift` says so. Both reach live
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
from server.objectives import rate_matrix
from server.session_config import DriftConfig
from server.store.db import Transaction
from server.store.models import Event, EventLevel
from server.store.records import log_event

log = logging.getLogger(__name__)

GENERATION_COMPLETED = "generation.completed"


def _level(data: dict) -> drift.Level | None:
    if data.get("reference_mean") is None:
        return None
    return drift.Level(data["reference_mean"], data["reference_sem"], tuple(data["channel_rates"]))


def _channel_rates(rates: dict[str, list[list[float]]]) -> list[float]:
    rows = [row for presentations in rates.values() for row in presentations]
    if not rows:
        return []
    with warnings.catch_warnings():  # a channel no presentation counted is None, without numpy's warning
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(rate_matrix(rows), axis=0)
    return [None if not np.isfinite(r) else float(r) for r in means]


@dataclass
class DriftHistory:
    """What the drift alarm needs of a thread's past, kept in its runtime: the early levels and the last point."""

    config: DriftConfig
    early: list[drift.Level | None]  # the first ``config.baseline_generations`` generations' levels
    previous: dict  # the last ``generation.completed`` data ({} before the first)

    @classmethod
    def load(cls, db: DBSession, thread_id: int, config: DriftConfig) -> DriftHistory:
        """From the thread's ``generation.completed`` events (a runtime rebuilt after a restart)."""
        history = select(Event.data_json).where(Event.thread_id == thread_id, Event.kind == GENERATION_COMPLETED)
        early = [_level(d) for d in db.scalars(history.order_by(Event.id).limit(config.baseline_generations))]
        return cls(config, early, db.scalars(history.order_by(Event.id.desc()).limit(1)).first() or {})


def generation_completed(db: Transaction, history: DriftHistory, session_id: int, thread_id: int, number: int, scores,
                         reference_scores, rates: dict[str, list[list[float]]]) -> dict:
    """Log the curve point of generation ``number`` and any drift warning (not committed), and add it to
    ``history``; returns the data."""
    mean, sem = drift.mean_sem(scores)
    reference_mean, reference_sem = drift.mean_sem(reference_scores)
    finite = [s for s in scores if s is not None and np.isfinite(s)]
    data = {
        "generation": number, "mean": mean, "sem": sem, "max": max(finite) if finite else None,
        "n_scored": len(finite), "reference_mean": reference_mean, "reference_sem": reference_sem,
        "channel_rates": _channel_rates(rates), "drop_sem": None, "low_streak": 0, "silent_channels": [],
    }
    config, early, previous = history.config, history.early, history.previous
    current = _level(data)
    if current is not None and len(early) == config.baseline_generations and None not in early:
        base = drift.baseline(early)
        data["drop_sem"] = drop = drift.drop_in_sem(base, current)
        data["low_streak"] = streak = previous.get("low_streak", 0) + 1 if drop > config.drop_sem else 0
        if streak == config.consecutive:
            log_event(db, "drift.reference",
                      f"generation {number}: reference responses {current.mean:.3g} ± {current.sem:.2g} are "
                      f"{drop:.1f} SEM below the early level {base.mean:.3g} ± {base.sem:.2g} for {streak} "
                      "generations; check the recording (electrode drift, lost unit)",
                      level=EventLevel.WARNING, thread_id=thread_id, session_id=session_id,
                      data={"generation": number, "drop_sem": drop, "early_mean": base.mean})
        data["silent_channels"] = silent = drift.silent_channels(base, current, config.silent_fraction)
        newly = sorted(set(silent) - set(previous.get("silent_channels", [])))
        if newly:
            log_event(db, "channel.silent",
                      f"generation {number}: channel(s) {', '.join(map(str, newly))} fire below "
                      f"{config.silent_fraction:g} of their early rate; check the electrode",
                      level=EventLevel.WARNING, thread_id=thread_id, session_id=session_id,
                      data={"generation": number, "channels": newly})
    log_event(db, GENERATION_COMPLETED,
              f"generation {number}: mean {_fmt(mean)} ± {_fmt(sem)}, max {_fmt(data['max'])}, "
              f"references {_fmt(reference_mean)} ± {_fmt(reference_sem)}",
              thread_id=thread_id, session_id=session_id, data=data)
    if len(early) < config.baseline_generations:
        early.append(current)
    history.previous = data
    return data


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
