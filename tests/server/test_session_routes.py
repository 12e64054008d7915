"""Session routes through real HTTP: a POST /sessions retried with its Idempotency-Key, the shared-rig warning,
notes, event filters, and pausing and resuming a whole session (with a real engine and rig: a thread added to a
paused session waits for the session's resume)."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from alembic import command
from sqlalchemy import select

from rig_client.client import RigClient
from server.engine import log_hello
from server.main import create_app
from server.store import db
from server.store.models import Generation, GenerationStatus, ThreadStatus
from tests.server.conftest import LiveServer, served, session_config, thread_config
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer
from tests.server.test_reconnect import thread_status


def sessions_named(client: httpx.Client, name: str) -> list[int]:
    return [s["id"] for s in client.get("/sessions").json() if s["name"] == name]


def events(client: httpx.Client, session_id: int, **filters) -> list[dict]:
    response = client.get(f"/sessions/{session_id}/events", params={"limit": 1000, **filters})
    assert response.status_code == 200, response.text
    return response.json()["items"]


# ---------------------------------------------------------------- Idempotency-Key and the shared-rig warning

def test_a_post_repeated_with_its_idempotency_key_creates_one_session(client: httpx.Client) -> None:
    body = session_config(name="retried", rig="rig-retry")  # its seed left to the server: drawn once
    key = {"Idempotency-Key": "3f2a-retry-1"}
    first = client.post("/sessions", json=body, headers=key)
    assert first.status_code == 201 and "Idempotency-Replayed" not in first.headers
    again = client.post("/sessions", json=body, headers=key)
    assert again.status_code == 200 and again.headers["Idempotency-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["threads"] == first.json()["threads"]
    assert sessions_named(client, "retried") == [first.json()["id"]]
    assert [e["kind"] for e in events(client, first.json()["id"], kind="session.created")] == ["session.created"]

    seeded = session_config(name="retried", rig="rig-retry",
                            threads=[thread_config(seed=first.json()["threads"][0]["seed"])])
    assert client.post("/sessions", json=seeded, headers=key).json()["id"] == first.json()["id"]  # the same config
    assert client.post(f"/sessions/{first.json()['id']}/threads", json=thread_config("added")).status_code == 201
    assert client.post("/sessions", json=body, headers=key).status_code == 200  # a thread added since is no change

    other = client.post("/sessions", json=session_config(name="retried", rig="rig-other"), headers=key)
    assert other.status_code == 409
    assert other.json()["detail"] == (f"this Idempotency-Key created session {first.json()['id']} 'retried' from "
                                      "another body; send a new key for a new session (or the first body again for "
                                      "that session)")
    assert sessions_named(client, "retried") == [first.json()["id"]]


def test_creating_replaying_and_stopping_a_session_answer_it_as_get_does(client: httpx.Client,
                                                                         live_server: LiveServer) -> None:
    """The session that POST /sessions (first and repeated) and POST /sessions/{id}/stop answer is the one
    GET /sessions/{id} shows, with the rig's channel labels and setup filled in, where they used to be null."""
    with live_server.sessions.begin() as db:
        log_hello(db, "rig-labelled", 2, {"channels": 2, "channel_labels": ["u-a", "u-b"], "setup": {"room": 4}}, 0)
    body, key = session_config(name="labelled", rig="rig-labelled"), {"Idempotency-Key": "labelled-1"}
    created, again = (client.post("/sessions", json=body, headers=key) for _ in range(2))
    shown = client.get(f"/sessions/{created.json()['id']}").json()
    assert (shown["channel_labels"], shown["rig_setup"]) == (["u-a", "u-b"], {"room": 4})
    assert created.json() == shown and again.json() == shown
    stopped = client.post(f"/sessions/{shown['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped == client.get(f"/sessions/{shown['id']}").json()
    assert (stopped["channel_labels"], stopped["rig_setup"]) == (["u-a", "u-b"], {"room": 4})


def test_a_key_is_1_to_200_printable_ascii_characters(client: httpx.Client) -> None:
    for key in ("x" * 201, "tab\there"):
        response = client.post("/sessions", json=session_config(name="bad-key"), headers={"Idempotency-Key": key})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        assert response.json()["detail"][0]["msg"] == "give 1-200 printable ASCII characters, new for each session, " \
            "e.g. a UUID"  # not the pattern that checks it
    assert sessions_named(client, "bad-key") == []


def test_posts_with_one_key_at_the_same_time_create_one_session(client: httpx.Client) -> None:
    """A client that timed out and retried while its first POST was still at work on the server."""
    body, start = session_config(name="raced", rig="rig-race"), threading.Barrier(6)

    def post(_: int) -> httpx.Response:
        start.wait()
        return client.post("/sessions", json=body, headers={"Idempotency-Key": "raced-key"})
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(post, range(6)))
    assert sorted(r.status_code for r in responses) == [200] * 5 + [201], [r.text for r in responses]
    assert {r.json()["id"] for r in responses} == set(sessions_named(client, "raced"))
    assert len(sessions_named(client, "raced")) == 1


def test_a_session_on_a_rig_with_other_active_sessions_is_created_with_a_warning(client: httpx.Client) -> None:
    first = client.post("/sessions", json=session_config(name="pilot", rig="rig-shared"))
    assert first.status_code == 201 and "X-Actmax-Warning" not in first.headers
    second = client.post("/sessions", json=session_config(name="実験", rig="rig-shared"))
    assert second.headers["X-Actmax-Warning"] == (
        f"rig 'rig-shared' already has active session(s) {first.json()['id']} 'pilot': it shows the images of each in "
        "turn; `actmax session stop ID` stops one")
    client.post(f"/sessions/{first.json()['id']}/stop")
    third = client.post("/sessions", json=session_config(name="third", rig="rig-shared"))
    assert third.headers["X-Actmax-Warning"].startswith(  # a header is ASCII: the name escaped
        f"rig 'rig-shared' already has active session(s) {second.json()['id']} '\\u5b9f\\u9a13': ")


def test_the_sessions_list_says_how_many_sessions_there_are_in_all(client: httpx.Client) -> None:
    for name in ("counted-1", "counted-2"):
        client.post("/sessions", json=session_config(name=name, rig="rig-count"))
    every = client.get("/sessions")
    page = client.get("/sessions", params={"offset": 1, "limit": 1})
    assert len(page.json()) == 1 and int(page.headers["X-Total-Count"]) == len(every.json()) >= 2
    assert every.headers["X-Total-Count"] == page.headers["X-Total-Count"]


# ---------------------------------------------------------------- notes

def test_notes_are_events_of_the_session_also_after_it_ended(client: httpx.Client) -> None:
    session = client.post("/sessions", json=session_config(
        name="noted", rig="rig-notes", threads=[thread_config("a"), thread_config("b")])).json()
    a = session["threads"][0]
    note = client.post(f"/sessions/{session['id']}/notes", json={"text": "  lights on in the room  "})
    assert note.status_code == 201, note.text
    assert note.json() | {"id": 0, "time": ""} == {
        "id": 0, "time": "", "session_id": session["id"], "thread_id": None, "level": "info", "kind": "session.note",
        "message": "note: lights on in the room",
        "data": {"text": "lights on in the room", "thread_id": None, "generations": None}}

    client.post(f"/sessions/{session['id']}/stop")
    about = client.post(f"/sessions/{session['id']}/notes", json={
        "text": "animal broke fixation", "thread_id": a["id"], "generations": [12, 14]})
    assert about.status_code == 201, about.text
    assert about.json()["message"] == f"note: animal broke fixation (thread {a['id']} 'a', generations 12-14)"
    assert about.json()["thread_id"] == a["id"]
    assert about.json()["data"] == {"text": "animal broke fixation", "thread_id": a["id"], "generations": [12, 14]}
    one = client.post(f"/sessions/{session['id']}/notes",
                      json={"text": "x", "thread_id": a["id"], "generations": [3, 3]})
    assert one.json()["message"] == f"note: x (thread {a['id']} 'a', generation 3)"
    assert [e["id"] for e in events(client, session["id"], kind="session.note")] == \
        [note.json()["id"], about.json()["id"], one.json()["id"]]


@pytest.mark.parametrize(("body", "loc", "message"), [
    ({"text": "   "}, ["body", "text"], "at least 1 character"),
    ({"text": "x" * 2001}, ["body", "text"], "at most 2000 characters"),
    ({"text": "x", "generations": [1, 2]}, ["body", "generations"], "generations need thread_id"),
    ({"text": "x", "thread_id": "THREAD", "generations": [2, 1]}, ["body", "generations"], "[2, 1] is no range"),
    ({"text": "x", "thread": 1}, ["body", "thread"], "thread_id"),
])
def test_a_note_s_problems_are_named(client: httpx.Client, body: dict, loc: list, message: str) -> None:
    session = client.post("/sessions", json=session_config(name="bad-notes", rig="rig-notes")).json()
    body = {**body, "thread_id": session["threads"][0]["id"]} if body.get("thread_id") == "THREAD" else body
    response = client.post(f"/sessions/{session['id']}/notes", json=body)
    assert response.status_code == 422, response.text
    (problem,) = [p for p in response.json()["detail"] if p["loc"] == loc]
    assert message in problem["msg"]
    assert events(client, session["id"], kind="session.note") == []


def test_a_note_about_another_session_s_thread_or_an_unknown_session_is_refused(client: httpx.Client) -> None:
    mine = client.post("/sessions", json=session_config(name="mine", rig="rig-notes")).json()
    other = client.post("/sessions", json=session_config(name="other", rig="rig-notes")).json()
    alien = other["threads"][0]["id"]
    response = client.post(f"/sessions/{mine['id']}/notes", json={"text": "x", "thread_id": alien})
    assert response.status_code == 422 and response.json()["detail"] == [{
        "type": "value_error", "loc": ["body", "thread_id"],
        "msg": f"thread {alien} is not a thread of session {mine['id']}; its threads: {mine['threads'][0]['id']} 't0'"}]
    assert client.post("/sessions/999999/notes", json={"text": "x"}).status_code == 404


# ---------------------------------------------------------------- event filters

def test_events_are_filtered_by_kind_and_thread(client: httpx.Client) -> None:
    session = client.post("/sessions", json=session_config(
        name="filtered", rig="rig-filter", threads=[thread_config("a"), thread_config("b")])).json()
    a, b = (t["id"] for t in session["threads"])
    client.post(f"/threads/{a}/pause")
    client.post(f"/sessions/{session['id']}/notes", json={"text": "about b", "thread_id": b})
    client.post(f"/sessions/{session['id']}/notes", json={"text": "about the session"})

    assert [e["kind"] for e in events(client, session["id"], kind="session.note")] == ["session.note"] * 2
    both = events(client, session["id"], kind=["thread.paused", "session.created"])
    assert [e["kind"] for e in both] == ["session.created", "thread.paused"]
    assert {e["thread_id"] for e in events(client, session["id"], thread_id=b)} == {b}
    assert [e["message"] for e in events(client, session["id"], thread_id=b, kind="session.note")] == \
        [f"note: about b (thread {b} 'b')"]
    page = client.get(f"/sessions/{session['id']}/events", params={"kind": "session.note", "limit": 1}).json()
    assert page["total"] == 2 and len(page["items"]) == 1

    other = client.post("/sessions", json=session_config(name="elsewhere", rig="rig-filter")).json()
    refused = client.get(f"/sessions/{session['id']}/events", params={"thread_id": other["threads"][0]["id"]})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "thread_id"]


# ---------------------------------------------------------------- pause and resume a session

def test_a_session_pauses_and_resumes_its_threads_and_a_repeat_changes_nothing(
        client: httpx.Client, live_server: LiveServer) -> None:
    session = client.post("/sessions", json=session_config(
        name="break", rig="rig-break", threads=[thread_config("a"), thread_config("b"), thread_config("c")])).json()
    sid, (a, b, c) = session["id"], (t["id"] for t in session["threads"])
    client.post(f"/threads/{c}/stop")

    paused = client.post(f"/sessions/{sid}/pause")
    assert paused.status_code == 200, paused.text
    assert [t["status"] for t in paused.json()["threads"]] == ["paused", "paused", "stopped"]
    assert [(e["thread_id"], e["message"]) for e in events(client, sid, kind="thread.paused")] == [
        (a, f"thread {a} 'a' paused via REST"), (b, f"thread {b} 'b' paused via REST")]
    wakes = live_server.engine.wakes
    assert client.post(f"/sessions/{sid}/pause").json() == paused.json()  # nothing to pause: unchanged
    assert len(events(client, sid, kind="thread.paused")) == 2 and live_server.engine.wakes == wakes

    resumed = client.post(f"/sessions/{sid}/resume")
    assert resumed.status_code == 200, resumed.text
    assert [t["status"] for t in resumed.json()["threads"]] == ["running", "running", "stopped"]
    assert [e["thread_id"] for e in events(client, sid, kind="thread.running")] == [a, b]
    assert client.post(f"/sessions/{sid}/resume").json() == resumed.json()

    client.post(f"/sessions/{sid}/stop")
    ended = client.post(f"/sessions/{sid}/pause")
    assert ended.status_code == 409 and ended.json()["detail"] == f"cannot pause session {sid}: it is stopped"
    ended = client.post(f"/sessions/{sid}/resume")
    assert ended.status_code == 409 and ended.json()["detail"].startswith(f"cannot resume session {sid}: it is stopped")
    assert client.post("/sessions/999999/pause").status_code == 404


def test_a_thread_added_to_a_paused_session_waits_for_the_session_s_resume(tmp_path, endpoint) -> None:
    """With a real engine and rig: nothing of a thread added during a break is shown until the break ends."""
    evolution = {"generator": "dcgan-faces", "optimizer": "cma", "optimizer_params": {"population": 6},
                 "objective": {"channels": [0]}, "seed": 3, "n_generations": 20}
    with LiveEngine(tmp_path / "data", endpoint) as live, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url, \
            httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=60) as client, \
            RigClient(endpoint, RIG, channels=1) as rig:
        session = client.post("/sessions", json={"name": "day", "rig": RIG, "references": {"source": "skimage",
                                                 "count": 2}, "threads": [{"name": "a", **evolution}]}).json()
        sid, a = session["id"], session["threads"][0]["id"]
        first = rig.next_batch(timeout=60)
        assert first.generation == 0

        assert [t["status"] for t in client.post(f"/sessions/{sid}/pause").json()["threads"]] == ["paused"]
        wait_until(lambda: getattr(live.engine._threads.get(a), "paused", False), 30, "the engine to read the pause")
        rig.send_results(first.batch_id, answer(first)).result(30)  # the generation in flight is still told
        added = client.post(f"/sessions/{sid}/threads", json={"name": "b", **evolution})
        assert added.status_code == 201 and added.json()["status"] == "paused"
        b = added.json()["id"]
        (note,) = events(client, sid, kind="thread.paused", thread_id=b)
        assert note["message"] == (f"thread {b} 'b' paused via REST: added while every thread of session {sid} is "
                                   f"paused; `POST /sessions/{sid}/resume` resumes them all")
        wait_until(lambda: generations(live, a) == [GenerationStatus.COMPLETE], 30, "generation 0 to be told")
        assert rig.next_batch(timeout=2.0) is None  # the break: neither thread shows anything
        assert generations(live, b) == []

        resumed = client.post(f"/sessions/{sid}/resume").json()
        assert [t["status"] for t in resumed["threads"]] == ["running", "running"]
        shown = {(batch.thread_id, batch.generation) for batch in (rig.next_batch(timeout=60) for _ in range(2))}
        assert shown == {(str(a), 1), (str(b), 0)}  # both go on: a with its next generation, b with its first
        assert thread_status(live, b) == ThreadStatus.RUNNING


def generations(live: LiveEngine, thread_id: int) -> list[GenerationStatus]:
    with live.sessions() as session:
        return list(session.scalars(select(Generation.status).where(Generation.thread_id == thread_id)
                                    .order_by(Generation.number)))


# ---------------------------------------------------------------- the migration

def test_the_idempotency_key_migration_keeps_sessions_and_takes_only_its_column_away(tmp_path) -> None:
    path, url = tmp_path / "a.sqlite", f"sqlite:///{tmp_path / 'a.sqlite'}"
    db_engine = db.make_db_engine(url)
    try:
        db.upgrade(db_engine, "0007_batch_rig_index")
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO sessions (name, rig, animal, array, notes, config_json, status, created_at) "
                         "VALUES ('old', 'r', '', '', '', '{}', 'active', '2026-01-01')")
        db.upgrade(db_engine)
    finally:
        db_engine.dispose()

    def schema() -> tuple[list[str], set[str], list[tuple]]:
        with sqlite3.connect(path) as conn:
            columns = [row[1] for row in conn.execute("PRAGMA table_info(sessions)")]
            indexes = {row[1] for row in conn.execute("PRAGMA index_list(sessions)") if row[2]}  # unique ones
            return columns, indexes, conn.execute("SELECT id, name FROM sessions").fetchall()
    columns, unique, rows = schema()
    assert columns[-1] == "idempotency_key" and "ix_sessions_idempotency_key" in unique and rows == [(1, "old")]
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"), sqlite3.connect(path) as conn:  # (rolled back)
        conn.executemany("INSERT INTO sessions (name, rig, animal, array, notes, config_json, status, created_at, "
                         "idempotency_key) VALUES ('n', 'r', '', '', '', '{}', 'active', '2026-01-01', 'k')", [(), ()])
    command.downgrade(db.alembic_config(url), "0007_batch_rig_index")
    assert schema() == ([c for c in columns if c != "idempotency_key"], unique - {"ix_sessions_idempotency_key"},
                        [(1, "old")])
