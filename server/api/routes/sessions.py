"""Sessions: list, create (checked before anything is written; an ``Idempotency-Key`` makes a retry safe), read,
stop, pause and resume, add a thread, notes, events."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from pydantic import AfterValidator, Field, ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DBSession, selectinload

from server import admission
from server.api.deps import (
    DB,
    MAX_ID,
    AppSettings,
    Archive,
    Generators,
    Id,
    Limit,
    Offset,
    RigChannels,
    Via,
    Wake,
    check_generations,
    get_or_404,
    paginate,
    refuse,
)
from server.api.routes.threads import _check_generator, _check_references, thread_read
from server.api.schemas import ErrorDetail, EventRead, NoteCreate, Page, SessionRead, SessionWithThreads, ThreadRead
from server.session_config import SessionConfig, ThreadConfig, problem_message
from server.store import queries, records
from server.store.models import (
    ENDED_THREAD_STATUSES,
    EVENT_KINDS,
    LIVE_NOTICES,
    LIVE_THREAD_STATUSES,
    Event,
    Session,
    SessionStatus,
    Thread,
    ThreadStatus,
)

router = APIRouter(prefix="/sessions", tags=["sessions"])
NOT_FOUND = {404: {"model": ErrorDetail}}
CONFLICT = {409: {"model": ErrorDetail, "description": "The session is stopped."}}
WARNING_HEADER = "X-Actmax-Warning"
REPLAYED_HEADER = "Idempotency-Replayed"
TOTAL_HEADER = "X-Total-Count"
MAX_NAMED_SESSIONS = 5  # in the shared-rig warning, then their count: a header stays short


@router.get("", response_model=list[SessionRead], responses={200: {"headers": {
    TOTAL_HEADER: {"description": "How many sessions there are in all.", "schema": {"type": "integer"}}}}})
def list_sessions(db: DB, response: Response, offset: Offset = 0,
                  limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> list[Session]:
    """Every session, oldest first; ``offset`` and ``limit`` (at most 1000) take a slice of that list, and the header
    ``X-Total-Count`` says how many there are in all."""
    response.headers[TOTAL_HEADER] = str(db.scalar(select(func.count()).select_from(Session)))
    return list(db.scalars(select(Session).options(selectinload(Session.threads))  # for threads_by_status
                           .order_by(Session.id).offset(offset).limit(limit)))


def active_threads(db: DBSession) -> int:
    """Threads on the server that have not ended (running, waiting for their rig, blocked or paused)."""
    return db.scalar(select(func.count()).select_from(Thread).where(Thread.status.not_in(ENDED_THREAD_STATUSES)))


def _idempotency_key(key: str | None) -> str | None:
    if key is not None and not (1 <= len(key) <= 200 and all(" " <= c <= "~" for c in key)):
        raise ValueError("give 1-200 printable ASCII characters, new for each session, e.g. a UUID")
    return key


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", json_schema_extra={"minLength": 1, "maxLength": 200, "pattern": r"^[\x20-\x7e]+$"},
    description="Any 1-200 printable ASCII characters, new for each session (e.g. a UUID): a repeat of the POST with "
    "it (a retry after a timeout) answers the session the first one created."), AfterValidator(_idempotency_key)]
SHARED_RIG_HEADERS = {WARNING_HEADER: {"description": "The rig's other active sessions, when it has some: it shows "
                                      "the images of each in turn.", "schema": {"type": "string"}}}


@router.post("", response_model=SessionWithThreads, status_code=status.HTTP_201_CREATED, responses={
    201: {"headers": SHARED_RIG_HEADERS},
    200: {"model": SessionWithThreads, "description": "A repeat of the POST that created this session (the same "
          "Idempotency-Key and body): nothing was created.", "headers": {
              REPLAYED_HEADER: {"description": "`true`", "schema": {"type": "string"}}, **SHARED_RIG_HEADERS}},
    409: {"model": ErrorDetail, "description": "The Idempotency-Key was sent before with another body."}})
def post_session(config: SessionConfig, db: DB, wake: Wake, cache: Generators, rig_channels: RigChannels,
                 settings: AppSettings, request: Request, response: Response,
                 idempotency_key: IdempotencyKey = None) -> SessionWithThreads:
    """Create a session and its threads once every check passes (``422`` naming each field otherwise).

    Threads are ``running`` when the session's rig is connected, else ``waiting_for_rig``. The header
    ``X-Actmax-Warning`` names the rig's other active sessions, if any (its images are shown in turn). A repeat with
    the ``Idempotency-Key`` and body of an earlier POST answers the session that one created (``200``).
    """
    engine = request.app.state.engine
    if idempotency_key is not None and (first := created_with(db, idempotency_key, config)) is not None:
        return replayed(db, first, response, engine)
    channels = rig_channels(config.rig)
    refuse(admission.check_session(config, cache, channels, active_threads(db), settings.max_active_threads))
    session = records.create_session(db, config)
    session.idempotency_key = idempotency_key
    if channels is None:
        for thread in session.threads:
            thread.status = ThreadStatus.WAITING_FOR_RIG
    try:
        db.commit()
    except IntegrityError:  # the same key's first POST, still at work when this one came, committed first
        db.rollback()
        if idempotency_key is None or (first := created_with(db, idempotency_key, config)) is None:
            raise
        return replayed(db, first, response, engine)
    wake()
    if (warning := shared_rig_warning(db, session)) is not None:
        response.headers[WARNING_HEADER] = warning
    return session_read(db, session, engine)


def created_with(db: DBSession, key: str, config: SessionConfig) -> Session | None:
    """The session a POST with ``key`` created, if any; a ``409`` if it was created from another config."""
    session = db.scalar(select(Session).where(Session.idempotency_key == key))
    if session is None:
        return None
    sent = config.model_dump(mode="json")
    stored = SessionConfig.stored(session.config_json).model_dump(mode="json")
    created = stored["threads"][:len(sent["threads"])]  # threads added since are not the POST's
    sent["threads"] = [thread if thread["seed"] is not None else {**thread, "seed": made["seed"]}  # drawn at creation
                       for thread, made in zip(sent["threads"], created)]
    if sent != {**stored, "threads": created}:
        raise HTTPException(status.HTTP_409_CONFLICT, f"this Idempotency-Key created session {session.id} "
                            f"{session.name!r} from another body; send a new key for a new session (or the first body "
                            "again for that session)")
    return session


def replayed(db: DBSession, session: Session, response: Response, engine) -> SessionWithThreads:
    """The answer to a repeated POST: the session it created, ``200``, marked replayed."""
    response.status_code = status.HTTP_200_OK
    response.headers[REPLAYED_HEADER] = "true"
    if (warning := shared_rig_warning(db, session)) is not None:
        response.headers[WARNING_HEADER] = warning
    return session_read(db, session, engine)


def shared_rig_warning(db: DBSession, session: Session) -> str | None:
    """What ``actmax session create`` warns of: the other active sessions on the session's rig (names escaped
    to ASCII, as a header must be)."""
    others = db.execute(select(Session.id, Session.name).where(
        Session.rig == session.rig, Session.status == SessionStatus.ACTIVE, Session.id != session.id,
    ).order_by(Session.id)).all()
    if not others:
        return None
    named = ", ".join(f"{id} {ascii(name)}" for id, name in others[:MAX_NAMED_SESSIONS])
    if len(others) > MAX_NAMED_SESSIONS:
        named += f" and {len(others) - MAX_NAMED_SESSIONS} more"
    return (f"rig {session.rig!r} already has active session(s) {named}: it shows the images of each in turn; "
            "`actmax session stop ID` stops one")


def session_read(db: DBSession, session: Session, engine) -> SessionWithThreads:
    """The session and its threads (each as ``GET /threads/{id}`` shows it), with its channel labels."""
    threads = [thread_read(thread, engine) for thread in session.threads]
    until = queries.last_presentation_time(db, session)  # what the rig said while it served the session
    return SessionWithThreads.model_validate(session).model_copy(
        update={"channel_labels": queries.rig_channel_labels(db, session.rig, until),
                "rig_setup": queries.rig_setup(db, session.rig, until), "threads": threads})


@router.get("/{session_id}", response_model=SessionWithThreads, responses=NOT_FOUND)
def get_session(session_id: Id, db: DB, request: Request) -> SessionWithThreads:
    """The session and its threads (each as ``GET /threads/{id}`` shows it)."""
    return session_read(db, get_or_404(db, Session, session_id), request.app.state.engine)


@router.post("/{session_id}/stop", response_model=SessionWithThreads, responses=NOT_FOUND)
def stop_session(session_id: Id, db: DB, wake: Wake, request: Request) -> SessionWithThreads:
    """Stop every thread that has not ended, and the session (``stopped``, final); idempotent: a session
    already stopped or finished is returned as it is."""
    session = get_or_404(db, Session, session_id)
    if session.status == SessionStatus.ACTIVE:
        records.stop_session(db, session)
        db.commit()
        wake()
    return session_read(db, session, request.app.state.engine)


@router.post("/{session_id}/pause", response_model=SessionWithThreads, responses={**NOT_FOUND, 409: {
    "model": ErrorDetail, "description": "The session has ended (stopped or finished)."}})
def pause_session(session_id: Id, db: DB, wake: Wake, request: Request, via: Via) -> SessionWithThreads:
    """Pause every running, waiting_for_rig or blocked thread, as ``POST /threads/{id}/pause`` does each; a thread
    added while every thread not ended is paused is created paused. Nothing to pause: the session unchanged."""
    session = get_or_404(db, Session, session_id)
    if session.status != SessionStatus.ACTIVE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot pause session {session_id}: it is "
                            f"{session.status.value}")
    move_threads(db, wake, session, LIVE_THREAD_STATUSES, ThreadStatus.PAUSED, via)
    return session_read(db, session, request.app.state.engine)


@router.post("/{session_id}/resume", response_model=SessionWithThreads, responses={**NOT_FOUND, 409: {
    "model": ErrorDetail, "description": "The session has ended (stopped or finished), a paused thread's generator's "
    "weights do not load now, or the image archive lost reference images that cannot be rebuilt: no thread is "
    "resumed."}})
def resume_session(session_id: Id, db: DB, wake: Wake, cache: Generators, archive: Archive,
                   request: Request, via: Via) -> SessionWithThreads:
    """Resume every paused thread, each checked as ``POST /threads/{id}/resume`` checks it (a ``409`` with the first
    reason resumes none). Nothing paused: the session unchanged. An ended session is a ``409``."""
    session = get_or_404(db, Session, session_id)
    if session.status == SessionStatus.STOPPED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot resume session {session_id}: it is stopped, "
                            "which is final; create a new session to go on")
    if session.status == SessionStatus.FINISHED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"cannot resume session {session_id}: it is finished (every "
                            "thread ended); `POST /threads/{id}/extend` goes on with a finished evolution, `POST "
                            "/threads/{id}/resume` with a failed thread once its cause is fixed")
    paused = [thread for thread in session.threads if thread.status == ThreadStatus.PAUSED]
    for thread in paused:
        _check_generator(thread, cache)
    if paused:
        _check_references(db, paused[0], archive)  # the session's references, the same for each of its threads
    move_threads(db, wake, session, frozenset({ThreadStatus.PAUSED}), ThreadStatus.RUNNING, via)
    return session_read(db, session, request.app.state.engine)


def move_threads(db: DBSession, wake: Callable[[], None], session: Session, allowed: frozenset[ThreadStatus],
                 target: ThreadStatus, via: str) -> None:
    """Move the session's threads in ``allowed`` to ``target`` (a conditional UPDATE, so a concurrent engine write
    cannot be lost), each with its ``thread.<target>`` event, as a thread's own action logs it; commit and wake."""
    values = {"status": target} if target != ThreadStatus.RUNNING else {"status": target, "last_error": None}
    moved = db.execute(update(Thread).where(Thread.session_id == session.id, Thread.status.in_(allowed))
                       .values(**values).returning(Thread.id, Thread.name)).all()
    if not moved:
        db.rollback()
        return
    for thread_id, name in sorted(moved):
        records.log_event(db, f"thread.{target.value}", f"thread {thread_id} {name!r} {target.value} via {via}",
                          thread_id=thread_id, session_id=session.id)
    db.commit()
    db.expire_all()  # the threads as the database now holds them
    wake()


@router.get("/{session_id}/threads", response_model=list[ThreadRead], responses=NOT_FOUND)
def list_session_threads(session_id: Id, db: DB, request: Request) -> list[ThreadRead]:
    return [thread_read(thread, request.app.state.engine) for thread in get_or_404(db, Session, session_id).threads]


@router.post("/{session_id}/threads", response_model=ThreadRead, status_code=status.HTTP_201_CREATED,
             responses={**NOT_FOUND, **CONFLICT})
def post_session_thread(session_id: Id, thread: ThreadConfig, db: DB, wake: Wake, cache: Generators,
                        rig_channels: RigChannels, settings: AppSettings, via: Via) -> Thread:
    """Add a thread (e.g. a Manifold map around a finished evolution), checked like a new session's.

    A ``finished`` session becomes ``active`` again; a ``stopped`` one is a ``409``. While every thread of the
    session not ended is paused (``POST /sessions/{id}/pause``), the thread is created paused too.
    """
    session = get_or_404(db, Session, session_id)
    if session.status == SessionStatus.STOPPED:
        raise HTTPException(status.HTTP_409_CONFLICT, f"session {session_id} is stopped; threads can only be added "
                            "to an active or finished session")
    going_on = [t.status for t in session.threads if t.status not in ENDED_THREAD_STATUSES]
    paused = bool(going_on) and all(s == ThreadStatus.PAUSED for s in going_on)
    channels = rig_channels(session.rig)
    totals = {t.name: t.n_generations for t in session.threads}  # an extended evolution makes more codes
    stored = [t.model_copy(update={"n_generations": totals.get(t.name, t.n_generations)})
              for t in SessionConfig.stored(session.config_json).threads]
    refuse(admission.check_capacity(active_threads(db), 1, settings.max_active_threads))
    refuse(admission.check_thread(thread, cache, session.rig, channels, session_threads=stored))
    try:
        row = records.add_thread(db, session, thread)
    except ValidationError as error:
        db.rollback()
        raise HTTPException(422, [{"type": "value_error", "loc": ["body"], "msg": problem_message(problem)}
                                  for problem in error.errors()]) from None
    if paused:
        row.status = ThreadStatus.PAUSED
        records.log_event(db, "thread.paused", f"thread {row.id} {row.name!r} paused via {via}: added while every "
                          f"thread of session {session_id} is paused; `POST /sessions/{session_id}/resume` resumes "
                          "them all", thread_id=row.id, session_id=session_id)
    elif channels is None:
        row.status = ThreadStatus.WAITING_FOR_RIG
    db.commit()
    wake()
    return row


@router.post("/{session_id}/notes", response_model=EventRead, status_code=status.HTTP_201_CREATED,
             responses=NOT_FOUND)
def post_session_note(session_id: Id, note: NoteCreate, db: DB) -> Event:
    """Add a note to the session's record (a ``session.note`` event; e.g. "animal broke fixation"), about a thread
    and some of its generations if given; to a session in any status, an ended one too."""
    session = get_or_404(db, Session, session_id)
    about = ""
    if note.thread_id is not None:
        thread = session_thread(session, note.thread_id, ("body", "thread_id"))
        if note.generations is not None:
            first, last = note.generations
            check_generations(thread, last)
            span = f"generation {first}" if first == last else f"generations {first}-{last}"
            about = f" (thread {thread.id} {thread.name!r}, {span})"
        else:
            about = f" (thread {thread.id} {thread.name!r})"
    event_id = records.log_event(db, "session.note", f"note: {note.text}{about}", session_id=session_id,
                                 thread_id=note.thread_id, data=note.model_dump(mode="json"))
    db.commit()
    return db.get(Event, event_id)


def session_thread(session: Session, thread_id: int, loc: tuple[str, ...]) -> Thread:
    """The session's thread ``thread_id``, or a ``422`` at ``loc`` naming the session's threads."""
    for thread in session.threads:
        if thread.id == thread_id:
            return thread
    threads = ", ".join(f"{thread.id} {thread.name!r}" for thread in session.threads)
    raise HTTPException(422, [{"type": "value_error", "loc": list(loc),
                               "msg": f"thread {thread_id} is not a thread of session {session.id}; its threads: "
                                      f"{threads}"}])


@router.get("/{session_id}/events", response_model=Page[EventRead], responses=NOT_FOUND)
def list_session_events(
    session_id: Id,
    db: DB,
    offset: Offset = 0,
    limit: Limit = 100,
    kind: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]] | None, Query(
        max_length=50, description="Only events of this kind (exact, e.g. `generation.completed`); repeat it for "
        "several kinds. A kind the server never logs is a `422`.")] = None,
    thread_id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Only this thread's events.")] = None,
) -> Page[EventRead]:
    """The session's event log, oldest first; ``kind`` and ``thread_id`` keep only some of it (a kind the server
    never logs, or a ``thread_id`` not of this session, is a ``422``)."""
    session = get_or_404(db, Session, session_id)
    query = select(Event).where(Event.session_id == session_id)
    if kind:
        check_kinds(kind)
        query = query.where(Event.kind.in_(kind))
    if thread_id is not None:
        session_thread(session, thread_id, ("query", "thread_id"))
        query = query.where(Event.thread_id == thread_id)
    return paginate(db, query, Event.id, EventRead, offset, limit)


def check_kinds(kinds: list[str]) -> None:
    """A ``422`` naming each kind the server never logs (``EVENT_KINDS``), with the closest one: a typo would
    answer an empty page, as if no such event had happened."""
    problems = []
    for kind in kinds:
        if kind in EVENT_KINDS:
            continue
        if kind in LIVE_NOTICES:
            hint = "it is a live notice, not logged: `GET /live` sends it"
        elif close := difflib.get_close_matches(kind.lower(), EVENT_KINDS, n=1):
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = f"the kinds: {', '.join(EVENT_KINDS)}"
        problems.append({"type": "value_error", "loc": ["query", "kind"],
                         "msg": f"{kind!r} is no kind of event the server logs; {hint}"})
    if problems:
        raise HTTPException(422, problems)
