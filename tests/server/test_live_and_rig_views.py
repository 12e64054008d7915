"""The live stream as the event log has it (ids, times, a reconnect with Last-Event-ID), the rig views and the
score labels, over real HTTP."""

from __future__ import annotations

import json
import re

import httpx

from server import live
from server.session_config import SessionConfig
from server.store.models import Thread, ThreadStatus
from server.store.records import log_event
from tests.server.conftest import LiveServer, session_config, thread_config
from tests.server.test_api import create_session
from tests.server.test_dashboard_api import add_generations

REST_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Messages:
    """The messages of an open SSE response: ``next()`` is the next one as ``{"event", "data", "id"}`` (no
    ``id`` when the message has none), comments skipped."""

    def __init__(self, response: httpx.Response):
        self._lines = response.iter_lines()

    def next(self) -> dict:
        message: dict = {}
        for line in self._lines:
            if not line:
                if message:
                    return message
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                message[field] = json.loads(value) if field == "data" else value
        raise AssertionError("the stream ended")


def events(client: httpx.Client, session_id: int) -> list[dict]:
    return client.get(f"/sessions/{session_id}/events", params={"limit": 1000}).json()["items"]


def test_the_stream_sends_an_event_as_the_event_log_has_it_with_its_id(client: httpx.Client):
    created = create_session(client)
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    with client.stream("GET", "/live", params={"session_id": session_id}) as response:
        messages = Messages(response)
        client.post(f"/threads/{thread_id}/pause").raise_for_status()
        paused = messages.next()
        live.hub.publish("batch.sent", "a notice", session_id=session_id, data={"batch_id": "b"})
        notice = messages.next()
    (logged,) = [e for e in events(client, session_id) if e["kind"] == "thread.paused"]
    assert paused["event"] == "thread.paused" and paused["id"] == str(logged["id"])
    item = paused["data"]
    assert {key: item[key] for key in logged} == logged  # the same id, the row's time in the same format, ...
    assert item["event_id"] == logged["id"] and isinstance(item["seq"], int)  # as the dashboard reads it
    assert notice["event"] == "batch.sent" and "id" not in notice and notice["data"]["id"] is None
    assert REST_TIME.fullmatch(notice["data"]["time"]) and REST_TIME.fullmatch(item["time"])


def test_a_reconnect_with_last_event_id_gets_what_it_missed_first_then_the_live_events(client: httpx.Client):
    created = create_session(client)
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    with client.stream("GET", "/live", params={"session_id": session_id}) as response:
        client.post(f"/threads/{thread_id}/pause").raise_for_status()
        last_seen = Messages(response).next()["id"]
    client.post(f"/threads/{thread_id}/resume").raise_for_status()  # while the reader is away
    client.post(f"/threads/{thread_id}/pause").raise_for_status()
    missed = [e for e in events(client, session_id) if e["id"] > int(last_seen)]
    assert [e["kind"] for e in missed] == ["thread.running", "thread.paused"]
    with client.stream("GET", "/live", params={"session_id": session_id},
                       headers={"Last-Event-ID": last_seen}) as response:
        messages = Messages(response)
        backlog = [messages.next() for _ in missed]
        client.post(f"/threads/{thread_id}/resume").raise_for_status()
        then = messages.next()
    assert [m["data"] for m in backlog] == [{"seq": None, "event_id": e["id"], **e} for e in missed]
    assert [m["id"] for m in backlog] == [str(e["id"]) for e in missed]
    assert then["event"] == "thread.running" and int(then["id"]) == events(client, session_id)[-1]["id"]


def test_a_last_event_id_of_another_database_opens_the_stream_from_now(client: httpx.Client):
    """An id past the newest event (a data folder replaced meanwhile) would hide the events up to it."""
    created = create_session(client)
    with client.stream("GET", "/live", params={"session_id": created["id"]},
                       headers={"Last-Event-ID": str(10**12)}) as response:
        client.post(f"/threads/{created['threads'][0]['id']}/pause").raise_for_status()
        assert Messages(response).next()["event"] == "thread.paused"


def test_events_published_out_of_order_go_out_in_id_order(client: httpx.Client, live_server: LiveServer):
    """A step's items are held until its BATCH is out, so a later commit's item can be published first: the
    stream still sends the events in id order, each once, so that its last ``id:`` covers every one before."""
    session_id = create_session(client)["id"]
    held: list[dict] = []
    with client.stream("GET", "/live", params={"session_id": session_id}) as response:
        messages = Messages(response)
        with live_server.sessions() as db:
            live.hold(db, held)
            first = log_event(db, "test.held", "held 1", session_id=session_id)
            second = log_event(db, "test.held", "held 2", session_id=session_id)
            db.commit()
        with live_server.sessions() as db:
            third = log_event(db, "test.later", "published at once", session_id=session_id)
            db.commit()  # its item is published before those held
        live.publish_held(held)
        with live_server.sessions() as db:
            fourth = log_event(db, "test.after", "after", session_id=session_id)
            db.commit()
        sent = [messages.next() for _ in range(4)]
    assert [int(m["id"]) for m in sent] == [first, second, third, fourth]
    assert [m["data"]["message"] for m in sent] == ["held 1", "held 2", "published at once", "after"]


def test_the_stream_of_an_unknown_session_is_a_404(client: httpx.Client):
    response = client.get("/live", params={"session_id": 424242})
    assert response.status_code == 404 and response.json() == {"detail": "session 424242 not found"}


def test_a_rig_never_seen_is_a_404_naming_the_known_rigs(client: httpx.Client, live_server: LiveServer):
    create_session(client, rig="rig-Named")
    with live_server.sessions() as db:
        log_event(db, "rig.connected", "rig 'rig-Hello' connected", data={"rig": "rig-Hello", "channels": 2})
        db.commit()
    for known in ("rig-Named", "rig-Hello"):  # named by a session, or connected once
        response = client.get(f"/rigs/{known}")
        assert response.status_code == 200 and response.json()["connected"] is False
    response = client.get("/rigs/rig-named")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith("rig 'rig-named' not found: it never connected to this server and no session names it")
    assert "did you mean 'rig-Named'?" in detail and "'rig-Hello'" in detail and "'rig-Named'" in detail


def test_a_rig_lists_only_threads_that_have_not_ended_as_scoring_its_channels(client: httpx.Client,
                                                                              live_server: LiveServer):
    created = create_session(client, rig="rig-Scored", threads=[
        thread_config("a", objective={"channels": [1]}), thread_config("b", objective={"channels": [1]}),
        thread_config("c", objective={"channels": [2]}), thread_config("d", objective={"channels": [0]})])
    a, b, c, d = (t["id"] for t in created["threads"])
    client.post(f"/threads/{b}/stop").raise_for_status()
    with live_server.sessions() as db:
        db.get(Thread, c).status = ThreadStatus.FINISHED
        db.commit()
    client.post(f"/threads/{d}/pause").raise_for_status()  # paused: it goes on later
    assert client.get("/rigs/rig-Scored").json()["scored_channels"] == {"0": ["d"], "1": ["a"]}


def test_each_curve_segment_after_a_retarget_names_its_channels(client: httpx.Client, live_server: LiveServer):
    created = create_session(client, rig="rig-Labels", threads=[thread_config(objective={"channels": [0]})])
    session_id, thread = created["id"], created["threads"][0]
    with live_server.sessions() as db:
        log_event(db, "rig.connected", "rig 'rig-Labels' connected",
                  data={"rig": "rig-Labels", "channels": 3, "channel_labels": ["blocks.6:67", "blocks.6:12", "blocks.6:5"]})
        db.commit()
    add_generations(live_server, session_id, thread["id"], [[1.0], [2.0]], objective=thread["objective"])
    retargeted = client.post(f"/threads/{thread['id']}/retarget", json={"objective": {"channels": [2]}}).json()
    add_generations(live_server, session_id, thread["id"], [[3.0]], first=2, objective=retargeted["objective"])
    two = client.post(f"/threads/{thread['id']}/retarget", json={"objective": {"channels": [0, 1], "combine": "sum"}})
    add_generations(live_server, session_id, thread["id"], [[4.0]], first=3, objective=two.json()["objective"])
    assert client.get(f"/threads/{thread['id']}/curve").json()["segments"] == [
        {"from_generation": 0, "score_label": "score (spikes/s) of ch 0 (blocks.6:67)"},
        {"from_generation": 2, "score_label": "score (spikes/s) of ch 2 (blocks.6:5)"},
        {"from_generation": 3, "score_label": "score (spikes/s), sum of ch 0 (blocks.6:67), ch 1 (blocks.6:12)"}]
    assert client.get(f"/threads/{thread['id']}").json()["score_label"] == "score (spikes/s)"  # the axis: all segments


def test_an_expression_objective_carries_no_combine(client: httpx.Client):
    expression = {"expression": "rate(0) - 0.5 * rate(1)"}
    created = create_session(client, threads=[thread_config(objective=expression)])
    session_id, thread_id = created["id"], created["threads"][0]["id"]
    assert client.get(f"/threads/{thread_id}").json()["objective"] == expression
    assert "combine" not in client.get(f"/sessions/{session_id}").json()["config"]["threads"][0]["objective"]
    retargeted = client.post(f"/threads/{thread_id}/retarget", json={"objective": {"expression": "rate(1)"}})
    assert retargeted.json()["objective"] == {"expression": "rate(1)"}
    (event,) = [e for e in events(client, session_id) if e["kind"] == "thread.retargeted"]
    assert event["data"]["objective"] == {"expression": "rate(1)"}
    channels = create_session(client, threads=[thread_config(objective={"channels": [1, 2], "combine": "sum"})])
    assert channels["threads"][0]["objective"] == {"channels": [1, 2], "combine": "sum"}  # channels keep it


def test_a_stored_config_whose_expression_has_combine_still_loads():
    stored = session_config(threads=[thread_config(objective={"channels": None, "combine": "mean",
                                                              "expression": "zscore(rate(3))"})])
    config = SessionConfig.stored(stored)
    assert config.model_dump(mode="json")["threads"][0]["objective"] == {"channels": None,
                                                                         "expression": "zscore(rate(3))"}
