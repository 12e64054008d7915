"""Changing a thread mid-session: ``POST /threads/{id}/extend`` (an evolution goes on past its n_generations,
also once finished, from its stored optimizer state), a retarget that leaves the stored session config as it was
created, and thread actions repeated after they took effect (a retry) answering the thread unchanged.

The engine runs in-process over a real ZeroMQ transport and a real SQLite file with `RigClient` as the rig, or (for
the routes alone) the app with a stand-in engine; every request is real HTTP.
"""

from __future__ import annotations

import httpx
import numpy as np
from sqlalchemy import select

from rig_client.client import RigClient
from server.main import create_app
from server.store.models import Generation, Thread, ThreadStatus, decode_codes
from server.store.records import set_thread_error
from tests.server.conftest import LiveServer, served, session_config, thread_config
from tests.server.test_end_to_end import wait_until
from tests.server.test_engine import RIG, LiveEngine, answer


def events(api: httpx.Client, session_id: int, kind: str) -> list[dict]:
    return [e for e in api.get(f"/sessions/{session_id}/events", params={"limit": 1000}).json()["items"]
            if e["kind"] == kind]


def answer_until(rig: RigClient, done, what: str) -> None:
    """Answer every batch (rate i for the i-th stimulus shown) until ``done()``."""
    def step():
        if done():
            return True
        batch = rig.next_batch(timeout=0.5)
        if batch is not None:
            rig.send_results(batch.batch_id, answer(batch)).result(30)
        return False
    wait_until(step, 120, what)


def told(live: LiveEngine, thread_id: int) -> list[tuple[np.ndarray, list]]:
    """The thread's generations in order: their codes and scores."""
    with live.sessions() as db:
        return [(decode_codes(g.codes, g.n_stimuli), g.scores_json) for g in db.scalars(
            select(Generation).where(Generation.thread_id == thread_id).order_by(Generation.number))]


def thread_done(live: LiveEngine, thread_id: int) -> bool:
    with live.sessions() as db:
        return db.get(Thread, thread_id).status == ThreadStatus.FINISHED


def test_an_evolution_extended_while_it_runs_and_once_finished_evolves_as_one_created_that_long(tmp_path, endpoint):
    """Extended from 2 to 4 generations during its first, then once finished to 6, a thread asks exactly the codes of
    the same thread created with 6 (the rig answering the same): the finished one goes on from its stored optimizer
    state (a snapshot at generation 2, generation 3 replayed). The session's config keeps the 2 it was created with."""
    with LiveEngine(tmp_path / "data", endpoint) as live, RigClient(endpoint, RIG, channels=1) as rig, \
            served(create_app(live.settings, live.sessions, engine=live.engine)) as url, \
            httpx.Client(base_url=url, headers={"Authorization": "Bearer t"}, timeout=30) as api:
        whole = live.create(session={"name": "whole"}, n_generations=6)
        extended = live.create(session={"name": "extended"}, n_generations=2)
        session_id = api.get(f"/threads/{extended}").json()["session_id"]
        status = lambda: api.get(f"/threads/{extended}").json()["status"]  # noqa: E731

        assert rig.wait_connected(30)
        wait_until(lambda: len(told(live, extended)) == 1, 60, "its first generation asked")
        response = api.post(f"/threads/{extended}/extend", json={"n_generations": 4})
        assert response.status_code == 200, response.text
        assert (response.json()["n_generations"], response.json()["status"]) == (4, "running")
        answer_until(rig, lambda: status() == "finished", "the extended thread to finish")
        assert len(told(live, extended)) == 4
        assert api.get(f"/sessions/{session_id}").json()["status"] == "finished"

        response = api.post(f"/threads/{extended}/extend", json={"n_generations": 6})
        assert response.status_code == 200, response.text
        assert (response.json()["n_generations"], response.json()["status"]) == (6, "running")
        assert api.get(f"/sessions/{session_id}").json()["status"] == "active"
        answer_until(rig, lambda: status() == "finished" and thread_done(live, whole), "both threads to finish")

        again = api.post(f"/threads/{extended}/extend", json={"n_generations": 6})
        assert again.status_code == 422
        assert "has asked 6 generation(s) already: give more than 6" in again.json()["detail"][0]["msg"]
        session = api.get(f"/sessions/{session_id}").json()
        extensions = events(api, session_id, "thread.extended")
        finishes = events(api, session_id, "thread.finished")
    assert session["status"] == "finished" and session["config"]["threads"][0]["n_generations"] == 2
    assert [(e["message"], e["data"]) for e in extensions] == [
        (f"thread {extended} 'a' extended from 2 to 4 generations", {"from": 2, "to": 4}),
        (f"thread {extended} 'a' extended from 4 to 6 generations", {"from": 4, "to": 6})]
    assert [e["message"] for e in finishes] == [f"thread {extended} 'a' finished after {n} generations" for n in (4, 6)]
    ours, reference = told(live, extended), told(live, whole)
    assert len(ours) == len(reference) == 6
    for number, ((codes, scores), (same_codes, same_scores)) in enumerate(zip(ours, reference)):
        assert np.array_equal(codes, same_codes) and scores == same_scores, f"generation {number}"


def test_what_cannot_be_extended_is_refused_naming_why(client: httpx.Client, live_server: LiveServer) -> None:
    manifold = {"name": "map", "kind": "manifold", "generator": "dcgan-faces", "objective": {"channels": [3]},
                "manifold": {"source": "t0"}}
    retest = {"name": "again", "kind": "retest", "generator": "dcgan-faces", "objective": {"channels": [3]},
              "retest": {"source": "t0"}}
    session = client.post("/sessions", json=session_config(threads=[thread_config(n_generations=3), manifold,
                                                                    retest])).json()
    evolution, map_id, retest_id = (t["id"] for t in session["threads"])

    def extend(thread_id: int, n: int = 10) -> httpx.Response:
        return client.post(f"/threads/{thread_id}/extend", json={"n_generations": n})

    for thread_id, kind in ((map_id, "manifold"), (retest_id, "retest")):
        refused = extend(thread_id)
        assert refused.status_code == 409 and refused.json()["detail"] == (
            f"cannot extend thread {thread_id}: a {kind} thread has a fixed design; add a new {kind} thread to show "
            "more")
    misspelt = client.post(f"/threads/{evolution}/extend", json={"generations": 10})
    assert misspelt.status_code == 422
    assert any("did you mean 'n_generations'?" in item["msg"] for item in misspelt.json()["detail"])
    assert extend(evolution, 0).status_code == 422
    assert extend(999).status_code == 404

    with live_server.sessions() as db:  # finished, as the engine leaves it, while the map waited for it
        db.get(Thread, evolution).status = ThreadStatus.FINISHED
        db.commit()
    refused = extend(evolution)
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"cannot extend thread {evolution}: Manifold map {map_id} 'map' builds its grid on the 3 generations it has; "
        "let the map finish or stop it first, or add a new evolution thread")
    assert client.post(f"/threads/{map_id}/stop").status_code == 200
    wakes = live_server.engine.wakes
    extended = extend(evolution)
    assert extended.status_code == 200 and (extended.json()["status"], extended.json()["n_generations"]) == (
        "running", 10)
    assert live_server.engine.wakes == wakes + 1
    repeated = extend(evolution)  # a retry after a timeout: unchanged, no second event, no wake
    assert repeated.status_code == 200 and repeated.json()["n_generations"] == 10
    assert live_server.engine.wakes == wakes + 1
    shortened = extend(evolution, 5)
    assert shortened.status_code == 200 and shortened.json()["n_generations"] == 5
    assert [e["message"] for e in events(client, session["id"], "thread.extended")] == [
        f"thread {evolution} 't0' extended from 3 to 10 generations",
        f"thread {evolution} 't0' shortened from 10 to 5 generations"]

    with live_server.sessions() as db:
        set_thread_error(db, evolution, "thread.failed", "failed: boom", status=ThreadStatus.FAILED)
        db.commit()
    refused = extend(evolution)
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"cannot extend thread {evolution}: it is failed (allowed from: blocked, finished, paused, running, "
        "waiting_for_rig); resume it first")
    assert client.get(f"/sessions/{session['id']}").json()["config"]["threads"][0]["n_generations"] == 3


def test_a_stopped_thread_or_a_finished_one_of_a_stopped_session_is_not_extended(client: httpx.Client,
                                                                                 live_server: LiveServer) -> None:
    first, second = (client.post("/sessions", json=session_config()).json() for _ in range(2))
    stopped = first["threads"][0]["id"]
    client.post(f"/threads/{stopped}/stop").raise_for_status()
    refused = client.post(f"/threads/{stopped}/extend", json={"n_generations": 10})
    assert refused.status_code == 409 and refused.json()["detail"].endswith(
        "it is stopped (allowed from: blocked, finished, paused, running, waiting_for_rig); add a new thread to go on")
    finished = second["threads"][0]["id"]
    with live_server.sessions() as db:
        db.get(Thread, finished).status = ThreadStatus.FINISHED
        db.commit()
    client.post(f"/sessions/{second['id']}/stop").raise_for_status()
    refused = client.post(f"/threads/{finished}/extend", json={"n_generations": 10})
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"cannot extend thread {finished}: its session {second['id']} is stopped")


def test_a_retarget_leaves_the_stored_config_as_created_and_its_event_names_both_objectives(
        client: httpx.Client) -> None:
    session = client.post("/sessions", json=session_config(threads=[thread_config(objective={"channels": [1]})])).json()
    thread_id = session["threads"][0]["id"]
    retargeted = client.post(f"/threads/{thread_id}/retarget", json={"objective": {"channels": [0]}})
    assert retargeted.status_code == 200 and retargeted.json()["objective"]["channels"] == [0]
    stored = client.get(f"/sessions/{session['id']}").json()["config"]
    assert stored == session["config"] and stored["threads"][0]["objective"]["channels"] == [1]
    (event,) = events(client, session["id"], "thread.retargeted")
    assert event["message"] == (f"thread {thread_id} 't0' scores mean of channels [0] from generation 0 on "
                                "(before: mean of channels [1])")
    assert event["data"]["previous"]["channels"] == [1] and event["data"]["objective"]["channels"] == [0]


def test_pause_stop_and_resume_repeated_answer_the_thread_unchanged(client: httpx.Client,
                                                                    live_server: LiveServer) -> None:
    session = client.post("/sessions", json=session_config()).json()
    thread_id = session["threads"][0]["id"]
    wakes = live_server.engine.wakes
    for action, status in (("resume", "waiting_for_rig"), ("pause", "paused"), ("pause", "paused"), ("stop", "stopped"),
                           ("stop", "stopped")):
        response = client.post(f"/threads/{thread_id}/{action}")
        assert response.status_code == 200 and response.json()["status"] == status, (action, response.text)
    assert live_server.engine.wakes == wakes + 2  # only the changes wake the engine
    kinds = [e["kind"] for e in client.get(f"/sessions/{session['id']}/events").json()["items"]]
    assert kinds == ["session.created", "thread.paused", "thread.stopped", "session.finished"]
    refused = client.post(f"/threads/{thread_id}/resume")
    assert refused.status_code == 409 and "it is stopped" in refused.json()["detail"]
