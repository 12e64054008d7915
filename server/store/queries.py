"""The engine's reads: running threads, a thread's generations, a generation's stimuli and scored presentations.

Every function takes an open ORM session and returns plain values or rows; none commits. The reads
of each RESULTS and step (``batch`` to ``scored_responses``) run on the sqlite3 driver directly
(``server.store.db.driver``).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session as DBSession

from server.session_config import FlaggedTrialsConfig
from server.store.db import Transaction, driver
from server.store.models import (
    LIVE_THREAD_STATUSES,
    Batch,
    Event,
    Generation,
    GenerationStatus,
    Presentation,
    Session,
    SessionStatus,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
    read_json,
    read_time,
)


@dataclass(frozen=True)
class LiveThread:
    """What the engine reconciles for a thread that has not ended, in an active session."""

    id: int
    status: ThreadStatus
    rig: str
    objective: dict


def live_threads(db: DBSession) -> list[LiveThread]:
    """Threads not ended (running, waiting for their rig, blocked or paused) in active sessions."""
    query = (
        select(Thread.id, Thread.status, Session.rig, Thread.objective_json)
        .join(Session, Session.id == Thread.session_id)
        .where(Thread.status.in_([*LIVE_THREAD_STATUSES, ThreadStatus.PAUSED]), Session.status == SessionStatus.ACTIVE)
    )
    return [LiveThread(*row) for row in db.execute(query)]


def thread_named(db: DBSession, session_id: int, name: str) -> Thread:
    return db.scalars(select(Thread).where(Thread.session_id == session_id, Thread.name == name)).one()


def complete_generations(db: DBSession, thread_id: int, after: int = -1) -> list[Generation]:
    """A thread's told generations numbered above ``after``, in order."""
    return list(db.scalars(
        select(Generation).where(Generation.thread_id == thread_id, Generation.status == GenerationStatus.COMPLETE,
                                 Generation.number > after)
        .order_by(Generation.number)
    ))


def pending_generation(db: DBSession, thread_id: int) -> Generation | None:
    """The generation asked but not yet told (at most one per thread)."""
    return db.scalars(
        select(Generation).where(Generation.thread_id == thread_id, Generation.status == GenerationStatus.PENDING)
    ).first()


def generation_objective(db: Transaction, generation_id: int) -> dict:
    """The objective a generation is scored with: the one recorded when it was asked (or retargeted before
    any response), else its thread's."""
    own, thread = driver(db).execute(
        "SELECT g.objective_json, t.objective_json FROM generations g JOIN threads t ON t.id = g.thread_id "
        "WHERE g.id = ?", (generation_id,)).fetchone()
    return read_json(own) or read_json(thread)


class BatchRow(NamedTuple):
    """A batch with what storing its RESULTS needs (``batch``)."""

    id: str
    session_id: int
    thread_id: int
    generation_id: int
    rig: str
    results_first_at: datetime | None
    generation_status: GenerationStatus
    objective: dict  # the one its generation is scored with, as ``generation_objective``


def batch(db: Transaction, batch_id: str) -> BatchRow | None:
    """A batch, its generation's status and objective, in one read; None if unknown."""
    row = driver(db).execute(
        "SELECT b.id, b.session_id, b.thread_id, b.generation_id, b.rig, b.results_first_at, g.status, "
        "g.objective_json, t.objective_json FROM batches b JOIN generations g ON g.id = b.generation_id "
        "JOIN threads t ON t.id = b.thread_id WHERE b.id = ?", (batch_id,)).fetchone()
    if row is None:
        return None
    return BatchRow(*row[:5], read_time(row[5]), GenerationStatus(row[6]), read_json(row[7]) or read_json(row[8]))


def reference_stimuli(db: DBSession, session_id: int) -> list[Stimulus]:
    """The session's reference stimuli, in the order they were archived."""
    return list(db.scalars(
        select(Stimulus).where(Stimulus.session_id == session_id, Stimulus.kind == StimulusKind.REFERENCE)
        .order_by(Stimulus.created_at, Stimulus.id)
    ))


def batch_stimulus_ids(db: Transaction, batch: Batch | BatchRow) -> set[str]:
    """What a rig may answer for ``batch``: its generation's stimuli and the session's references."""
    return {stimulus_id for stimulus_id, in driver(db).execute(
        "SELECT id FROM stimuli WHERE generation_id = ? OR (session_id = ? AND kind = ?)",
        (batch.generation_id, batch.session_id, StimulusKind.REFERENCE.value))}


@dataclass(frozen=True)
class Response:
    """One stored presentation as scoring sees it: rates and the rig's baseline per channel (missing: NaN)."""

    stimulus_id: str
    rates: list[float]
    baseline: list[float] | None  # protocol 1.1 ``baseline_rates``; None when the rig sent none


def scored_responses(db: Transaction, generation_id: int, flagged: FlaggedTrialsConfig) -> dict[str, list[Response]]:
    """The presentations made for a generation's batches that the flagged-trial policy scores, by stimulus.

    A stimulus owes a presentation until it has ``repeats`` of these; they are what its score is made of.
    """
    rows = driver(db).execute(
        "SELECT p.stimulus_id, p.rates_json, p.trial_json FROM presentations p JOIN batches b ON b.id = p.batch_id "
        "WHERE b.generation_id = ? ORDER BY p.id", (generation_id,))
    responses: dict[str, list[Response]] = {}
    for stimulus_id, rates, facts in rows:
        rates, facts = json.loads(rates), read_json(facts)
        if flagged.scores(facts):
            baseline = (facts or {}).get("baseline_rates")
            responses.setdefault(stimulus_id, []).append(
                Response(stimulus_id, _nan_for_none(rates), None if baseline is None else _nan_for_none(baseline)))
    return responses


def presented(db: DBSession, generation_id: int) -> bool:
    """Whether any presentation of a generation has been recorded."""
    return db.scalar(select(Presentation.id).join(Batch, Batch.id == Presentation.batch_id)
                     .where(Batch.generation_id == generation_id).limit(1)) is not None


def _nan_for_none(values: list[float | None]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def _rig_hellos(rig: str, until: datetime | None) -> Select:
    """The data of the rig's ``rig.connected`` events (its recorded HELLOs), newest first; of those logged at or
    before ``until`` when given. Read down the events index (``thread_id`` NULL, kind), as ``last_hello``."""
    query = select(Event.data_json).where(Event.thread_id.is_(None), Event.kind == "rig.connected",
                                          func.json_extract(Event.data_json, "$.rig") == rig)
    return (query if until is None else query.where(Event.time <= until)).order_by(Event.id.desc())


def rig_channel_labels(db: DBSession, rig: str, until: datetime | None = None) -> list[str] | None:
    """The channel labels of the rig's latest HELLO that sent them, of those logged at or before ``until`` when
    given."""
    data = db.scalar(_rig_hellos(rig, until).where(
        func.json_extract(Event.data_json, "$.channel_labels").is_not(None)).limit(1))
    return None if data is None else data["channel_labels"]


def rig_setup(db: DBSession, rig: str, until: datetime | None = None) -> dict | None:
    """The ``setup`` of the rig's latest HELLO (protocol 1.2), of those logged at or before ``until`` when given;
    None when that HELLO sent none. A session's is the one at its last presentation (``last_presentation_time``),
    as ``session_channel_labels`` reads the labels."""
    data = db.scalar(_rig_hellos(rig, until).limit(1))
    return None if data is None else data.get("setup")


def last_presentation_time(db: DBSession, session: Session) -> datetime | None:
    """When the session's last presentation arrived; None before its first."""
    return db.scalar(select(func.max(Presentation.received_at)).join(Batch, Batch.id == Presentation.batch_id)
                     .where(Batch.session_id == session.id))


def session_channel_labels(db: DBSession, session: Session) -> list[str] | None:
    """The channel labels the session's rig had while it served the session: those of its last labelled
    HELLO at or before the session's last presentation (its latest while the session has none yet).
    A later HELLO, perhaps with other labels, belongs to later recordings; a rig that came back with other
    labels during the session served it with several (``session_label_history``)."""
    return rig_channel_labels(db, session.rig, until=last_presentation_time(db, session))


def session_label_history(db: DBSession, session: Session) -> list[tuple[datetime, list[str]]]:
    """Each set of channel labels the session's rig served the session with, oldest first, with the time of the
    HELLO that brought it: its last labelled HELLO at or before the session's first presentation, then each later
    one up to its last presentation whose labels differ from those before. One entry when the labels never
    changed (the last is ``session_channel_labels``'s); none while the session has no presentation."""
    first, last = db.execute(select(func.min(Presentation.received_at), func.max(Presentation.received_at))
                             .join(Batch, Batch.id == Presentation.batch_id)
                             .where(Batch.session_id == session.id)).one()
    history: list[tuple[datetime, list[str]]] = []
    if last is None:
        return history
    hellos = db.execute(select(Event.time, Event.data_json).where(Event.kind == "rig.connected", Event.time <= last)
                        .order_by(Event.id))
    for time, data in hellos:
        labels = (data or {}).get("channel_labels") if (data or {}).get("rig") == session.rig else None
        if not labels:
            continue
        if time <= first:  # the labels in force at the first presentation
            history = [(time, labels)]
        elif not history or labels != history[-1][1]:
            history.append((time, labels))
    return history


def generation_batches(db: DBSession, generation_id: int) -> list[Batch]:
    """A generation's batches in the order they were sent."""
    return list(db.scalars(select(Batch).where(Batch.generation_id == generation_id).order_by(Batch.sent_at)))


def batch_answered(db: DBSession, batch_id: str) -> set[str]:
    """Stimuli with a presentation stored for ``batch_id``."""
    return set(db.scalars(select(Presentation.stimulus_id).where(Presentation.batch_id == batch_id)))


def stored_presentations(db: Transaction, presentation_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Those of ``presentation_ids`` already stored: each one's ``(stimulus_id, batch_id)``."""
    return {pid: (stimulus_id, batch_id) for pid, stimulus_id, batch_id in driver(db).execute(
        "SELECT presentation_id, stimulus_id, batch_id FROM presentations WHERE presentation_id IN "
        "(SELECT value FROM json_each(?))", (json.dumps(presentation_ids),))}


def last_snapshot(db: DBSession, thread_id: int) -> Generation | None:
    """A thread's last told generation that holds a full optimizer state."""
    return db.scalars(
        select(Generation).where(Generation.thread_id == thread_id, Generation.status == GenerationStatus.COMPLETE,
                                 Generation.optimizer_state.is_not(None))
        .order_by(Generation.number.desc()).limit(1)
    ).first()


def rig_latencies(db: DBSession, thread_id: int) -> dict[int, float]:
    """Per generation of a thread: mean seconds from sending a batch to the rig's first results."""
    latencies: dict[int, list[float]] = {}
    rows = db.execute(select(Batch.generation_id, Batch.sent_at, Batch.results_first_at)
                      .where(Batch.thread_id == thread_id, Batch.results_first_at.is_not(None)))
    for generation_id, sent, first in rows:
        latencies.setdefault(generation_id, []).append((first - sent).total_seconds())
    return {g: sum(v) / len(v) for g, v in latencies.items()}


def last_hello(db: Transaction, rig: str) -> dict | None:
    """The data of ``rig``'s latest ``rig.connected`` event (its last recorded HELLO); None for a rig never connected.
    One read from the newest down the events index (``thread_id`` NULL, kind)."""
    row = driver(db).execute(
        "SELECT data_json FROM events WHERE thread_id IS NULL AND kind = 'rig.connected' "
        "AND json_extract(data_json, '$.rig') = ? ORDER BY id DESC LIMIT 1", (rig,)).fetchone()
    return None if row is None else read_json(row[0])


def rig_sessions(db: Transaction, rig: str) -> list[int]:
    """The active sessions on ``rig`` with a thread not ended (running, waiting for its rig, blocked or paused)."""
    statuses = json.dumps(sorted(status.value for status in (*LIVE_THREAD_STATUSES, ThreadStatus.PAUSED)))
    return [session_id for session_id, in driver(db).execute(
        "SELECT DISTINCT t.session_id FROM threads t JOIN sessions s ON s.id = t.session_id WHERE s.rig = ? "
        "AND s.status = ? AND t.status IN (SELECT value FROM json_each(?)) ORDER BY t.session_id",
        (rig, SessionStatus.ACTIVE.value, statuses))]


def labels_during(db: DBSession, session: Session, generation_ids: Collection[int]) -> list[tuple[datetime | None,
                                                                                                 list[str]]]:
    """The channel labels the session's rig recorded ``generation_ids`` (a run of a thread's generations) under,
    oldest first, each with the time of the HELLO that brought it: those in effect at the first presentation of any
    of them (``session_label_history``), then each other set it came back with before their last presentation.
    Without a presentation of theirs, the session's labels (``session_channel_labels``, at time None); [] without
    labels. Its first entry names a generation's channels wherever labels are shown (report, curve segments)."""
    first, last = db.execute(select(func.min(Presentation.received_at), func.max(Presentation.received_at))
                             .join(Batch, Batch.id == Presentation.batch_id)
                             .where(Batch.generation_id.in_(generation_ids))).one()
    history = session_label_history(db, session) if first is not None else []
    if not history:
        labels = session_channel_labels(db, session)
        return [(None, labels)] if labels else []
    start = [entry for entry in history if entry[0] <= first][-1:] or history[:1]
    return start + [entry for entry in history if first < entry[0] <= last]
