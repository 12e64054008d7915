"""Another program holds the database's write lock (an sqlite3 shell's ``BEGIN EXCLUSIVE``, DB Browser for SQLite) for
longer than the busy timeout: a storage stall like a full disk, never a failed thread. The engine runs in-process over
a real ZeroMQ transport, a real SQLite file and real HTTP, with `RigClient` as the rig and a second sqlite3
connection as the other program."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from rig_client.client import RigClient
from server import engine
from server.main import create_app
from server.settings import Settings
from server.store import db
from server.store.models import Event, Presentation, Thread, ThreadStatus
from tests.server.conftest import served
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_reconnect import thread_status

LOCKED = "is locked by another program (an sqlite3 shell, DB Browser for SQLite?): close it"


def test_a_database_another_program_holds_locked_stalls_the_thread_until_it_lets_go(tmp_path, endpoint, monkeypatch,
                                                                                     caplog):
    """While locked: the thread stays running, its last_error and /health say the database is locked and by what, and
    the rig's RESULTS are answered ``internal`` (it keeps and resends them). Once the lock goes, the thread goes on by
    itself: every presentation is stored once, and the log has no traceback (before, the thread failed, or was rebuilt
    without a word, and the handler's failure was logged with two chained tracebacks)."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300)  # a write waits this long for the other program (10 s in use)
    caplog.set_level(logging.INFO)
    with LiveEngine(tmp_path, endpoint) as live, RigClient(endpoint, RIG, channels=1, reconnect_max_s=1.0) as rig, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url:
        thread_id = live.create(n_generations=3)
        first = rig.next_batch(timeout=60)
        shown = [answer(first)]
        holder = sqlite3.connect(tmp_path / "actmax.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            stored = rig.send_results(first.batch_id, shown[0])
            wait_until(lambda: live.engine.stall_of(thread_id), 30, "the thread to stall")
            wait_until(lambda: len(rig.errors) >= 3, 30, "the rig's resends refused")
            headers = {"Authorization": "Bearer t"}
            thread = httpx.get(f"{url}/threads/{thread_id}", headers=headers, timeout=30).json()
            health = httpx.get(f"{url}/health", timeout=30)
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert thread["status"] == "running"
        assert thread["last_error"].startswith(f"storage failed: the database {tmp_path / 'actmax.sqlite'} {LOCKED}; "
                                               "the thread tries again on its own")
        assert health.status_code == 503 and LOCKED in health.json()["problem"]
        assert all(e["code"] == "internal" and LOCKED in e["message"] for e in rig.errors)
        stored.result(60)  # a resend after the lock went
        for _ in range(2):
            batch = rig.next_batch(timeout=60)
            shown.append(answer(batch))
            rig.send_results(batch.batch_id, shown[-1]).result(30)
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FINISHED, 60, "the thread to finish")
        assert live.engine.stall_of(thread_id) is None

    with live.sessions() as session:
        kinds = session.scalars(select(Event.kind).where(Event.thread_id == thread_id)).all()
        ids = session.scalars(select(Presentation.presentation_id)).all()
        assert session.get(Thread, thread_id).last_error is None
        assert session.scalar(select(func.count()).select_from(Presentation)) == len(ids)
    assert "thread.failed" not in kinds and kinds.count("thread.storage_recovered") == 1
    assert sorted(ids) == sorted(p.presentation_id for batch in shown for p in batch)  # each once, none lost
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


def test_a_lock_let_go_during_the_stalls_rebuild_lets_the_thread_go_on_at_once(tmp_path, endpoint, monkeypatch,
                                                                                caplog):
    """The round's RESULTS meets the lock: its step fails and the thread stalls. The stall's retry rebuilds the runtime,
    reading the database before the presentations are stored (they wait on the compute worker behind it), and the lock
    goes while the rebuild waits to write. The rebuilt runtime then counts the presentations stored after it: the next
    batch comes at once and the stall clears (before, the thread waited for the batch timeout, 5 min in use, with
    last_error and /health saying the database was locked)."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 2500)  # the step, the stall's event and the rebuild each wait this long
    monkeypatch.setattr(engine, "STORAGE_RETRY_S", (0.05, 60.0))  # the rebuild waits only for the compute worker
    caplog.set_level(logging.INFO)

    def built() -> int:  # runtimes built: ``thread.runtime``'s log line, written just before its event
        return sum(" runs dcgan-faces " in r.getMessage() for r in caplog.records)

    with LiveEngine(tmp_path, endpoint) as live, RigClient(endpoint, RIG, channels=1, reconnect_max_s=1.0) as rig, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url:
        thread_id = live.create(n_generations=2)
        first = rig.next_batch(timeout=60)
        holder = sqlite3.connect(tmp_path / "actmax.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            stored = rig.send_results(first.batch_id, answer(first))
            wait_until(lambda: live.engine.stall_of(thread_id), 30, "the thread to stall")
            wait_until(lambda: built() == 2, 30, "the stall's rebuild to read the database")
            assert not stored.done()  # the presentations are not stored yet
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert stored.result(30)["accepted"] == len(first.stimuli) and rig.errors == []
        second = rig.next_batch(timeout=30)
        assert second is not None and second.batch_id != first.batch_id
        wait_until(lambda: live.engine.stall_of(thread_id) is None, 30, "the stall to clear")
        thread = httpx.get(f"{url}/threads/{thread_id}", headers={"Authorization": "Bearer t"}, timeout=30).json()
        health = httpx.get(f"{url}/health", timeout=30)
        assert thread["status"] == "running" and thread["last_error"] is None
        assert health.status_code == 200, health.json()
        rig.send_results(second.batch_id, answer(second)).result(30)
        wait_until(lambda: thread_status(live, thread_id) == ThreadStatus.FINISHED, 60, "the thread to finish")

    with live.sessions() as session:
        kinds = session.scalars(select(Event.kind).where(Event.thread_id == thread_id)).all()
    assert "round.timed_out" not in kinds and kinds.count("thread.storage_recovered") == 1


def test_the_locked_database_is_named_in_full_with_a_relative_data_dir(tmp_path, monkeypatch):
    """``--data-dir data``: the advice names the database's absolute path, as the start-up log names the data folder
    (before: ``data/actmax.sqlite``, relative to a working folder the reader may not know)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    holder = sqlite3.connect(tmp_path / "data" / "actmax.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with contextlib.closing(sqlite3.connect("data/actmax.sqlite", timeout=0)) as writer, \
                pytest.raises(sqlite3.OperationalError) as failure:
            writer.execute("CREATE TABLE t (x)")
    finally:
        holder.execute("COMMIT")
        holder.close()
    advice = engine.storage_advice(failure.value, Settings(data_dir=Path("data"), token="t"))
    assert advice == f"the database {tmp_path / 'data' / 'actmax.sqlite'} {LOCKED}"
