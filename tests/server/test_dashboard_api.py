"""What the dashboard reads and does over real HTTP: curve, rig, session stop, added threads, the live stream."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from server import live
from server.api.routes.monitor import decimate, recent_batches
from server.store.db import StepConnection
from server.store import records
from server.store.models import (
    Batch,
    Event,
    EventLevel,
    Generation,
    GenerationStatus,
    Stimulus,
    StimulusKind,
    ThreadStatus,
    encode_codes,
)
from server.store.records import log_event
from tests.server.conftest import LiveServer, thread_config
from tests.server.test_api import create_session


def add_generations(live_server: LiveServer, session_id: int, thread_id: int, scores: list[list[float]],
                    first: int = 0, objective: dict | None = None) -> list[str]:
    """Completed generations from number ``first`` with these scores (one synthetic stimulus each), scored with
    ``objective`` as the engine records it (or none recorded); the best stimulus id of each."""
    best = []
    with live_server.sessions() as db:
        for number, values in enumerate(scores, first):
            generation = Generation(thread_id=thread_id, number=number, codes=encode_codes(np.zeros((len(values), 2))),
                                    n_stimuli=len(values), status=GenerationStatus.COMPLETE, scores_json=values,
                                    max_score=max(values), reference_mean=1.0, n_scored=len(values),
                                    objective_json=objective)
            db.add(generation)
            db.flush()
            ids = [uuid.uuid4().hex for _ in values]
            for index, stimulus_id in enumerate(ids):
                db.add(Stimulus(id=stimulus_id, session_id=session_id, thread_id=thread_id, generation_id=generation.id,
                                kind=StimulusKind.SYNTHETIC, index=index, content_hash="0" * 64, png_path="x.png"))
            best.append(ids[int(np.argmax(values))])
        db.commit()
    return best


@pytest.mark.parametrize("total, most, expected", [(5, 10, [0, 1, 2, 3, 4]), (10, 4, [0, 3, 6, 9]), (3, 2, [0, 2])])
def test_decimate_keeps_first_and_last_evenly(total, most, expected):
    assert decimate(total, most) == expected


def test_curve_has_mean_sem_max_and_the_best_image(client: httpx.Client, live_server: LiveServer):
    created = create_session(client)
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    scores = [[1.0, 3.0, 2.0], [4.0, 6.0, 5.0], [2.0, 2.0, 8.0]]
    best = add_generations(live_server, session_id, thread_id, scores)
    curve = client.get(f"/threads/{thread_id}/curve").json()
    assert curve["total"] == 3
    for point, values, best_id in zip(curve["points"], scores, best, strict=True):
        assert point["mean"] == pytest.approx(np.mean(values))
        assert point["sem"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(3))
        assert point["max"] == max(values) and point["best_stimulus_id"] == best_id
    decimated = client.get(f"/threads/{thread_id}/curve", params={"max_points": 2}).json()
    assert [p["generation"] for p in decimated["points"]] == [0, 2] and decimated["total"] == 3
    later = client.get(f"/threads/{thread_id}/curve", params={"from_generation": 1}).json()
    assert [p["generation"] for p in later["points"]] == [1, 2]


def test_the_curve_marks_where_a_retarget_changed_the_objective(client: httpx.Client, live_server: LiveServer):
    created = create_session(client)
    session_id, thread = created["id"], created["threads"][0]
    add_generations(live_server, session_id, thread["id"], [[1.0, 2.0], [3.0, 4.0]], objective=thread["objective"])
    assert client.get(f"/threads/{thread['id']}/curve").json()["segments"] == [
        {"from_generation": 0, "score_label": "score (spikes/s) of ch 3"}]
    retargeted = client.post(f"/threads/{thread['id']}/retarget", json={"objective": {"expression": "zscore(rate(3))"}})
    add_generations(live_server, session_id, thread["id"], [[0.1, 0.2]], first=2, objective=retargeted.json()["objective"])
    assert client.get(f"/threads/{thread['id']}/curve").json()["segments"] == [
        {"from_generation": 0, "score_label": "score (spikes/s) of ch 3"},
        {"from_generation": 2, "score_label": "score = zscore(rate(3))"}]
    curve = client.get(f"/threads/{thread['id']}/curve", params={"from_generation": 2}).json()
    assert [p["generation"] for p in curve["points"]] == [2]
    assert curve["segments"] == [{"from_generation": 2, "score_label": "score = zscore(rate(3))"}]  # those from 2 on


def test_an_incremental_curve_is_the_tail_of_the_whole_curve(client: httpx.Client, live_server: LiveServer):
    """``from_generation`` reads only the later generations and events, and answers exactly the whole curve's
    points and segments from there on: across a retarget, and past a generation that never completed."""
    created = create_session(client)
    session_id, thread = created["id"], created["threads"][0]
    retargeted = {"expression": "zscore(rate(3))"}
    add_generations(live_server, session_id, thread["id"], [[n, n + 2.0] for n in range(150)],
                    objective=thread["objective"])
    add_generations(live_server, session_id, thread["id"], [[n, 1.0] for n in range(151, 300)], first=151,
                    objective=retargeted)
    with live_server.sessions() as db:
        db.add(Generation(thread_id=thread["id"], number=150, codes=encode_codes(np.zeros((1, 2))), n_stimuli=1,
                          status=GenerationStatus.PENDING))  # left pending (a stop): no point, no event
        for number in (*range(150), *range(151, 300)):
            log_event(db, "generation.completed", f"generation {number}", session_id=session_id,
                      thread_id=thread["id"], data={"generation": number, "reference_sem": number / 10})
        db.commit()
    whole = client.get(f"/threads/{thread['id']}/curve", params={"max_points": 10_000}).json()
    assert whole["total"] == 299 and [p["generation"] for p in whole["points"]] == [*range(150), *range(151, 300)]
    assert [p["reference_sem"] for p in whole["points"]] == [p["generation"] / 10 for p in whole["points"]]
    assert [s["from_generation"] for s in whole["segments"]] == [0, 151]
    for start in (0, 1, 149, 150, 151, 152, 299, 300, 10_000):
        tail = client.get(f"/threads/{thread['id']}/curve", params={"from_generation": start}).json()
        points = [p for p in whole["points"] if p["generation"] >= start]
        assert tail == {"thread_id": thread["id"], "total": len(points), "points": points,
                        "segments": [s for s in whole["segments"] if s["from_generation"] >= start]}, start


def test_rig_without_a_transport_is_not_connected(client: httpx.Client):
    created = create_session(client, rig="rig-B")
    rig = client.get("/rigs/rig-B").json()
    assert rig["connected"] is False and rig["channels"] is None
    assert rig["scored_channels"] == {"3": [created["threads"][0]["name"]]}


def test_the_rig_list_names_the_rigs_active_sessions_wait_for(client: httpx.Client):
    first, second = create_session(client, rig="list-B"), create_session(client, rig="list-a")
    client.post(f"/sessions/{create_session(client, rig='list-old')['id']}/stop").raise_for_status()
    rigs = client.get("/rigs").json()
    assert [r["rig"] for r in rigs] == sorted(r["rig"] for r in rigs)
    assert [r for r in rigs if r["rig"].startswith("list-")] == [
        {"rig": "list-B", "connected": False, "channels": None, "sessions": [first["id"]]},
        {"rig": "list-a", "connected": False, "channels": None, "sessions": [second["id"]]},
    ]


def test_rig_batch_timings(client: httpx.Client, live_server: LiveServer):
    created = create_session(client, rig="rig-T")
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    add_generations(live_server, session_id, thread_id, [[1.0], [2.0]])
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    with live_server.sessions() as db:
        generations = db.scalars(select(Generation).where(Generation.thread_id == thread_id)
                                 .order_by(Generation.number)).all()
        generations[0].completed_at = t0 + timedelta(seconds=1)
        for batch_id, generation, sent, first, done in (
            ("b0", generations[0], 0.0, 0.25, 1.0), ("b1", generations[1], 1.2, 1.5, None),
            ("b1-again", generations[1], 3.0, None, None),
        ):
            db.add(Batch(id=batch_id, session_id=session_id, thread_id=thread_id, generation_id=generation.id,
                         rig="rig-T", sent_at=t0 + timedelta(seconds=sent),
                         results_first_at=first and t0 + timedelta(seconds=first),
                         completed_at=done and t0 + timedelta(seconds=done)))
        db.commit()
    batches = {b["batch_id"]: b for b in client.get("/rigs/rig-T").json()["batches"]}
    assert list(batches) == ["b1-again", "b1", "b0"]  # newest first
    assert batches["b0"]["first_result_ms"] == pytest.approx(250) and batches["b0"]["complete_ms"] == pytest.approx(1000)
    assert batches["b0"]["turnaround_ms"] is None  # no previous generation
    assert batches["b1"]["turnaround_ms"] == pytest.approx(200) and batches["b1"]["complete_ms"] is None
    assert batches["b1-again"]["turnaround_ms"] is None  # a second round of the same generation


def test_a_rigs_latest_batches_are_read_through_its_index(live_server: LiveServer):
    """Not by scanning and sorting every batch the server has sent (the rig panel asks several times a second)."""
    query = recent_batches("rig-T", 8).compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True})
    with live_server.db_engine.connect() as connection:
        plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}")]
    assert plan[0] == "SEARCH batches USING INDEX ix_batches_rig_sent_at (rig=?)", plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_stop_session_stops_every_thread_and_is_idempotent(client: httpx.Client, live_server: LiveServer):
    created = create_session(client, threads=[thread_config("a"), thread_config("b")])
    client.post(f"/threads/{created['threads'][1]['id']}/pause").raise_for_status()
    wakes = live_server.engine.wakes
    stopped = client.post(f"/sessions/{created['id']}/stop").json()
    assert stopped["status"] == "stopped" and {t["status"] for t in stopped["threads"]} == {"stopped"}
    assert live_server.engine.wakes == wakes + 1
    assert client.post(f"/sessions/{created['id']}/stop").status_code == 200
    refused = client.post(f"/sessions/{created['id']}/threads", json=thread_config("c"))
    assert refused.status_code == 409 and "active" in refused.json()["detail"]


def test_a_stopped_thread_keeps_no_error_of_what_it_was_waiting_for(client: httpx.Client, live_server: LiveServer):
    """A thread waiting for its rig says so in last_error; once stopped (alone, or with its session) that wait is moot
    and it said so still, where a thread that ended keeps the reason it ended with."""
    created = create_session(client, threads=[thread_config("a"), thread_config("b")])
    ids = [t["id"] for t in created["threads"]]
    with live_server.sessions() as db:  # as the engine reports a wait
        for thread_id in ids:
            records.set_thread_error(db, thread_id, "thread.waiting_for_rig", "waiting for rig 'r'",
                                     level=EventLevel.INFO)
        db.commit()
    assert client.post(f"/threads/{ids[0]}/stop").json()["last_error"] is None
    assert client.get(f"/threads/{ids[1]}").json()["last_error"] == "waiting for rig 'r'"
    stopped = client.post(f"/sessions/{created['id']}/stop").json()
    assert [(t["status"], t["last_error"]) for t in stopped["threads"]] == [("stopped", None)] * 2
    with live_server.sessions() as db:  # what the engine may still report of an ended thread is not written
        assert not records.set_thread_error(db, ids[1], "thread.failed", "failed: late", status=ThreadStatus.FAILED)
        db.commit()
    assert client.get(f"/threads/{ids[1]}").json()["status"] == "stopped"


def test_a_finished_session_says_how_many_of_its_threads_failed(client: httpx.Client, live_server: LiveServer):
    """A failed thread ends its session ``finished`` like a completed one; ``threads_by_status`` tells them apart."""
    created = create_session(client, threads=[thread_config("a"), thread_config("b")])
    assert client.get(f"/sessions/{created['id']}").json()["threads_by_status"] == {"waiting_for_rig": 2}
    failed, done = (t["id"] for t in created["threads"])
    with live_server.sessions() as db:  # as the engine ends them
        records.finish_thread(db, done)
        records.set_thread_error(db, failed, "thread.failed", "failed: boom", status=ThreadStatus.FAILED)
        db.commit()
    listed = {s["id"]: s for s in client.get("/sessions").json()}[created["id"]]
    read = client.get(f"/sessions/{created['id']}").json()
    for session in (listed, read):
        assert session["status"] == "finished" and session["threads_by_status"] == {"finished": 1, "failed": 1}


def test_a_manifold_thread_can_be_added_around_an_evolution(client: httpx.Client):
    created = create_session(client)
    manifold = {"name": "map", "kind": "manifold", "generator": "dcgan-faces", "manifold": {"source": "t0"},
                "objective": {"channels": [3]}}
    response = client.post(f"/sessions/{created['id']}/threads", json=manifold)
    assert response.status_code == 201, response.text
    # The stand-in engine has no rig connected: the new thread waits for it (docs/session_config.md).
    assert response.json()["kind"] == "manifold" and response.json()["status"] == "waiting_for_rig"
    session = client.get(f"/sessions/{created['id']}").json()
    assert [t["name"] for t in session["config"]["threads"]] == ["t0", "map"]
    assert session["config"]["threads"][1]["seed"] == response.json()["seed"]
    again = client.post(f"/sessions/{created['id']}/threads", json=manifold)
    assert again.status_code == 422 and "unique" in again.text
    orphan = client.post(f"/sessions/{created['id']}/threads", json={**manifold, "name": "m2", "manifold": {"source": "x"}})
    assert orphan.status_code == 422 and "source 'x'" in orphan.text


def test_the_stream_needs_the_token_and_carries_committed_events(client: httpx.Client, live_server: LiveServer):
    assert httpx.get(f"{live_server.url}/live", headers={"Authorization": "Bearer wrong"}).status_code == 401
    created = create_session(client)
    thread_id = created["threads"][0]["id"]
    open_before = live.hub.subscribers
    with client.stream("GET", "/live", params={"session_id": created["id"]}) as stream:
        lines = stream.iter_lines()
        assert next(lines) == ": connected"
        client.post(f"/threads/{thread_id}/pause").raise_for_status()
        kind = next(line for line in lines if line.startswith("event: "))
        item = json.loads(next(lines).removeprefix("data: "))
    assert kind == "event: thread.paused"
    for _ in range(100):  # the server notices the closed connection and drops the subscription
        if live.hub.subscribers == open_before:
            break
        time.sleep(0.05)
    assert live.hub.subscribers == open_before
    assert item["thread_id"] == thread_id and item["session_id"] == created["id"] and item["event_id"] > 0


def test_rolled_back_events_are_never_published(db_sessions):
    async def scenario():
        subscription = live.hub.subscribe()
        try:
            with db_sessions() as db:
                log_event(db, "test.rolled_back", "never")
                db.flush()
                db.rollback()
                log_event(db, "test.committed", "once")
                db.commit()
            return [item["kind"] for item in await subscription.get(1.0)]
        finally:
            subscription.close()

    assert asyncio.run(scenario()) == ["test.committed"]


def test_the_engines_own_connection_publishes_an_event_once_its_transaction_committed(db_sessions):
    """``StepConnection``: what a step logs reaches dashboards after its commit, and never if it rolls back."""
    step_db = StepConnection(db_sessions)

    async def scenario():
        subscription = live.hub.subscribe()
        try:
            with pytest.raises(RuntimeError), step_db.begin() as db:
                log_event(db, "test.rolled_back", "never")
                raise RuntimeError("the step failed")
            with step_db.begin() as db:
                log_event(db, "test.committed", "once")
                assert await subscription.get(0.2) == []  # not before the commit
            return [item["kind"] for item in await subscription.get(1.0)]
        finally:
            subscription.close()

    try:
        assert asyncio.run(scenario()) == ["test.committed"]
    finally:
        step_db.close()
    with db_sessions() as db:
        assert list(db.scalars(select(Event.kind).where(Event.kind.like("test.%")))) == ["test.committed"]


def test_a_slow_subscriber_loses_its_oldest_items_and_never_blocks():
    async def scenario():
        hub = live.Hub(queue_size=3, max_subscribers=1)
        subscription = hub.subscribe()
        with pytest.raises(ValueError, match="1 live streams"):
            hub.subscribe()
        for n in range(5):
            hub.publish("tick", data={"n": n})
        items = await subscription.get(1.0)
        subscription.close()
        return [item["data"]["n"] for item in items], subscription.dropped, hub.subscribers

    assert asyncio.run(scenario()) == ([2, 3, 4], 2, 0)


def test_docs_pages_load_their_assets_from_this_server(client: httpx.Client):
    for path, asset in (("/docs", "/assets/docs/swagger-ui-bundle.js"), ("/redoc", "/assets/docs/redoc.standalone.js")):
        html = client.get(path).text
        assert asset in html and "cdn" not in html.lower() and "googleapis" not in html
        script = client.get(asset)
        assert script.status_code == 200 and len(script.content) > 100_000
        assert "cdn.redoc.ly" not in script.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
    assert "app.js" in client.get("/ui/").text
