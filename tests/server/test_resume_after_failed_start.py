"""A thread that failed as the server's start took it up, resumed by a user later, is said to start, not to resume
after a restart: the engine in-process over a real ZeroMQ transport, a real SQLite file and real HTTP, `RigClient` as
the rig, and a weights file that breaks while the server is down."""

from __future__ import annotations

import shutil

import httpx
from sqlalchemy import select

from generators.dcgan import packaged_weights
from rig_client.client import RigClient
from server.main import create_app
from server.store.models import Event, ThreadStatus
from tests.server.conftest import served
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_reconnect import thread_status


def test_a_users_resume_of_a_thread_that_failed_at_the_servers_start_is_no_restart(tmp_path, endpoint):
    weights = tmp_path / "weights.tar"
    shutil.copy(packaged_weights(), weights)
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig:
        thread_id = live.create(weights=str(weights))
        first = rig.next_batch(timeout=60)
        rig.send_results(first.batch_id, answer(first)).result(30)
        pending = rig.next_batch(timeout=60)
    weights.write_bytes(b"not a checkpoint")  # broken while the server is down
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url:
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FAILED, 30, "the thread to fail at start")
        shutil.copy(packaged_weights(), weights)
        assert rig.wait_connected(30)
        resumed = httpx.post(f"{url}/threads/{thread_id}/resume", headers={"Authorization": "Bearer t"}, timeout=30)
        assert resumed.status_code == 200, resumed.text
        assert rig.next_batch(timeout=60).batch_id == pending.batch_id  # the thread goes on where it was
        with live.sessions() as db:
            events = db.execute(select(Event.kind, Event.message).where(Event.thread_id == thread_id)
                                .order_by(Event.id)).all()
    failed = [kind for kind, _ in events].index("thread.failed")
    starts = [(kind, message) for kind, message in events[failed:] if kind in ("thread.started", "thread.resumed")]
    assert starts == [("thread.started", f"thread {thread_id} 'a' started from generation 1")], events
