"""Sessions: list, create (checked before anything is written), read, stop, add a thread, events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session as DBSession, selectinload

from server import admission
from server.api.deps import (
    DB,
    AppSettings,
    Generators,
    Id,
    Limit,
    Offset,
    RigChannels,
    Wake,
    get_or_404,
    paginate,
    refuse,
)
from server.api.routes.threads import thread_read
from server.api.schemas import ErrorDetail, EventRead, Page, SessionRead, SessionWithThreads, ThreadRead
from server.session_config import SessionConfig, ThreadConfig, problem_message
from server.store import queries, records
from server.store.models import ENDED_THREAD_STATUSES, Event, Session, SessionStatus, Thread, ThreadStatus

router = APIRouter(prefix="/sessions", tags=["sessions"])
NOT_FOUND = {404: {"model": ErrorDetail}}
CONFLICT = {409: {"model": ErrorDetail, "description": "The session is stopped."}}


@router.get("", response_model=list[SessionRead])
def list_sessions(db: DB, offset: Offset = 0,
                  limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> list[Session]:
    """Every session, oldest first; ``offset`` and ``limit`` (at most 1000) take a slice of that list."""
    return list(db.scalars(select(Session).options(selectinload(Session.threads))  # for threads_by_status
                           .order_by(Session.id).offset(offset).limit(limit)))


def active_threads(db: DBSession) -> int:
    """Threads on the server that have not ended (running, waiting for their rig, blocked or paused)."""
    return db.scalar(select(func.count()).select_from(Thread).where(Thread.status.not_in(ENDED_THREAD_STATUSES)))


@router.post("", response_model=SessionWithThreads, status_code=status.HTTP_201_CREATED)
def post_session(config: SessionConfig, db: DB, wake: Wake, cache: Generators, rig_channels: RigChannels,
                 settings: AppSettings) -> Session:
    """Create a session and its threads once every check passes (``422`` naming each field otherwise).

    Threads are ``running`` when the session's rig is connected, else ``waiting_for_rig``.
    """
    channels = rig_channels(config.rig)
    refuse(admission.check_session(config, cache, channels, active_threads(db), settings.max_active_threads))
    session = records.create_session(db, config)
    if channels is None:
        for thread in session.threads:
            thread.status = ThreadStatus.WAITING_FOR_RIG
    db.commit()
    wake()
    return session


@router.get("/{session_id}", response_model=SessionWithThreads, responses=NOT_FOUND)
def get_session(session_id: Id, db: DB, request: Request) -> SessionWithThreads:
    """The session and its threads (each as ``GET /threads/{id}`` shows it)."""
    session = get_or_404(db, Session, session_id)
    threads = [thread_read(thread, request.app.state.engine) for thread in session.threads]
    return SessionWithThreads.model_validate(session).model_copy(
        update={"channel_labels": queries.session_channel_labels(db, session), "threads": threads})


@router.post("/{session_id}/stop", response_model=SessionWithThreads, responses=NOT_FOUND)
def stop_session(session_id: Id, db: DB, wake: Wake) -> Session:
    """Stop every thread that has not ended, and the session (``stopped``, final); idempotent: a session
    already stopped or finished is returned as it is."""
    session = get_or_404(db, Session, session_id)
    if session.status == SessionStatus.ACTIVE:
        records.stop_session(db, session)
        db.commit()
        wake()
    return session


@router.get("/{session_id}/threads", response_model=list[ThreadRead], responses=NOT_FOUND)
def list_session_threads(session_id: Id, db: DB, request: Request) -> list[ThreadRead]:
    return [thread_read(thread, request.app.state.engine) for thread in get_or_404(db, Session, session_id).threads]


@router.post("/{session_id}/threads", response_model=ThreadRead, status_code=status.HTTP_201_CREATED,
             responses={**NOT_FOUND, **CONFLICT})
def post_session_thread(session_id: Id, thread: ThreadConfig, db: DB, wake: Wake, cache: Generators,
                        rig_channels: RigChannels, settings: AppSettings) -> Thread:
    """Add a thread (e.g. a Manifold map around a finished evolution), checked like a new session's.

    A ``finished`` session becomes ``active`` again; a ``stopped`` one is a ``409``.
    """
    session = get_or_404(db, Session, session_id)
    if session.status == SessionStatus.STOPPED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"session {session_id} is stopped; threads can only be added "
                            "to an active or finished session")
    channels = rig_channels(session.rig)
    stored = SessionConfig.stored(session.config_json).threads
    refuse(admission.check_capacity(active_threads(db), 1, settings.max_active_threads))
    refuse(admission.check_thread(thread, cache, session.rig, channels, session_threads=stored))
    try:
        row = records.add_thread(db, session, thread)
    except ValidationError as error:
        db.rollback()
        raise HTTPException(422, [{"type": "value_error", "loc": ["body"], "msg": problem_message(problem)}
                                  for problem in error.errors()]) from None
    if channels is None:
        row.status = ThreadStatus.WAITING_FOR_RIG
    db.commit()
    wake()
    return row


@router.get("/{session_id}/events", response_model=Page[EventRead], responses=NOT_FOUND)
def list_session_events(
    session_id: Id,
    db: DB,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Page[EventRead]:
    """The session's event log, oldest first."""
    get_or_404(db, Session, session_id)
    return paginate(db, select(Event).where(Event.session_id == session_id), Event.id, EventRead, offset, limit)
