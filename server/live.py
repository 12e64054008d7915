"""Live events for dashboards: an in-process broadcaster that never makes the engine wait.

Every event row written through ``server.store.records.log_event`` is published here once its
transaction commits (rolled-back events are never seen), plus a few transient notices that are not
worth a database row (a batch sent, a batch answered) via `publish`. The engine holds a step's items
(`hold`) and publishes them once the step's BATCH is out, so a dashboard's stream, and the requests
it makes on seeing them, never run in the rig's wait. Each subscriber owns a bounded
queue: when a slow browser falls behind, its oldest items are dropped and counted, so publishing is
O(subscribers) and never blocks. Publishing is thread-safe (the engine writes from its worker thread).
When the server stops, `Hub.end_streams` ends every open stream, so none holds its shutdown.

An event's item carries its row's ``id``, and the stream (``server/api/routes/live.py``) sends the row itself, read
back from the database: its time is the stored one, and the stream sends events in id order with none left out,
whatever order their items were published in (a step's held items come after later commits).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session as DBSession

from analysis.serialization import json_safe
from server.store.db import DriverTransaction, Transaction

QUEUE_SIZE = 1000  # items a subscriber may lag behind before its oldest are dropped
MAX_SUBSCRIBERS = 64  # open streams per server process
_TIME = TypeAdapter(datetime)  # a time as REST writes it (``2026-01-01T08:14:07.839158Z``)


class Subscription:
    """One live stream's bounded queue; `get` waits for the next batch of items until `end`."""

    def __init__(self, hub: Hub, session_id: int | None, size: int):
        self._hub = hub
        self.session_id = session_id
        self._items: deque[dict] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.dropped = 0
        self.ended = False

    def _offer(self, item: dict) -> None:
        if self.session_id is not None and item.get("session_id") not in (None, self.session_id):
            return
        with self._lock:
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
        self._wake()

    async def get(self, timeout: float) -> list[dict]:
        """Every item queued now, waiting up to ``timeout`` s for one; [] on timeout."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return []
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._ready.clear()
        return items

    def end(self) -> None:
        """Set ``ended`` and wake `get` (from any thread): the stream ends after what is queued."""
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the stream's event loop is gone; close() follows
            pass

    def close(self) -> None:
        self._hub._remove(self)


class Hub:
    """Fan-out of live items to subscriptions (one per open dashboard stream)."""

    def __init__(self, queue_size: int = QUEUE_SIZE, max_subscribers: int = MAX_SUBSCRIBERS):
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def subscribe(self, session_id: int | None = None) -> Subscription:
        """A new subscription (call from the event loop that will read it); ``ValueError`` when full."""
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                raise ValueError(f"{self.max_subscribers} live streams are open already; close one and retry")
            subscription = Subscription(self, session_id, self.queue_size)
            self._subscribers.append(subscription)
            return subscription

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def end_streams(self) -> None:
        """End every open stream (the server is stopping)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.end()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, message: str = "", *, level: str = "info", session_id: int | None = None,
                thread_id: int | None = None, data: dict[str, Any] | None = None, event_id: int | None = None) -> None:
        """Hand one item to every subscriber now (never blocks; cheap when nobody listens). ``seq`` numbers the
        items of this process; an event's ``id`` (also ``event_id``, the name older readers use) is its row's,
        whose stored ``time`` the stream reads with it; a notice (no row) has the time it is published."""
        if not self._subscribers:
            return
        item = {
            "seq": next(self._seq), "id": event_id, "event_id": event_id,
            "time": None if event_id is not None else _TIME.dump_python(datetime.now(UTC), mode="json"),
            "kind": kind, "level": str(level), "message": message,
            "session_id": session_id, "thread_id": thread_id, "data": json_safe(data or {}),
        }
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription._offer(item)


hub = Hub()  # the process's broadcaster: `actmax serve` runs one engine and one API


def publish_on_commit(db: Transaction, item: dict[str, Any]) -> None:
    """Publish ``item`` (``Hub.publish``'s keyword arguments for an event row added to ``db``) when ``db`` commits."""
    staged = db.info.get("live_events")
    if staged is None:
        staged = db.info["live_events"] = []
        if isinstance(db, DriverTransaction):  # one transaction: nothing is published if it rolls back
            db.on_commit(functools.partial(_publish_staged, db))
        else:
            sa_event.listen(db, "after_commit", _publish_staged)
            sa_event.listen(db, "after_rollback", _discard_staged)
    staged.append(item)


def hold(db: Transaction, held: list[dict[str, Any]]) -> None:
    """Collect what ``db`` publishes when it commits in ``held`` instead; `publish_held` publishes it later."""
    db.info["live_held"] = held


def publish_held(held: list[dict[str, Any]]) -> None:
    """Publish (``Hub.publish``'s keyword arguments) in order, and empty ``held``."""
    for item in held:
        hub.publish(**item)
    held.clear()


def _publish_staged(db: Transaction) -> None:
    staged, held = db.info["live_events"], db.info.get("live_held")
    if held is None:
        publish_held(staged)
    else:
        held.extend(staged)
        staged.clear()


def _discard_staged(db: DBSession) -> None:
    db.info["live_events"].clear()
