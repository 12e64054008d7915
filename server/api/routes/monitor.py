"""What a dashboard reads besides the plain resources: a thread's score curve, the rigs and a rig's status."""

from __future__ import annotations

import difflib

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import Select, func, select, tuple_

from server.api.deps import DB, MAX_ID, Id, get_or_404
from server.api.schemas import BatchTiming, Curve, CurvePoint, CurveSegment, ErrorDetail, RigStatus, RigSummary
from server.drift import mean_sem
from server.monitor import GENERATION_COMPLETED
from server.objectives import objective_segments, score_label
from server.store import queries
from server.session_config import ObjectiveConfig
from server.store.models import (
    ENDED_THREAD_STATUSES, Batch, Event, Generation, GenerationStatus, Session, SessionStatus, Stimulus, StimulusKind,
    Thread,
)

router = APIRouter(tags=["monitor"])
NOT_FOUND = {404: {"model": ErrorDetail}}


def decimate(total: int, max_points: int) -> list[int]:
    """At most ``max_points`` evenly spaced indices of ``range(total)``, always with the first and last."""
    if total <= max_points:
        return list(range(total))
    return sorted(set(np.linspace(0, total - 1, max_points).round().astype(int).tolist()))


def _argmax(scores: list[float | None] | None) -> int | None:
    finite = [(s, i) for i, s in enumerate(scores or []) if s is not None and np.isfinite(s)]
    return max(finite)[1] if finite else None


@router.get("/threads/{thread_id}/curve", response_model=Curve, responses=NOT_FOUND)
def get_curve(thread_id: Id, db: DB, max_points: int = Query(1000, ge=2, le=10_000),
              from_generation: int = Query(0, ge=0, le=MAX_ID, description="Only generations from this number on.")) -> Curve:
    """Mean ± SEM, max and reference mean ± SEM per completed generation, with each one's best image, and
    where each objective begins. Reads only the generations from ``from_generation`` on (and the one
    before, to tell whether a segment begins there), so a dashboard's update costs what it returns."""
    thread = get_or_404(db, Thread, thread_id)
    complete = (Generation.thread_id == thread_id, Generation.status == GenerationStatus.COMPLETE)
    before = db.scalar(select(Generation.number).where(*complete, Generation.number < from_generation)
                       .order_by(Generation.number.desc()).limit(1))
    rows = db.execute(
        select(Generation.id, Generation.number, Generation.scores_json, Generation.max_score,
               Generation.reference_mean, Generation.completed_at, Generation.objective_json)
        .where(*complete, Generation.number >= (from_generation if before is None else before))
        .order_by(Generation.number)
    ).all()
    segments = [(number, objective) for number, objective
                in objective_segments([(r.number, r.objective_json or thread.objective_json) for r in rows])
                if number >= from_generation]
    ids = {row.number: row.id for row in rows}

    def labels(number: int) -> list[str]:
        """The channel labels generation ``number`` was recorded under: a channels objective's label names its
        channels (a retarget's segments say which each scores) as the rig had them when its segment began."""
        during = queries.labels_during(db, thread.session, [ids[number]])
        return during[0][1] if during else []

    segments = [CurveSegment(from_generation=number,
                             score_label=score_label(objective, labels(number) if objective.get("channels") else None))
                for number, objective in segments]
    rows = [row for row in rows if row.number >= from_generation]
    total = len(rows)
    rows = [rows[i] for i in decimate(total, max_points)]
    # One generation.completed event per completed generation, logged in order: the newest ``total`` are
    # these, so the scan of the thread's events stops there.
    reference_sem = {
        data["generation"]: data.get("reference_sem")
        for data in db.scalars(select(Event.data_json)
                               .where(Event.thread_id == thread_id, Event.kind == GENERATION_COMPLETED,
                                      Event.data_json["generation"].as_integer() >= from_generation)
                               .order_by(Event.id.desc()).limit(total))
    } if total else {}
    best = {row.id: _argmax(row.scores_json) for row in rows}
    wanted = [(generation_id, index) for generation_id, index in best.items() if index is not None]
    best_ids = {
        (generation_id, index): stimulus_id for stimulus_id, generation_id, index in db.execute(
            select(Stimulus.id, Stimulus.generation_id, Stimulus.index)
            .where(Stimulus.thread_id == thread_id, Stimulus.kind == StimulusKind.SYNTHETIC,
                   tuple_(Stimulus.generation_id, Stimulus.index).in_(wanted))
        )
    } if wanted else {}
    points = []
    for row in rows:
        mean, sem = mean_sem(row.scores_json or [])
        points.append(CurvePoint(
            generation=row.number, generation_id=row.id, mean=mean, sem=sem, max=row.max_score,
            reference_mean=row.reference_mean, reference_sem=reference_sem.get(row.number),
            best_stimulus_id=best_ids.get((row.id, best[row.id])), completed_at=row.completed_at,
        ))
    return Curve(thread_id=thread_id, total=total, points=points, segments=segments)


@router.get("/rigs", response_model=list[RigSummary])
def list_rigs(request: Request, db: DB) -> list[RigSummary]:
    """The connected rigs and those active sessions wait for, by name: a session whose rig is missing here
    while another is connected may have its rig's name wrong (names are exact and case-sensitive)."""
    transport = getattr(request.app.state.engine, "transport", None)
    connected = {name: transport.rig_status(name) for name in transport.rigs()} if transport is not None else {}
    sessions: dict[str, list[int]] = {}
    for session_id, rig in db.execute(select(Session.id, Session.rig).where(Session.status == SessionStatus.ACTIVE)
                                      .order_by(Session.id)):
        sessions.setdefault(rig, []).append(session_id)
    return [RigSummary(rig=rig, connected=connected.get(rig) is not None,
                       channels=connected[rig]["channels"] if connected.get(rig) else None, sessions=sessions.get(rig, []))
            for rig in sorted(set(connected) | set(sessions))]


@router.get("/rigs/{rig}", response_model=RigStatus, responses=NOT_FOUND)
def get_rig(rig: str, request: Request, db: DB, batches: int = Query(20, ge=1, le=500)) -> RigStatus:
    """Whether ``rig`` is connected, its channels (and which threads that have not ended score them), and its
    latest batch timings; 404 for a rig that never connected and that no session names (a typo)."""
    engine = request.app.state.engine
    transport = getattr(engine, "transport", None)
    status = transport.rig_status(rig) if transport is not None else None
    if status is None and not _known(db, rig):
        raise HTTPException(404, _unknown_rig(db, rig))
    scored: dict[int, list[str]] = {}
    for name, objective in db.execute(
        select(Thread.name, Thread.objective_json).join(Session, Session.id == Thread.session_id)
        .where(Session.rig == rig, Session.status == SessionStatus.ACTIVE,
               Thread.status.not_in(ENDED_THREAD_STATUSES))
    ):
        for channel in sorted(ObjectiveConfig.stored(objective).build().channels):
            scored.setdefault(channel, []).append(name)
    recent = db.execute(recent_batches(rig, batches)).all()
    turnaround = _turnarounds(db, recent)
    timings = [
        BatchTiming(
            batch_id=batch.id, thread_id=batch.thread_id, generation=number, sent_at=batch.sent_at,
            first_result_ms=_ms(batch.sent_at, batch.results_first_at), complete_ms=_ms(batch.sent_at, batch.completed_at),
            turnaround_ms=turnaround.get(batch.id),
        )
        for batch, number in recent
    ]
    return RigStatus(
        rig=rig, connected=status is not None, channels=status and status["channels"],
        channel_labels=queries.rig_channel_labels(db, rig), setup=queries.rig_setup(db, rig),
        minor=getattr(engine, "rig_minor", {}).get(rig),
        heard_s_ago=status and status["heard_s_ago"], heartbeat_s=getattr(transport, "heartbeat_s", None),
        scored_channels=scored, batches=timings,
    )


def _hellos(rig: str | None = None) -> Select:
    """The rig names of ``rig.connected`` events (``rig``'s only, when given)."""
    name = Event.data_json["rig"].as_string()
    query = select(name).where(Event.kind == "rig.connected")
    return query if rig is None else query.where(name == rig).limit(1)


def _known(db, rig: str) -> bool:
    """Whether ``rig`` ever connected (a ``rig.connected`` event) or a session names it."""
    return (db.scalar(select(Session.id).where(Session.rig == rig).limit(1)) is not None
            or db.scalar(_hellos(rig)) is not None)


def _unknown_rig(db, rig: str, most: int = 20) -> str:
    """Why ``rig`` is not found, with the rigs that ever connected or that sessions name (the first ``most``)."""
    known = sorted(set(db.scalars(select(Session.rig).distinct())) | set(db.scalars(_hellos().distinct())))
    close = difflib.get_close_matches(rig, known, n=1)
    listed = ", ".join(map(repr, known[:most])) + (f", … ({len(known)} rigs)" if len(known) > most else "")
    return (f"rig {rig!r} not found: it never connected to this server and no session names it (names are exact "
            f"and case-sensitive); " + (f"did you mean {close[0]!r}? " if close else "")
            + (f"known rigs: {listed}" if known else "no rig is known yet"))


def recent_batches(rig: str, limit: int) -> Select:
    """The rig's latest ``limit`` batches, newest first, with their generation's number (read through the
    index on batches (rig, sent_at): it does not grow with the sessions the server has run)."""
    return (select(Batch, Generation.number).join(Generation, Generation.id == Batch.generation_id)
            .where(Batch.rig == rig).order_by(Batch.sent_at.desc()).limit(limit))


def _turnarounds(db, recent) -> dict[str, float | None]:
    """Batch id -> ms from its thread's previous generation completing to the batch being sent, for the
    first batch of each generation (a later round re-sends what is still owed: no turnaround)."""
    first_sent = dict(db.execute(
        select(Batch.generation_id, func.min(Batch.sent_at))
        .where(Batch.generation_id.in_({batch.generation_id for batch, _ in recent})).group_by(Batch.generation_id)
    ).all())
    result = {}
    for batch, number in recent:
        if number > 0 and batch.sent_at == first_sent[batch.generation_id]:
            previous = db.scalar(select(Generation.completed_at).where(Generation.thread_id == batch.thread_id,
                                                                       Generation.number == number - 1))
            result[batch.id] = _ms(previous, batch.sent_at)
    return result


def _ms(start, end) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds() * 1000
