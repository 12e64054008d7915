"""Sessions: list, create from a ``SessionConfig``, read, their threads and events."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import ValidationError
from sqlalchemy import select, update

from server.api.deps import DB, Id, Limit, Offset, Wake, get_or_404, paginate
from server.api.schemas import ErrorDetail, EventRead, Page, SessionRead, SessionWithThreads, ThreadRead
from server.session_config import SessionConfig, ThreadConfig, describe_validation_error
from server.store import queries
from server.store.models import Event, Session, SessionStatus, Thread, ThreadStatus
from server.store.records import add_thread, create_session, log_event

router = APIRouter(prefix="/sessions", tags=["sessions"])
NOT_FOUND = {404: {"model": ErrorDetail}}


@router.get("", response_model=list[SessionRead])
def list_sessions(db: DB) -> list[Session]:
    return list(db.scalars(select(Session).order_by(Session.id)))


@router.post("", response_model=SessionWithThreads, status_code=status.HTTP_201_CREATED)
def post_session(config: SessionConfig, db: DB, wake: Wake) -> Session:
    """Create a session and its threads (status ``running``); the engine starts them for the rig."""
    session = create_session(db, config)
    db.commit()
    wake()
    return session


@router.get("/{session_id}", response_model=SessionWithThreads, responses=NOT_FOUND)
def get_session(session_id: Id, db: DB) -> SessionWithThreads:
    session = get_or_404(db, Session, session_id)
    return SessionWithThreads.model_validate(session).model_copy(
        update={"channel_labels": queries.rig_channel_labels(db, session.rig)})


@router.get("/{session_id}/threads", response_model=list[ThreadRead], responses=NOT_FOUND)
def list_session_threads(session_id: Id, db: DB) -> list[Thread]:
    return get_or_404(db, Session, session_id).threads


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


@router.post("/{session_id}/stop", response_model=SessionWithThreads, responses=NOT_FOUND)
def stop_session(session_id: Id, db: DB, wake: Wake) -> Session:
    """Stop every running or paused thread (final) and mark the session stopped; idempotent."""
    session = get_or_404(db, Session, session_id)
    stopped = db.execute(
        update(Thread).where(Thread.session_id == session_id,
                             Thread.status.in_([ThreadStatus.RUNNING, ThreadStatus.PAUSED]))
        .values(status=ThreadStatus.STOPPED)
    ).rowcount
    if session.status != SessionStatus.STOPPED:
        session.status = SessionStatus.STOPPED
        log_event(db, "session.stopped", f"session {session_id} stopped via REST ({stopped} thread(s) stopped)",
                  session_id=session_id)
    db.commit()
    db.refresh(session)
    wake()
    return session


@router.post("/{session_id}/threads", response_model=ThreadRead, status_code=status.HTTP_201_CREATED,
             responses={**NOT_FOUND, 409: {"model": ErrorDetail}, 422: {"model": ErrorDetail}})
def post_session_thread(session_id: Id, thread: ThreadConfig, db: DB, wake: Wake) -> Thread:
    """Add a thread to an active session, e.g. a Manifold map around an evolution (it starts once that ends)."""
    session = get_or_404(db, Session, session_id)
    if session.status != SessionStatus.ACTIVE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"session {session_id} is {session.status.value}; "
                            "threads can only be added to an active session")
    try:
        row = add_thread(db, session, thread)
    except ValidationError as error:
        db.rollback()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, describe_validation_error(error)) from None
    db.commit()
    wake()
    return row
