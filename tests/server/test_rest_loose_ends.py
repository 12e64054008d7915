"""REST loose ends: a retarget to the objective a thread has logs nothing; one registry of the event kinds the server
logs, which the events filter checks a kind against; a note's generations checked against its thread; resuming an
ended session or a finished thread refused naming the way on; ``combine`` refused with an expression; and the
OpenAPI document declaring no 404 the rig list never returns.

Every request is real HTTP to the app over a real SQLite file (``live_server``, a stand-in engine)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx

from server.objectives import Objective
from server.session_config import SessionConfig
from server.store import records
from server.store.models import EVENT_KINDS, LIVE_NOTICES, Thread, ThreadStatus
from tests.server.conftest import LiveServer, session_config, thread_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "rest_api.md"
LOGGERS = {"log_in": 3, "log_event": 1, "log_event_once": 1, "set_thread_error": 2}  # function -> kind's position
REGISTRY = ROOT / "server" / "store" / "models.py"  # EVENT_KINDS itself, which the scan checks
NOT_KINDS = {"rig.log", "session.nwb"}  # shaped like a kind: file names


def events(client: httpx.Client, session_id: int, kind: str) -> list[dict]:
    response = client.get(f"/sessions/{session_id}/events", params={"kind": kind, "limit": 1000})
    assert response.status_code == 200, response.text
    return response.json()["items"]


# ---------------------------------------------------------------- the registry of event kinds

def kinds_in(source: str, subjects: set[str]) -> tuple[set[str], set[str], set[str]]:
    """What ``source`` logs and publishes: (the kinds it logs, the live notices it publishes, the prefixes of kinds
    it builds with an f-string). A kind is the constant given as the kind of a logging call (``LOGGERS``,
    ``kind=``), or any constant shaped ``subject.what_happened`` with a known subject (a kind passed on, as the
    event tuples the engine logs); a constant ``kind=`` of a ``dict(...)`` or ``publish(...)`` is a notice."""
    logged, notices, built = set(), set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[a-z]+\.[a-z_]+",
                                                                                            node.value):
            if node.value.split(".")[0] in subjects and node.value not in NOT_KINDS:
                logged.add(node.value)
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        given = [k.value for k in node.keywords if k.arg == "kind"]
        if name in LOGGERS and len(node.args) > LOGGERS[name]:
            given.append(node.args[LOGGERS[name]])
        for kind in given:
            if isinstance(kind, ast.Constant) and name in ("dict", "publish"):
                notices.add(kind.value)
            elif isinstance(kind, ast.Constant):
                logged.add(kind.value)
            elif isinstance(kind, ast.JoinedStr) and isinstance(kind.values[0], ast.Constant):
                built.add(kind.values[0].value)
    return logged - notices, notices, built


def test_the_scan_sees_each_form() -> None:
    source = ("log_event(db, 'a.b', m)\nsteps.log_in(db, s, t, 'new.kind', m)\nrecords.log_event_once(db, kind='c.d')\n"
              "set_thread_error(db, t, 'thread.x', m)\nEVENT = ('thread.y', m, {})\nopen('rig.log')\n"
              "dict(kind='batch.z', message=m)\nlog_event(db, f'thread.{status.value}', m)\nlog_event(db, kind, m)\n")
    assert kinds_in(source, {"thread", "rig"}) == ({"a.b", "new.kind", "c.d", "thread.x", "thread.y"}, {"batch.z"},
                                                   {"thread."})


def test_every_kind_the_server_logs_is_registered_and_every_registered_one_is_logged() -> None:
    subjects = {kind.split(".")[0] for kind in (*EVENT_KINDS, *LIVE_NOTICES)}
    logged, notices, built = set(), set(), set()
    for path in sorted((ROOT / "server").rglob("*.py")):
        if path == REGISTRY:
            continue
        found = kinds_in(path.read_text(encoding="utf-8"), subjects)
        logged |= found[0]
        notices |= found[1]
        built |= found[2]
    assert built == {"thread."}  # a thread's status change: f"thread.{status}"
    logged = (logged - notices) | {f"thread.{status.value}" for status in ThreadStatus}
    assert logged - set(EVENT_KINDS) == set(), "add these to server.store.models.EVENT_KINDS"
    assert set(EVENT_KINDS) - logged == set(), "EVENT_KINDS names kinds the server no longer logs"
    assert notices == set(LIVE_NOTICES) and not notices & logged


def test_the_docs_name_every_kind() -> None:
    page = DOC.read_text(encoding="utf-8")
    events_section = page.split("\n## Events\n")[1].split("\n## ")[0]
    live_section = page.split("\n## Live stream\n")[1].split("\n## ")[0]
    assert [kind for kind in EVENT_KINDS if f"`{kind}`" not in events_section] == []
    assert [kind for kind in LIVE_NOTICES if f"`{kind}`" not in live_section] == []


def test_an_unknown_kind_is_refused_with_the_closest_one(client: httpx.Client) -> None:
    session_id = client.post("/sessions", json=session_config()).json()["id"]
    assert [e["kind"] for e in events(client, session_id, "session.created")] == ["session.created"]
    assert events(client, session_id, "generation.completed") == []  # a real kind: none yet
    refused = client.get(f"/sessions/{session_id}/events", params={"kind": [
        "session.created", "generation.complete", "Thread.Finished", "batch.sent", "nothing"]})
    assert refused.status_code == 422
    messages = [(item["loc"], item["msg"]) for item in refused.json()["detail"]]
    assert messages[:3] == [
        (["query", "kind"], "'generation.complete' is no kind of event the server logs; did you mean "
                            "'generation.completed'?"),
        (["query", "kind"], "'Thread.Finished' is no kind of event the server logs; did you mean 'thread.finished'?"),
        (["query", "kind"], "'batch.sent' is no kind of event the server logs; it is a live notice, not logged: "
                            "`GET /live` sends it")]
    assert messages[3][1].startswith("'nothing' is no kind of event the server logs; the kinds: session.created, ")


# ---------------------------------------------------------------- retarget

def test_a_retarget_to_the_objective_the_thread_has_answers_it_unchanged(client: httpx.Client,
                                                                         live_server: LiveServer) -> None:
    session = client.post("/sessions", json=session_config(threads=[thread_config(objective={"channels": [1]})])).json()
    session_id, thread_id = session["id"], session["threads"][0]["id"]

    def retarget(objective: dict) -> dict:
        response = client.post(f"/threads/{thread_id}/retarget", json={"objective": objective})
        assert response.status_code == 200, response.text
        return response.json()

    wakes = live_server.engine.wakes
    assert retarget({"channels": [1], "combine": "mean"})["objective"] == {"channels": [1], "combine": "mean"}
    assert events(client, session_id, "thread.retargeted") == [] and live_server.engine.wakes == wakes
    expression = {"expression": "rate(0) - 0.5 * rate(1)"}
    for _ in range(2):  # a retry after a timeout
        assert retarget(expression)["objective"] == expression
    assert retarget({**expression, "combine": "mean"})["objective"] == expression  # stored without the default
    (event,) = events(client, session_id, "thread.retargeted")
    assert event["data"]["previous"] == {"channels": [1], "combine": "mean"} and event["data"]["objective"] == \
        expression
    assert live_server.engine.wakes == wakes + 1


def test_combine_with_an_expression_is_refused_and_stored_configs_with_it_still_load(
        client: httpx.Client, live_server: LiveServer) -> None:
    thread_id = client.post("/sessions", json=session_config()).json()["threads"][0]["id"]
    refused = client.post(f"/threads/{thread_id}/retarget",
                          json={"objective": {"expression": "rate(1)", "combine": "sum"}})
    assert refused.status_code == 422
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == ["body", "objective"] and problem["msg"] == (
        '"combine": "sum" applies to "channels" only; an expression combines its own terms: write '
        '"sum(...)" around them, e.g. "sum(rate(1), rate(2))"')
    objective = {"expression": "rate(1)", "combine": "sum"}
    created = client.post("/sessions", json=session_config(threads=[thread_config(objective=objective)]))
    assert created.status_code == 422 and created.json()["detail"][0]["loc"] == ["body", "threads", 0, "objective"]
    stored = SessionConfig.stored(session_config(threads=[thread_config(objective={"channels": None, **objective})]))
    assert stored.model_dump(mode="json")["threads"][0]["objective"] == {"channels": None, "expression": "rate(1)"}
    # A thread's or generation's row written before the check: the engine, the curve and the retarget message
    # read it back (built and described as the expression it is).
    with live_server.sessions.begin() as db:
        db.get(Thread, thread_id).objective_json = objective
    assert Objective.from_config(objective).n_channels == 2
    assert client.get(f"/threads/{thread_id}/curve").status_code == 200
    retargeted = client.post(f"/threads/{thread_id}/retarget", json={"objective": {"channels": [0]}})
    assert retargeted.status_code == 200, retargeted.text


# ---------------------------------------------------------------- notes

def test_a_note_s_generations_are_checked_against_its_thread(client: httpx.Client) -> None:
    session = client.post("/sessions", json=session_config(threads=[
        thread_config("a", n_generations=6), thread_config("b", n_generations=6)])).json()
    session_id, (a, b) = session["id"], (t["id"] for t in session["threads"])

    def note(thread_id: int, generations: list[int]) -> httpx.Response:
        return client.post(f"/sessions/{session_id}/notes",
                           json={"text": "blink", "thread_id": thread_id, "generations": generations})

    assert note(a, [5, 5]).status_code == 201  # the last of 6, numbered from 0
    for generations in ([6, 6], [4, 10]):
        refused = note(a, generations)
        assert refused.status_code == 422 and refused.json()["detail"] == [{
            "type": "value_error", "loc": ["body", "generations"],
            "msg": f"thread {a} 'a' has no generation {generations[1]}: it runs 6 generation(s), numbered from 0, "
                   "so its last is 5"}]
    client.post(f"/threads/{b}/stop").raise_for_status()  # ended: its generations no longer grow
    assert note(b, [0, 5]).status_code == 201
    assert note(b, [6, 6]).json()["detail"][0]["msg"].endswith("so its last is 5")
    assert len(events(client, session_id, "session.note")) == 2


# ---------------------------------------------------------------- resume

def test_resuming_an_ended_session_or_a_finished_thread_is_refused_naming_the_way_on(client: httpx.Client,
                                                                                    live_server: LiveServer) -> None:
    stopped, finished = (client.post("/sessions", json=session_config()).json() for _ in range(2))
    client.post(f"/sessions/{stopped['id']}/stop").raise_for_status()
    refused = client.post(f"/sessions/{stopped['id']}/resume")
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"cannot resume session {stopped['id']}: it is stopped, which is final; create a new session to go on")

    thread_id = finished["threads"][0]["id"]
    with live_server.sessions.begin() as db:  # as the engine leaves a thread that ran all its generations
        records.finish_thread(db, thread_id)
        records.end_session_if_done(db, finished["id"])
    refused = client.post(f"/sessions/{finished['id']}/resume")
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"cannot resume session {finished['id']}: it is finished (every thread ended); `POST /threads/{{id}}/extend` "
        "goes on with a finished evolution, `POST /threads/{id}/resume` with a failed thread once its cause is fixed")
    refused = client.post(f"/threads/{thread_id}/resume")
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"cannot resume thread {thread_id}: it is finished (allowed from: failed, paused); extend it to go on: "
        f"`POST /threads/{thread_id}/extend` with more generations")
    with live_server.sessions() as db:
        assert db.get(Thread, thread_id).status == ThreadStatus.FINISHED


# ---------------------------------------------------------------- OpenAPI

def test_the_rig_list_declares_no_404_and_a_rig_does(live_server: LiveServer) -> None:
    paths = httpx.get(f"{live_server.url}/openapi.json").json()["paths"]
    assert "404" not in paths["/rigs"]["get"]["responses"]
    assert "404" in paths["/rigs/{rig}"]["get"]["responses"]
    assert "404" in paths["/threads/{thread_id}/curve"]["get"]["responses"]
