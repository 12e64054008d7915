"""The engine's record of a thread's life reads true: a refusal stops being the thread's ``last_error`` once it
moves on (and never replaces the reason an ended thread ended with), a thread paused at a server restart
gets its restart event at the restart, not when a user resumes it, and a thread created waiting for a rig whose
name is close to a connected rig's gets the warning, not a ``thread.started``."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import select

from rig_client.client import Presentation, RigClient
from rig_client.protocol import ProtocolError
from server.main import create_app
from server.store.models import Event, Thread, ThreadStatus
from tests.server.test_end_to_end import wait_until
from tests.server.conftest import served
from tests.server.test_engine import RIG, LiveEngine, answer


def last_error(live, thread_id: int) -> str | None:
    with live.sessions() as db:
        return db.get(Thread, thread_id).last_error


def events(live, thread_id: int, after: int = 0) -> list[tuple[int, str, str, dict | None]]:
    with live.sessions() as db:
        return db.execute(select(Event.id, Event.kind, Event.message, Event.data_json)
                          .where(Event.thread_id == thread_id, Event.id > after).order_by(Event.id)).all()


def refuse(rig: RigClient, batch) -> None:
    """RESULTS the server refuses (``bad_field``: a stimulus not in the batch)."""
    with pytest.raises(ProtocolError, match="not part of batch"):
        rig.send_results(batch.batch_id, [Presentation("no-such-stimulus", [1.0], time.time(),
                                                       batch.response_window_ms)]).result(30)


def test_a_refusal_is_the_last_error_until_the_thread_moves_on_and_an_ended_thread_keeps_none(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create(n_generations=2)
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
            refuse(rig, first)
            assert "refused (bad_field)" in last_error(live, thread_id)  # while its round is out
            rig.send_results(first.batch_id, answer(first)).result(30)
            second = rig.next_batch(timeout=60)
            assert second.generation == 1
            wait_until(lambda: last_error(live, thread_id) is None, 30, "the refusal to pass with the next round")
            refuse(rig, second)
            rig.send_results(second.batch_id, answer(second)).result(30)
            wait_until(lambda: (t := live.sessions().get(Thread, thread_id)).status == ThreadStatus.FINISHED
                       and t.last_error is None, 30, "the thread to finish without an error")
            refuse(rig, second)  # a late file after the end: an event, not the finished thread's error
        assert last_error(live, thread_id) is None
        late = [message for _, kind, message, _ in events(live, thread_id) if kind == "results.refused"][-1]
        assert f"thread {thread_id} 'a' (finished): RESULTS from rig '{RIG}'" in late


def test_a_thread_paused_at_a_restart_gets_its_restart_event_at_the_restart(tmp_path, endpoint):
    """Paused with generation 1 out when the server stops; resumed by its user after the restart: the
    timeline says it was taken up paused at the restart, and the resume is a plain start."""
    with LiveEngine(tmp_path, endpoint) as live:
        thread_id = live.create()
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            first = rig.next_batch(timeout=60)
            rig.send_results(first.batch_id, answer(first)).result(30)
            second = rig.next_batch(timeout=60)
            refuse(rig, second)  # its last_error when the server stops
        with live.sessions.begin() as db:
            db.get(Thread, thread_id).status = ThreadStatus.PAUSED
        before = events(live, thread_id)[-1][0]
    with LiveEngine(tmp_path, endpoint) as live:
        (_, kind, message, data), = wait_until(lambda: events(live, thread_id, before), 30, "the restart event")
        assert (kind, data) == ("thread.resumed", {"generation": 1, "pending": True, "batch_id": None,
                                                   "resent": False, "paused": True})
        assert message == (f"thread {thread_id} 'a' taken up paused after a server restart at generation 1 "
                           "(pending): it goes on once resumed")
        time.sleep(1.5)  # reconciles pass: nothing more is logged while it stays paused
        assert len(events(live, thread_id, before)) == 1
        resumed = events(live, thread_id)[-1][0]
        with live.sessions.begin() as db:  # as POST /threads/{id}/resume does, but for the event and last_error
            db.get(Thread, thread_id).status = ThreadStatus.RUNNING
        live.engine.wake()
        wait_until(lambda: live.sessions().get(Thread, thread_id).status == ThreadStatus.WAITING_FOR_RIG, 30,
                   "the thread to wait for its rig")  # before the rig's HELLO: else it never waits
        with RigClient(live.settings.zmq_endpoint, RIG, channels=1) as rig:
            again = rig.next_batch(timeout=60)
            assert (again.batch_id, again.generation) == (second.batch_id, 1)  # its batch, sent again
            rig.send_results(again.batch_id, answer(again)).result(30)
            assert rig.next_batch(timeout=60).generation == 2
            wait_until(lambda: last_error(live, thread_id) is None, 30, "the old refusal to pass")
        # Resumed before its rig connected (thread.runtime, logged at every build of the thread, aside).
        kinds = [kind for _, kind, _, _ in events(live, thread_id, resumed) if kind != "thread.runtime"]
        # (its batch, resent on the rig's HELLO, may be answered before the reconcile that logs thread.running)
        assert kinds[0] == "thread.waiting_for_rig" and "thread.running" in kinds and "thread.resumed" not in kinds


def post_session(url: str, rig: str) -> int:
    """``POST /sessions`` (one thread) over real HTTP; the id of its thread, created waiting for ``rig``."""
    body = {"name": "typo", "rig": rig, "references": {"source": "skimage", "count": 2},
            "threads": [{"name": "a", "generator": "dcgan-faces", "optimizer": "cma",
                         "optimizer_params": {"population": 6}, "objective": {"channels": [0]}, "seed": 3}]}
    response = httpx.post(f"{url}/sessions", json=body, headers={"Authorization": "Bearer t"}, timeout=60)
    assert response.status_code == 201, response.text
    (thread,) = response.json()["threads"]
    assert thread["status"] == "waiting_for_rig"
    return thread["id"]


def waits(live, thread_id: int) -> list[tuple[str, str]]:
    """The thread's ``thread.waiting_for_rig`` events: (level, message)."""
    with live.sessions() as db:
        return db.execute(select(Event.level, Event.message).where(
            Event.thread_id == thread_id, Event.kind == "thread.waiting_for_rig").order_by(Event.id)).all()


def test_a_session_created_for_a_rig_name_close_to_a_connected_ones_warns_once_and_does_not_start(tmp_path, endpoint):
    """The route creates the thread already waiting (no transition for the engine to see): taking it up, the
    engine warns, as an event and the thread's last_error, which the thread's first round clears once its rig
    connects. No ``thread.started`` is logged for the thread that waits: ``thread.running`` when its rig connects."""
    with LiveEngine(tmp_path, endpoint) as live, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url, \
            RigClient(live.settings.zmq_endpoint, "rig-A", channels=2):
        wait_until(lambda: "rig-A" in live.engine.rig_channels, 30, "rig-A to connect")
        thread_id = post_session(url, "rig-a")
        ((level, message),) = wait_until(lambda: waits(live, thread_id), 30, "the warning")
        reason = ("waiting for rig 'rig-a', which is not connected; connected: 'rig-A'. Rig names are exact and "
                  "case-sensitive: is the session's rig name right?")
        assert (level, message) == ("warning", f"thread {thread_id} 'a' waiting_for_rig: {reason}")
        assert last_error(live, thread_id) == reason
        time.sleep(1.5)  # reconciles pass: it is said once
        assert len(waits(live, thread_id)) == 1
        with RigClient(live.settings.zmq_endpoint, "rig-a", channels=1) as rig:
            first = rig.next_batch(timeout=60)
            rig.send_results(first.batch_id, answer(first)).result(30)
            wait_until(lambda: last_error(live, thread_id) is None, 30, "the warning to pass with its first round")
        kinds = [kind for _, kind, _, _ in events(live, thread_id)]
        assert "thread.running" in kinds and "thread.started" not in kinds


def test_a_waiting_thread_is_warned_when_a_rig_with_a_close_name_connects(tmp_path, endpoint):
    with LiveEngine(tmp_path, endpoint) as live, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url:
        thread_id = post_session(url, "RIG-A")
        assert wait_until(lambda: waits(live, thread_id), 30, "the wait") == [
            ("info", f"thread {thread_id} 'a' waiting_for_rig: waiting for rig 'RIG-A' to connect")]
        assert last_error(live, thread_id) is None
        with RigClient(live.settings.zmq_endpoint, "rig-A", channels=2):
            level, message = wait_until(lambda: waits(live, thread_id)[1:], 30, "the warning")[0]
        assert level == "warning" and "connected: 'rig-A'" in message and message.endswith(last_error(live, thread_id))
        assert "thread.started" not in [kind for _, kind, _, _ in events(live, thread_id)]
