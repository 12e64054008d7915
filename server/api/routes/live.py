"""The live stream: Server-Sent Events of what happens (events, batches), for dashboards.

Read it with ``fetch`` and the ``Authorization`` header (the browser's ``EventSource`` cannot send
one). Each message is ``event: <kind>`` with a JSON ``data`` line (see ``server.live.Hub.publish``);
an event's message has an ``id: <event id>`` line too, and its data is the row as ``GET
/sessions/{id}/events`` returns it, read back from the database when its live item arrives: events go out
in id order, none left out, so a reader that sends ``Last-Event-ID`` when it reconnects gets the events
after that one first (from the database), then the live ones, and loses and repeats none. A ``dropped``
message says this reader fell behind and lost items (reload over REST); a comment line every
``KEEPALIVE_S`` keeps proxies from closing an idle stream. The stream ends when the server stops, or when
the database fails (the reader reconnects with its ``Last-Event-ID``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from server import live
from server.api.deps import MAX_ID
from server.api.schemas import ErrorDetail, EventRead
from server.store.models import Event, Session

router = APIRouter(tags=["live"])
log = logging.getLogger(__name__)
KEEPALIVE_S = 15.0
PAGE = 500  # events read from the database at once


def _message(kind: str, data: dict) -> str:
    """One SSE message; an event's ends with its ``id:`` line (after ``data:``: readers that take the line after
    ``event:`` for the data still do)."""
    event_id = f"id: {data['id']}\n" if data.get("id") is not None else ""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n{event_id}\n"


def _newest(sessions) -> int:
    """The id of the newest event (0 without any)."""
    with sessions() as db:
        return db.scalar(select(func.max(Event.id))) or 0


def _session_exists(sessions, session_id: int) -> bool:
    with sessions() as db:
        return db.get(Session, session_id) is not None


def _events(sessions, session_id: int | None, after: int, upto: int) -> list[dict]:
    """The first ``PAGE`` events with ``after < id <= upto`` (of ``session_id`` and of none, as the stream
    filters them), in id order, as REST returns them."""
    query = select(Event).where(Event.id > after, Event.id <= upto).order_by(Event.id).limit(PAGE)
    if session_id is not None:
        query = query.where(or_(Event.session_id == session_id, Event.session_id.is_(None)))
    with sessions() as db:
        return [EventRead.model_validate(event).model_dump(mode="json") for event in db.scalars(query)]


async def _events_between(sessions, session_id: int | None, after: int, upto: int) -> AsyncIterator[dict]:
    """``_events`` page by page, each read in a worker thread."""
    while after < upto:
        page = await run_in_threadpool(_events, sessions, session_id, after, upto)
        for event in page:
            yield event
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


def _item(event: dict, seq: int | None) -> dict:
    """An event row as a stream item: ``seq`` (null when no live item brought it) and ``event_id`` besides."""
    return {"seq": seq, **event, "event_id": event["id"]}


@router.get("/live", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 404: {"model": ErrorDetail},
                       503: {"model": ErrorDetail}})
async def live_stream(
    request: Request,
    session_id: int | None = Query(None, ge=0, le=MAX_ID,
                                   description="Only this session's items (and those of no session)."),
    last_event_id: int | None = Header(
        None, alias="Last-Event-ID", ge=0, le=MAX_ID,
        description="The id of the last event this reader has (an SSE client sends it when it reconnects): "
        "the events after it come first."),
):
    """Server-Sent Events: generation completed, batch sent/answered, rig connected/lost, warnings."""
    sessions = request.app.state.sessionmaker
    if session_id is not None and not await run_in_threadpool(_session_exists, sessions, session_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"session {session_id} not found")
    try:
        subscription = live.hub.subscribe(session_id)
    except ValueError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None
    try:  # after subscribing: an event committed from here on has a live item, and the ones before are read here
        newest = await run_in_threadpool(_newest, sessions)
    except BaseException:  # a failed read (503) or a cancelled request
        subscription.close()
        raise

    async def stream() -> AsyncIterator[str]:
        # The reader has the events up to this id (a Last-Event-ID past the newest one is of another database).
        sent = newest if last_event_id is None else min(last_event_id, newest)
        dropped = 0
        try:
            yield ": connected\n\n"
            async for event in _events_between(sessions, session_id, sent, newest):
                yield _message(event["kind"], _item(event, None))
            sent = newest
            while not subscription.ended:
                items = await subscription.get(KEEPALIVE_S)
                if subscription.dropped != dropped:
                    dropped = subscription.dropped
                    yield _message("dropped", {"dropped": dropped})
                if not items:
                    yield ": keepalive\n\n"
                upto = max((item["id"] for item in items if item["id"] is not None), default=sent)
                events = deque([event async for event in _events_between(sessions, session_id, sent, upto)])
                for item in items:  # each event once, in id order: those up to an item's own id come with it
                    if item["id"] is None:
                        yield _message(item["kind"], item)
                        continue
                    while events and events[0]["id"] <= item["id"]:
                        event = events.popleft()
                        yield _message(event["kind"], _item(event, item["seq"] if event["id"] == item["id"] else None))
                sent = max(sent, upto)
        except (SQLAlchemyError, sqlite3.Error, OSError) as error:
            log.warning("live stream ended: the database failed (%s); its reader reconnects with Last-Event-ID", error)
        finally:
            subscription.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
