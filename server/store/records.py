"""Writes shared by the REST API, the CLI and the engine (none commits).

The writes of each RESULTS and step (``log_event`` and ``record_presentations`` on) run on the sqlite3
driver directly (``server.store.db.driver``): they neither flush the ORM session nor show in its objects.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session as DBSession

from rig_client.protocol import TRIAL_FACTS, ErrorCode, time_ordered_uuid
from server import RigInputError, live
from server.session_config import MAX_SEED, ObjectiveConfig, SessionConfig, ThreadConfig
from server.store import queries
from server.store.archive import ArchivedImage
from server.store.db import Transaction, driver
from server.store.models import (
    ENDED_THREAD_STATUSES,
    LIVE_THREAD_STATUSES,
    Batch,
    BatchStatus,
    EventLevel,
    GenerationStatus,
    Session,
    SessionStatus,
    StimulusKind,
    Thread,
    ThreadStatus,
    encode_codes,
    read_json,
    stored_json,
    stored_time,
    utcnow,
)


@dataclass(frozen=True)
class PresentationRecord:
    """One presentation as a rig reported it (RESULTS), ready to store."""

    presentation_id: str
    stimulus_id: str
    onset: float
    rates: list[float]
    window_start_ms: float
    window_end_ms: float
    trial_facts: dict[str, Any] | None = None  # protocol 1.1 fields as sent (TRIAL_FACTS); None: none sent

    @classmethod
    def from_message(cls, p: dict[str, Any]) -> PresentationRecord:
        """From one validated RESULTS presentation (``rig_client.protocol``), trial facts included."""
        facts = {key: p[key] for key in TRIAL_FACTS if key in p}
        return cls(p["presentation_id"], p["stimulus_id"], float(p["onset"]), list(p["rates"]),
                   float(p["window_ms"][0]), float(p["window_ms"][1]), facts or None)


def log_event(
    db: Transaction,
    kind: str,
    message: str,
    *,
    level: EventLevel | str = EventLevel.INFO,
    session_id: int | None = None,
    thread_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """Add an event row (not committed; dashboards see it once it commits) and return its id; a thread's
    session is filled in when only the thread is given."""
    cursor = driver(db)
    if thread_id is not None and session_id is None:
        session_id, = cursor.execute("SELECT session_id FROM threads WHERE id = ?", (thread_id,)).fetchone()
    level = EventLevel(level)
    event_id, = cursor.execute(
        "INSERT INTO events (session_id, thread_id, time, level, kind, message, data_json) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "RETURNING id", (session_id, thread_id, stored_time(utcnow()), level.value, kind, message, stored_json(data))
    ).fetchone()
    live.publish_on_commit(db, dict(kind=kind, message=message, level=level.value, session_id=session_id,
                                    thread_id=thread_id, data=data, event_id=event_id))
    return event_id


def log_event_once(db: Transaction, kind: str, message: str, *, session_id: int, **fields: Any) -> int | None:
    """``log_event``, unless the session has a ``kind`` event already; the new event's id, or None."""
    if driver(db).execute("SELECT 1 FROM events WHERE session_id = ? AND kind = ? LIMIT 1",
                          (session_id, kind)).fetchone() is not None:
        return None
    return log_event(db, kind, message, session_id=session_id, **fields)


def _with_seed(thread: ThreadConfig) -> ThreadConfig:
    """The thread with its seed drawn if it was left None."""
    return thread if thread.seed is not None else thread.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})


def _thread_row(thread: ThreadConfig) -> Thread:
    return Thread(
        name=thread.name,
        kind=thread.kind,
        generator=thread.generator,
        optimizer=thread.optimizer,
        optimizer_params_json=thread.optimizer_params,
        objective_json=thread.objective.model_dump(mode="json", exclude_none=True),
        seed=thread.seed,
        n_generations=thread.n_generations,
        repeats=thread.repeats,
        status=ThreadStatus.RUNNING,
    )


def create_session(db: DBSession, config: SessionConfig) -> Session:
    """Add a session and its threads (status running) from a validated config; not committed.

    Seeds left as None are drawn here and recorded both on the thread rows and in ``config_json``.
    """
    threads = [_with_seed(thread) for thread in config.threads]
    config = config.model_copy(update={"threads": threads})
    session = Session(
        name=config.name,
        rig=config.rig,
        animal=config.animal,
        array=config.array,
        notes=config.notes,
        config_json=config.model_dump(mode="json"),
        threads=[_thread_row(thread) for thread in threads],
    )
    db.add(session)
    db.flush()
    log_event(
        db,
        "session.created",
        f"session {session.id} {session.name!r} created for rig {session.rig!r} with {len(threads)} thread(s)",
        session_id=session.id,
    )
    return session


def add_thread(db: DBSession, session: Session, thread: ThreadConfig) -> Thread:
    """Add a thread (e.g. a Manifold map around a finished evolution) to ``session``; not committed.

    The session's config, with the thread appended, is validated again as stored (unique names, a manifold's
    source evolution and generator; not the references folder, which the archive replaces since the session's
    creation); raises ``pydantic.ValidationError`` naming the problem before anything changes. A finished session
    is active again.
    """
    thread = _with_seed(thread)
    # The write lock first, then the config read again: a thread another request added since (a double click) is
    # then in it, so a name given twice is refused and no thread goes missing from the stored config.
    db.execute(update(Session).where(Session.id == session.id).values(status=Session.status))
    db.refresh(session)
    config = SessionConfig.stored(
        {**session.config_json, "threads": [*session.config_json["threads"], thread.model_dump(mode="json")]})
    row = _thread_row(thread)
    session.threads.append(row)
    session.config_json = config.model_dump(mode="json")
    session.status = SessionStatus.ACTIVE
    db.flush()
    log_event(db, "thread.added", f"thread {row.id} {row.name!r} ({row.kind}) added to session {session.id}",
              thread_id=row.id, session_id=session.id)
    return row


def set_objective(db: DBSession, thread: Thread, objective: ObjectiveConfig) -> int:
    """Change a thread's objective from its next generation on (the pending one if nothing of it was
    recorded yet); returns that generation's number. The session's stored config keeps the objective the
    thread was created with (what re-creating the session runs): the ``thread.retargeted`` event, naming the
    objective before and after, and each generation's objective record the change.

    The write comes first: it holds SQLite's write lock while the pending generation is read, and the
    engine reads the objective after inserting a generation, so each generation sees exactly one side.
    """
    previous = thread.objective_json
    thread.objective_json = objective.model_dump(mode="json", exclude_none=True)
    db.flush()
    pending = queries.pending_generation(db, thread.id)
    if pending is not None and not queries.presented(db, pending.id):
        pending.objective_json = thread.objective_json  # nothing shown yet: it is scored the new way too
        from_generation = pending.number
    elif pending is not None:
        from_generation = pending.number + 1
    else:
        from_generation = len(queries.complete_generations(db, thread.id))  # numbers run 0, 1, ...
    log_event(db, "thread.retargeted",
              f"thread {thread.id} {thread.name!r} scores {describe_objective(objective)} from generation "
              f"{from_generation} on (before: {describe_objective(ObjectiveConfig.stored(previous))})",
              thread_id=thread.id,
              data={"from_generation": from_generation, "objective": thread.objective_json, "previous": previous})
    return from_generation


def describe_objective(objective: ObjectiveConfig) -> str:
    return objective.expression or f"{objective.combine} of channels {objective.channels}"


def end_session_if_done(db: Transaction, session_id: int) -> None:
    """Mark an active session ``finished`` once every thread has ended (stopped, finished or failed).

    On the driver: an ORM session is flushed first, and its loaded copy of the session row expired."""
    if isinstance(db, DBSession):
        db.flush()
    ended = json.dumps(sorted(status.value for status in ENDED_THREAD_STATUSES))
    row = driver(db).execute(
        "UPDATE sessions SET status = ? WHERE id = ? AND status = ? AND NOT EXISTS (SELECT 1 FROM threads "
        "WHERE session_id = ? AND status NOT IN (SELECT value FROM json_each(?))) RETURNING name",
        (SessionStatus.FINISHED.value, session_id, SessionStatus.ACTIVE.value, session_id, ended)).fetchone()
    if row is None:
        return
    if isinstance(db, DBSession) and (loaded := db.identity_map.get(DBSession.identity_key(Session, session_id))):
        db.expire(loaded, ["status"])
    log_event(db, "session.finished", f"session {session_id} {row[0]!r} finished: every thread ended",
              session_id=session_id)


def finish_thread(db: Transaction, thread_id: int, told: int | None = None) -> str | None:
    """Mark a thread finished: with ``told``, only if that many told generations reach its ``n_generations`` as the
    row has it now (an extension raises it while the thread runs); its name, or None while it goes on."""
    sql, values = "UPDATE threads SET status = ? WHERE id = ?", [ThreadStatus.FINISHED.value, thread_id]
    if told is not None:
        sql, values = f"{sql} AND n_generations <= ?", [*values, told]
    row = driver(db).execute(f"{sql} RETURNING name", values).fetchone()
    return None if row is None else row[0]


def extend_thread(db: DBSession, thread: Thread, n_generations: int) -> None:
    """Give an evolution a new total of generations (``POST /threads/{id}/extend``, which checked that it may) and
    log ``thread.extended``; not committed. A finished one runs again from its stored optimizer state, and so does
    its session. The session's stored config keeps the n_generations the thread was created with."""
    before = thread.n_generations
    thread.n_generations = n_generations
    if thread.status == ThreadStatus.FINISHED:
        thread.status, thread.last_error = ThreadStatus.RUNNING, None
        thread.session.status = SessionStatus.ACTIVE
    db.flush()
    change = "extended" if n_generations > before else "shortened"
    log_event(db, "thread.extended", f"thread {thread.id} {thread.name!r} {change} from {before} to {n_generations} "
              "generations", thread_id=thread.id, data={"from": before, "to": n_generations})


def pause_thread(db: Transaction, thread_id: int, reason: str) -> bool:
    """Pause a live thread (running, waiting for its rig or blocked), ``reason`` its ``last_error``; False
    if it is not live (the user paused or stopped it meanwhile)."""
    statuses = json.dumps(sorted(status.value for status in LIVE_THREAD_STATUSES))
    return driver(db).execute(
        "UPDATE threads SET status = ?, last_error = ? WHERE id = ? AND status IN (SELECT value FROM json_each(?)) "
        "RETURNING id", (ThreadStatus.PAUSED.value, reason, thread_id, statuses)).fetchone() is not None


def stop_session(db: DBSession, session: Session) -> None:
    """Stop every thread that has not ended, and the session."""
    for thread in session.threads:
        if thread.status not in ENDED_THREAD_STATUSES:
            thread.status, thread.last_error = ThreadStatus.STOPPED, None  # what it waited for is moot now
            log_event(db, "thread.stopped", f"thread {thread.id} {thread.name!r} stopped with its session",
                      thread_id=thread.id, session_id=session.id)
    session.status = SessionStatus.STOPPED
    log_event(db, "session.stopped", f"session {session.id} {session.name!r} stopped", session_id=session.id)


def set_thread_error(db: DBSession, thread_id: int, kind: str, message: str, *,
                     status: ThreadStatus | None = None, level: EventLevel = EventLevel.ERROR,
                     data: dict[str, Any] | None = None) -> bool:
    """Record a refusal or failure: the thread's ``last_error`` (and status, if given) and an event. False, and
    nothing written, for a thread that has ended: its end is final (a step that raised as a user stopped it)."""
    values = {"last_error": message} if status is None else {"last_error": message, "status": status}
    if not db.execute(update(Thread).where(Thread.id == thread_id, Thread.status.not_in(ENDED_THREAD_STATUSES))
                      .values(**values)).rowcount:
        return False
    thread = db.get(Thread, thread_id)
    log_event(db, kind, f"thread {thread_id} {thread.name!r}: {message}", level=level, thread_id=thread_id,
              data=data)
    if status in ENDED_THREAD_STATUSES:
        end_session_if_done(db, thread.session_id)
    return True


def clear_thread_error(db: Transaction, thread_id: int, message: str) -> None:
    """Clear the thread's ``last_error`` if it is still ``message`` (what it reported has passed)."""
    driver(db).execute("UPDATE threads SET last_error = NULL WHERE id = ? AND last_error = ?", (thread_id, message))


def record_presentations(
    db: Transaction, batch: Batch | queries.BatchRow, presentations: Iterable[PresentationRecord], *,
    received_at: datetime | None = None
) -> tuple[list[str], list[str]]:
    """Store a rig's presentations for ``batch`` (a ``Batch``, or a ``queries.batch`` row) idempotently;
    not committed. The caller checked that each stimulus belongs to the batch (the schema refuses unknown
    stimulus ids: the driver raises ``sqlite3.IntegrityError``).

    ``received_at`` is when the RESULTS arrived (default: now).

    Returns ``(accepted, duplicates)``: presentation ids stored now, and ids already stored (by an
    earlier upload, or repeated within this one), each in input order. Sets the batch's
    ``results_first_at`` on the first accepted presentation. A duplicate is a resend: an id already used
    for another stimulus or batch raises ``RigInputError`` (``bad_field``) and nothing is stored.
    """
    unique: dict[str, PresentationRecord] = {}
    duplicates: list[str] = []
    for presentation in presentations:
        if (first := unique.get(presentation.presentation_id)) is not None:
            _check_resend(presentation, first.stimulus_id, batch.id, batch.id)
            duplicates.append(presentation.presentation_id)
        else:
            unique[presentation.presentation_id] = presentation
    if not unique:
        return [], duplicates

    stored = queries.stored_presentations(db, list(unique))
    for pid, (stimulus_id, stored_batch) in stored.items():
        _check_resend(unique[pid], stimulus_id, stored_batch, batch.id)
    accepted = [pid for pid in unique if pid not in stored]
    duplicates.extend(pid for pid in unique if pid in stored)
    if not accepted:
        return accepted, duplicates
    received = stored_time(received_at or utcnow())
    cursor = driver(db)
    # The engine's one worker is the only writer of presentations, so none appears between the read and here.
    cursor.executemany(
        "INSERT INTO presentations (presentation_id, stimulus_id, batch_id, rig, onset, rates_json, window_start_ms, "
        "window_end_ms, received_at, trial_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(p.presentation_id, p.stimulus_id, batch.id, batch.rig, p.onset, stored_json(p.rates), p.window_start_ms,
          p.window_end_ms, received, stored_json(p.trial_facts)) for p in (unique[pid] for pid in accepted)])
    if batch.results_first_at is None:
        cursor.execute("UPDATE batches SET results_first_at = ? WHERE id = ? AND results_first_at IS NULL",
                       (received, batch.id))
    return accepted, duplicates


def _check_resend(presentation: PresentationRecord, stimulus_id: str, batch_id: str, now_batch_id: str) -> None:
    """Refuse a presentation id that was used for ``stimulus_id`` of ``batch_id`` unless this is a resend of it."""
    if (presentation.stimulus_id, now_batch_id) != (stimulus_id, batch_id):
        raise RigInputError(ErrorCode.BAD_FIELD, f"presentation_id {presentation.presentation_id!r} was already used "
                            f"for stimulus {stimulus_id!r} of batch {batch_id!r}, so this showing of "
                            f"{presentation.stimulus_id!r} would be dropped as its duplicate: make a new UUID for each "
                            "showing (a resend keeps the id, stimulus and batch)")


def new_id() -> str:
    """A row id of 32 hex digits that sorts by creation time (``time_ordered_uuid``): the rows of one step
    land together at the end of each index on their id."""
    return time_ordered_uuid().hex


def add_generation(db: Transaction, thread_id: int, number: int, codes: np.ndarray, images: Sequence[ArchivedImage],
                   provenance: dict[str, Any], session_id: int) -> tuple[int, dict, list[str]]:
    """A pending generation, scored with its thread's objective as it is now, and one synthetic stimulus per
    code (one bulk insert); (the generation's id, that objective, stimulus ids in code order)."""
    # The objective is read by the insert itself, so a concurrent retarget is wholly before or after it.
    cursor, now = driver(db), stored_time(utcnow())
    generation_id, objective = cursor.execute(
        "INSERT INTO generations (thread_id, number, status, codes, n_stimuli, objective_json, n_scored, asked_at) "
        "VALUES (?, ?, ?, ?, ?, (SELECT objective_json FROM threads WHERE id = ?), 0, ?) RETURNING id, objective_json",
        (thread_id, number, GenerationStatus.PENDING.value, encode_codes(codes), len(codes), thread_id, now)).fetchone()
    rows = [(new_id(), session_id, thread_id, generation_id, StimulusKind.SYNTHETIC.value, index,
             encode_codes(code), image.content_hash, image.png_path, provenance["name"], provenance["version"],
             provenance.get("weights_sha256"), now)
            for index, (code, image) in enumerate(zip(codes, images, strict=True))]
    cursor.executemany(
        'INSERT INTO stimuli (id, session_id, thread_id, generation_id, kind, "index", code, content_hash, png_path, '
        "generator, generator_version, weights_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return generation_id, read_json(objective), [row[0] for row in rows]


def store_snapshot(db: Transaction, generation_id: int, state: bytes) -> None:
    """A told generation's full optimizer state after ``tell`` (``optimizers.dumps_state``), kept at snapshot
    generations (``thread_runtime.is_snapshot``)."""
    driver(db).execute("UPDATE generations SET optimizer_state = ? WHERE id = ?", (state, generation_id))


def add_batch(db: Transaction, batch_id: str, session_id: int, thread_id: int, generation_id: int, rig: str) -> str:
    """A batch row for a send about to happen; its id."""
    driver(db).execute(
        "INSERT INTO batches (id, session_id, thread_id, generation_id, rig, sent_at, status) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (batch_id, session_id, thread_id, generation_id, rig, stored_time(utcnow()), BatchStatus.SENT.value))
    return batch_id


def close_batch(db: Transaction, batch_id: str, at: datetime) -> None:
    """The rig said ``done`` for the batch: it is no longer outstanding."""
    driver(db).execute("UPDATE batches SET status = ?, completed_at = ? WHERE id = ? AND status = ?",
                       (BatchStatus.COMPLETE.value, stored_time(at), batch_id, BatchStatus.SENT.value))


def complete_generation(db: Transaction, generation_id: int, scores: np.ndarray, reference_scores: Sequence[float],
                        optimizer_summary: dict[str, float | None], *, timed_out: bool) -> int:
    """Mark a generation told: its scores, their summary and the summary of the optimizer state after ``tell``;
    close its batches. Returns how many stimuli were scored."""
    scored = scores[np.isfinite(scores)]
    finite_refs = [r for r in reference_scores if np.isfinite(r)]
    cursor, completed_at = driver(db), stored_time(utcnow())
    cursor.execute(
        "UPDATE generations SET status = ?, optimizer_summary_json = ?, scores_json = ?, "
        "n_scored = ?, mean_score = ?, max_score = ?, reference_mean = ?, completed_at = ? WHERE id = ?",
        (GenerationStatus.COMPLETE.value, stored_json(optimizer_summary), stored_json(scores),
         int(scored.size), float(scored.mean()) if scored.size else None,
         float(scored.max()) if scored.size else None, float(np.mean(finite_refs)) if finite_refs else None,
         completed_at, generation_id))
    cursor.execute("UPDATE batches SET status = ?, completed_at = ? WHERE generation_id = ? AND status = ?",
                   (BatchStatus.TIMED_OUT.value if timed_out else BatchStatus.COMPLETE.value, completed_at,
                    generation_id, BatchStatus.SENT.value))
    return int(scored.size)
