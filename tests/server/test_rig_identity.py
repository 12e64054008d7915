"""Which rig answers a thread, told in its session: a second program under a live rig name, a rig that drops
out (its sessions are told, its name is not called a typo), rigs reconnecting after a server restart, a rig
with too few channels; and what a stop or a full disk leaves behind.

The engine runs in-process over a real ZeroMQ transport and a real SQLite file, with `RigClient` as the rig.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import time

import httpx
import pytest
from sqlalchemy import select

from rig_client.client import RigClient
from rig_client import RigError
from server.main import create_app
from server.store.models import Event, Thread, ThreadStatus
from tests.server.conftest import served
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_faults import read_only, wait_archived
from tests.server.test_thread_record import last_error


@pytest.fixture
def live(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as engine:
        yield engine


def status_of(live, thread_id: int) -> ThreadStatus:
    with live.sessions() as db:
        return db.get(Thread, thread_id).status


def rig_events(live, kind: str) -> list[tuple[int | None, str, str, dict]]:
    """(session, level, message, data) of each ``kind`` event."""
    with live.sessions() as db:
        return db.execute(select(Event.session_id, Event.level, Event.message, Event.data_json)
                          .where(Event.kind == kind).order_by(Event.id)).all()


def kinds_of(live, thread_id: int, after: int = 0) -> list[str]:
    with live.sessions() as db:
        return db.scalars(select(Event.kind).where(Event.thread_id == thread_id, Event.id > after)
                          .order_by(Event.id)).all()


def session_of(live, thread_id: int) -> int:
    with live.sessions() as db:
        return db.get(Thread, thread_id).session_id


def test_a_second_program_under_a_live_rig_name_is_a_warning_of_the_session_and_gets_no_blocked_batch(live):
    """The first program runs the thread (channel 1 of 2) when a 1-channel program says HELLO under its name: the
    session gets a ``rig.replaced`` warning naming the new connection's channels, the thread is blocked, and the
    batch the first program was showing is not sent to the second (which cannot score it)."""
    thread_id = live.create(objective={"channels": [1]})
    session_id = session_of(live, thread_id)
    with RigClient(live.settings.zmq_endpoint, RIG, channels=2) as first:
        assert first.next_batch(timeout=60).generation == 0
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as second:
            assert second.wait_connected(30)
            with pytest.raises(RigError, match="replaced"):
                first.next_batch(timeout=30)
            wait_until(lambda: status_of(live, thread_id) == ThreadStatus.BLOCKED, 30, "the thread to block")
            assert second.next_batch(timeout=2.0) is None  # past the reconcile that blocked it: nothing was resent
            ((session, level, message, data),) = wait_until(lambda: rig_events(live, "rig.replaced"), 30, "the event")
            assert (session, level, data["rig"], data["channels"]) == (session_id, "warning", RIG, 1)
            assert message.startswith(f"rig {RIG!r} replaced: a new connection said HELLO as {RIG!r} (1 channels)")


def test_a_rig_reconnecting_is_no_replacement(live):
    """A program that went away and came back (its old connection silent) is a reconnect, not a warning."""
    thread_id = live.create()
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        first = rig.next_batch(timeout=60)
    time.sleep(1.5)  # longer than two heartbeats (0.5 s): the old connection is silent
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        assert rig.next_batch(timeout=60).batch_id == first.batch_id
    assert rig_events(live, "rig.replaced") == []
    assert status_of(live, thread_id) in (ThreadStatus.RUNNING, ThreadStatus.WAITING_FOR_RIG)


def test_a_rig_lost_is_an_event_of_a_session_whose_thread_it_blocked(live):
    """The blocked thread has no runtime; its session still hears that its rig went silent."""
    thread_id = live.create(objective={"channels": [1]})
    with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
        assert rig.wait_connected(30)
        wait_until(lambda: status_of(live, thread_id) == ThreadStatus.BLOCKED, 30, "the thread to block")
    lost = wait_until(lambda: rig_events(live, "rig.lost"), 30, "the server to see the rig leave")
    assert [(session, level) for session, level, _, _ in lost] == [(session_of(live, thread_id), "warning")]


def test_a_rig_that_dropped_out_is_waited_for_without_doubting_its_name(live):
    """rig-A and rig-B (close names) are connected; rig-B goes silent: its thread waits for it, and the message
    says it went silent instead of asking whether the session's rig name is right."""
    with RigClient(live.settings.zmq_endpoint, "rig-A", channels=1) as other:
        with RigClient(live.settings.zmq_endpoint, "rig-B", channels=1) as rig:
            assert other.wait_connected(30) and rig.wait_connected(30)
            thread_id = live.create(session={"rig": "rig-B"})
            rig.next_batch(timeout=60)
        wait_until(lambda: status_of(live, thread_id) == ThreadStatus.WAITING_FOR_RIG, 30, "the thread to wait")
        with live.sessions() as db:
            waits = db.execute(select(Event.level, Event.message).where(
                Event.thread_id == thread_id, Event.kind == "thread.waiting_for_rig")).all()
    assert waits == [("info", f"thread {thread_id} 'a' waiting_for_rig: waiting for rig 'rig-B' to connect again: "
                              "it went silent")]
    assert last_error(live, thread_id) is None


def test_a_rig_name_warning_passes_once_the_rig_is_back_before_it_answers(tmp_path, endpoint):
    """After a restart rig-B has not connected yet (rig-A has): the thread's last_error doubts its rig name. Once
    rig-B is back and its batch resent, the thread runs and that last_error is gone, before any answer."""
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create(session={"rig": "rig-B"})
        with RigClient(live.settings.zmq_endpoint, "rig-B", channels=1) as rig:
            first = rig.next_batch(timeout=60)
    with LiveEngine(tmp_path, endpoint) as live, RigClient(endpoint, "rig-A", channels=1):
        doubt = wait_until(lambda: last_error(live, thread_id), 30, "the rig name warning")
        assert "is the session's rig name right?" in doubt
        with RigClient(endpoint, "rig-B", channels=1) as rig:
            assert rig.next_batch(timeout=60).batch_id == first.batch_id
            wait_until(lambda: last_error(live, thread_id) is None, 30, "the warning to pass")
            assert status_of(live, thread_id) == ThreadStatus.RUNNING


def test_a_restart_does_not_mark_threads_waiting_while_their_rig_reconnects(tmp_path, endpoint):
    """The rig says HELLO only after the restarted engine took its thread up: within one liveness period of the
    start, so the thread is resumed and runs, without a waiting_for_rig in between."""
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create()
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
    with live.sessions() as db:  # the first server has stopped: every event it logs is in
        before = db.scalar(select(Event.id).order_by(Event.id.desc()).limit(1))
    with LiveEngine(tmp_path, endpoint) as live:
        wait_until(lambda: "thread.resumed" in kinds_of(live, thread_id, before), 30, "the thread taken up")
        with RigClient(endpoint, RIG, channels=1) as rig:
            assert rig.next_batch(timeout=60).batch_id == first.batch_id
        kinds = kinds_of(live, thread_id, before)
    assert "thread.waiting_for_rig" not in kinds and "thread.running" not in kinds


def test_a_thread_stalled_on_storage_shows_it_over_rest_even_if_the_database_lacks_it(tmp_path, endpoint):
    """The archive is unwritable: the engine holds the thread stalled. Its stored last_error is then lost (as when
    the database is full too): GET /threads/{id} still says what is wrong."""
    with LiveEngine(tmp_path, endpoint) as live, RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url:
        thread_id = live.create()
        first = rig.next_batch(timeout=60)
        wait_archived(live)
        with read_only(tmp_path / "images"):
            rig.send_results(first.batch_id, answer(first)).result(30)
            second = rig.next_batch(timeout=60)  # sent from memory; its archive writes fail
            rig.send_results(second.batch_id, answer(second)).result(30)  # its tell awaits them
            wait_until(lambda: live.engine.stall_of(thread_id), 30, "the thread to stall")
            with live.sessions.begin() as db:
                db.get(Thread, thread_id).last_error = None
            thread = httpx.get(f"{url}/threads/{thread_id}", headers={"Authorization": "Bearer t"}, timeout=30).json()
            assert thread["status"] == "running"
            assert thread["last_error"] == live.engine.stall_of(thread_id)
            assert thread["last_error"].startswith("storage failed: ")


def test_a_stop_while_a_results_is_stored_leaves_the_thread_as_it_was(tmp_path, endpoint, caplog):
    """The RESULTS that answers a round waits for the database (another writer holds it) when the server stops:
    the step it completes, which the stop cannot cancel, ends without a traceback and without failing the thread
    (it renders the next generation in chunks of 2 images, each a job for the workers the stop shut down)."""
    caplog.set_level(logging.DEBUG)
    live = LiveEngine(tmp_path, endpoint, render_chunk=2)
    try:
        thread_id = live.create()
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
            writer = sqlite3.connect(live.settings.data_dir / "actmax.sqlite", isolation_level=None)
            writer.execute("BEGIN IMMEDIATE")  # the step's transaction waits for it (busy_timeout)
            try:
                rig.send_results(first.batch_id, answer(first))
                time.sleep(1.0)  # the RESULTS reaches the engine, whose step waits for the database
                closing = asyncio.run_coroutine_threadsafe(live.engine.close(), live.loop)
                wait_until(lambda: live.engine._closed, 30, "the stop to begin")
                time.sleep(0.5)
            finally:
                writer.rollback()
                writer.close()
            closing.result(60)
            time.sleep(1.0)  # what the step spawned meanwhile runs
            gc.collect()  # an unretrieved task exception is logged when its task is collected
    finally:
        live.close()
    gc.collect()
    assert status_of(live, thread_id) != ThreadStatus.FAILED
    assert "thread.failed" not in kinds_of(live, thread_id)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
