"""The engine's reads: running threads, a thread's generations, a generation's stimuli and presentations.

Every function takes an open ORM session and returns plain values or rows; none commits.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DBSession

from server.store.models import (
    Batch,
    Generation,
    GenerationStatus,
    Presentation,
    Session,
    SessionStatus,
    Stimulus,
    StimulusKind,
    Thread,
    ThreadStatus,
)


def running_thread_ids(db: DBSession) -> list[int]:
    """Threads the user wants running, in sessions still active."""
    query = (
        select(Thread.id)
        .join(Session, Session.id == Thread.session_id)
        .where(Thread.status == ThreadStatus.RUNNING, Session.status == SessionStatus.ACTIVE)
    )
    return list(db.scalars(query))


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


def reference_ids(db: DBSession, session_id: int) -> list[str]:
    """The session's reference stimuli, in the order they were archived."""
    return list(db.scalars(
        select(Stimulus.id).where(Stimulus.session_id == session_id, Stimulus.kind == StimulusKind.REFERENCE)
        .order_by(Stimulus.created_at, Stimulus.id)
    ))


def batch_stimulus_ids(db: DBSession, batch: Batch) -> set[str]:
    """What a rig may answer for ``batch``: its generation's stimuli and the session's references."""
    return set(db.scalars(
        select(Stimulus.id).where(
            (Stimulus.generation_id == batch.generation_id)
            | ((Stimulus.session_id == batch.session_id) & (Stimulus.kind == StimulusKind.REFERENCE))
        )
    ))


def presentation_rates(db: DBSession, generation_id: int) -> dict[str, list[list[float]]]:
    """Rates of every presentation made for a generation's batches, by stimulus (missing channels NaN)."""
    rows = db.execute(
        select(Presentation.stimulus_id, Presentation.rates_json)
        .join(Batch, Batch.id == Presentation.batch_id)
        .where(Batch.generation_id == generation_id)
        .order_by(Presentation.id)
    )
    rates: dict[str, list[list[float]]] = {}
    for stimulus_id, values in rows:
        rates.setdefault(stimulus_id, []).append([np.nan if v is None else v for v in values])
    return rates


def presentation_counts(db: DBSession, generation_id: int) -> dict[str, int]:
    """How often each stimulus has been presented for a generation."""
    return dict(db.execute(
        select(Presentation.stimulus_id, func.count())
        .join(Batch, Batch.id == Presentation.batch_id)
        .where(Batch.generation_id == generation_id)
        .group_by(Presentation.stimulus_id)
    ).all())


def generation_batches(db: DBSession, generation_id: int) -> list[Batch]:
    """A generation's batches in the order they were sent."""
    return list(db.scalars(select(Batch).where(Batch.generation_id == generation_id).order_by(Batch.sent_at)))


def batch_answered(db: DBSession, batch_id: str) -> set[str]:
    """Stimuli with a presentation stored for ``batch_id``."""
    return set(db.scalars(select(Presentation.stimulus_id).where(Presentation.batch_id == batch_id)))


def stored_presentation_ids(db: DBSession, presentation_ids: list[str]) -> set[str]:
    """Those of ``presentation_ids`` already stored."""
    return set(db.scalars(select(Presentation.presentation_id)
                          .where(Presentation.presentation_id.in_(presentation_ids))))


def last_snapshot(db: DBSession, thread_id: int) -> Generation | None:
    """A thread's last told generation that holds a full optimizer state."""
    return db.scalars(
        select(Generation).where(Generation.thread_id == thread_id, Generation.status == GenerationStatus.COMPLETE,
                                 Generation.optimizer_state.is_not(None))
        .order_by(Generation.number.desc()).limit(1)
    ).first()
