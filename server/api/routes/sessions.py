"""Sessions: list, create from a ``SessionConfig``, read, their threads and events."""

from __future__ import annotations

from fastapi import APIRouter, status
from sqlalchemy import select

from server.api.deps import DB, Limit, Offset, Wake, get_or_404, paginate
from server.api.schemas import ErrorDetail, EventRead, Page, SessionRead, SessionWithThreads, ThreadRead
from server.session_config import SessionConfig
from server.store import queries
from server.store.models import Event, Session, Thread
from server.store.records import create_session

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
def get_session(session_id: int, db: DB) -> SessionWithThreads:
    session = get_or_404(db, Session, session_id)
    return SessionWithThreads.model_validate(session).model_copy(
        update={"channel_labels": queries.rig_channel_labels(db, session.rig)})


@router.get("/{session_id}/threads", response_model=list[ThreadRead], responses=NOT_FOUND)
def list_session_threads(session_id: int, db: DB) -> list[Thread]:
    return get_or_404(db, Session, session_id).threads


@router.get("/{session_id}/events", response_model=Page[EventRead], responses=NOT_FOUND)
def list_session_events(
    session_id: int,
    db: DB,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Page[EventRead]:
    """The session's event log, oldest first."""
    get_or_404(db, Session, session_id)
    return paginate(db, select(Event).where(Event.session_id == session_id), Event.id, EventRead, offset, limit)
