"""A query parameter a route does not take is a 422 naming it and the ones the route takes, on every route of the
real app served over HTTP: a misspelt filter (``?thread=3`` for ``thread_id``) answered everything, unfiltered."""

from __future__ import annotations

import httpx

from tests.server.conftest import TOKEN, LiveServer, session_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def problems(response: httpx.Response) -> list[tuple[list, str]]:
    assert response.status_code == 422, response.text
    return [(problem["loc"], problem["msg"]) for problem in response.json()["detail"]]


def test_a_misspelt_filter_is_refused_with_the_parameters_the_route_takes(live_server: LiveServer):
    with httpx.Client(base_url=live_server.url, headers=AUTH) as client:
        session = client.post("/sessions", json=session_config(name="typos")).json()
        thread_id = session["threads"][0]["id"]
        events = f"/sessions/{session['id']}/events"
        assert problems(client.get(events, params={"thread": thread_id})) == [(["query", "thread"], (
            "unknown query parameter 'thread': GET /sessions/{session_id}/events takes offset, limit, kind, thread_id "
            "(did you mean 'thread_id'?)"))]
        assert client.get(events, params={"thread_id": thread_id, "limit": 5}).status_code == 200
        # Each unknown one is named; one nothing is close to gets no guess.
        assert [loc for loc, _ in problems(client.get(events, params={"Limit": 5, "page": 2}))] == [
            ["query", "Limit"], ["query", "page"]]
        assert problems(client.get(events, params={"page": 2}))[0][1].endswith("offset, limit, kind, thread_id")
        # A route that takes none and a POST say so too.
        assert problems(client.get("/rigs", params={"connected": "true"})) == [(["query", "connected"], (
            "unknown query parameter 'connected': GET /rigs takes no query parameters"))]
        stopped = client.post(f"/sessions/{session['id']}/stop", params={"force": 1})
        assert "POST /sessions/{session_id}/stop takes no query parameters" in problems(stopped)[0][1]
        assert client.get(f"/threads/{thread_id}").status_code == 200
        assert "(did you mean 'status'?)" in problems(client.get(f"/threads/{thread_id}/generations",
                                                                 params={"state": "complete"}))[0][1]
    assert httpx.get(f"{live_server.url}/health?nocache=1").status_code == 200  # a monitor's cache-buster


def test_a_url_of_many_unknown_parameters_gets_the_first_ones_and_a_count(live_server: LiveServer):
    response = httpx.get(f"{live_server.url}/sessions", headers=AUTH, params={f"p{i}": i for i in range(25)})
    listed = problems(response)
    assert [loc for loc, _ in listed[:10]] == [["query", f"p{i}"] for i in range(10)]
    assert listed[10:] == [(["query"], "15 more unknown query parameters not listed")]


def test_every_operation_declares_the_422_of_a_parameter_it_does_not_take(live_server: LiveServer):
    document = httpx.get(f"{live_server.url}/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/health":  # takes any query: an uptime monitor's cache-buster
                assert "422" not in operation["responses"]
                continue
            schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/HTTPValidationError"}, (method, path)


def test_a_parameter_of_one_value_given_twice_is_refused_and_a_list_parameter_takes_several(live_server: LiveServer):
    """``?limit=1&limit=2`` read only the last value, and ``?kind=synthetic&kind=reference`` only the references."""
    with httpx.Client(base_url=live_server.url, headers=AUTH) as client:
        session = client.post("/sessions", json=session_config(name="twice")).json()
        thread_id = session["threads"][0]["id"]
        assert problems(client.get("/sessions?limit=1&limit=2")) == [(["query", "limit"],
                                                                      "limit is given 2 times: give it once")]
        presentations = f"/threads/{thread_id}/presentations?kind=synthetic&kind=reference&generation=0"
        assert [loc for loc, _ in problems(client.get(presentations))] == [["query", "kind"]]
        events = client.get(f"/sessions/{session['id']}/events?kind=session.created&kind=session.note")
        assert events.status_code == 200 and [e["kind"] for e in events.json()["items"]] == ["session.created"]
