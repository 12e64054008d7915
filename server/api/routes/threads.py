"""Threads: read, pause/resume/stop (a small state machine), generations and presentations."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select, update
from sqlalchemy.orm import Session as DBSession

from server.api.deps import DB, Id, Limit, Offset, Wake, get_or_404, paginate
from server.api.schemas import ErrorDetail, GenerationSummary, Page, PresentationRead, ThreadRead
from server.store.models import Batch, Generation, Presentation, Thread, ThreadStatus
from server.store.records import log_event

router = APIRouter(prefix="/threads", tags=["threads"], responses={404: {"model": ErrorDetail}})

# action -> (statuses it may start from, status it leads to); everything else is a 409.
TRANSITIONS: dict[str, tuple[frozenset[ThreadStatus], ThreadStatus]] = {
    "pause": (frozenset({ThreadStatus.RUNNING}), ThreadStatus.PAUSED),
    "resume": (frozenset({ThreadStatus.PAUSED}), ThreadStatus.RUNNING),
    "stop": (frozenset({ThreadStatus.RUNNING, ThreadStatus.PAUSED}), ThreadStatus.STOPPED),
}

CONFLICT = {409: {"model": ErrorDetail, "description": "The thread's status does not allow this action."}}


def _transition(db: DBSession, wake: Callable[[], None], thread_id: int, action: str) -> Thread:
    """Apply ``action`` atomically (a conditional UPDATE, so a concurrent engine write cannot be lost)."""
    allowed, target = TRANSITIONS[action]
    changed = db.execute(
        update(Thread).where(Thread.id == thread_id, Thread.status.in_(allowed)).values(status=target)
    ).rowcount
    thread = get_or_404(db, Thread, thread_id)
    if not changed:
        db.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"cannot {action} thread {thread_id}: it is {thread.status.value}"
            f" (allowed from: {', '.join(sorted(s.value for s in allowed))})",
        )
    log_event(
        db, f"thread.{target.value}", f"thread {thread_id} {thread.name!r} {target.value} via REST", thread_id=thread_id
    )
    db.commit()
    db.refresh(thread)
    wake()
    return thread


@router.get("/{thread_id}", response_model=ThreadRead)
def get_thread(thread_id: Id, db: DB) -> Thread:
    return get_or_404(db, Thread, thread_id)


@router.post("/{thread_id}/pause", response_model=ThreadRead, responses=CONFLICT)
def pause_thread(thread_id: Id, db: DB, wake: Wake) -> Thread:
    """running -> paused: the current generation finishes, no new one is asked."""
    return _transition(db, wake, thread_id, "pause")


@router.post("/{thread_id}/resume", response_model=ThreadRead, responses=CONFLICT)
def resume_thread(thread_id: Id, db: DB, wake: Wake) -> Thread:
    """paused -> running."""
    return _transition(db, wake, thread_id, "resume")


@router.post("/{thread_id}/stop", response_model=ThreadRead, responses=CONFLICT)
def stop_thread(thread_id: Id, db: DB, wake: Wake) -> Thread:
    """running or paused -> stopped (final)."""
    return _transition(db, wake, thread_id, "stop")


@router.get("/{thread_id}/generations", response_model=list[GenerationSummary])
def list_thread_generations(thread_id: Id, db: DB) -> list[Generation]:
    return get_or_404(db, Thread, thread_id).generations


@router.get("/{thread_id}/presentations", response_model=Page[PresentationRead])
def list_thread_presentations(
    thread_id: Id,
    db: DB,
    offset: Offset = 0,
    limit: Limit = 100,
) -> Page[PresentationRead]:
    """Presentations of the thread's batches (synthetic and reference images), in arrival order."""
    get_or_404(db, Thread, thread_id)
    query = select(Presentation).join(Batch, Presentation.batch_id == Batch.id).where(Batch.thread_id == thread_id)
    return paginate(db, query, Presentation.id, PresentationRead, offset, limit)
