"""REST limits through real HTTP: token before body, body size, sizes a client chooses, 4xx not 500."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from optimizers import MAX_POPULATION
from tests.server.conftest import TOKEN, LiveServer, session_config, thread_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, headers=AUTH, timeout=10) as c:
        yield c


def post_raw(live_server: LiveServer, body: bytes, headers: dict) -> tuple[int, dict]:
    """POST /sessions with ``body`` exactly as given (httpx would re-encode NaN)."""
    url = urlsplit(live_server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST", "/sessions", body=body, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_token_is_checked_before_a_declared_huge_body_is_read(live_server: LiveServer):
    """The server answers 401 after the headers alone: the 1 GB the request announces never arrives."""
    url = urlsplit(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000\r\n\r\n{")
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 401"), head
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(f"POST /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Content-Length: 1000000000\r\n\r\n{".encode())
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413"), head


def test_chunked_body_over_the_limit_is_refused_while_streaming(live_server: LiveServer):
    limit = live_server.settings.max_body_bytes

    def chunks():
        yield b'{"name": "' + b"x" * limit
        yield b'"}'

    with httpx.Client(base_url=live_server.url, headers=AUTH, timeout=10) as c:
        response = c.post("/sessions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "ACTMAX_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("config, where", [
    (session_config(threads=[thread_config(optimizer_params={"population": MAX_POPULATION + 1})]), "optimizer_params"),
    (session_config(threads=[thread_config(n_generations=10**9)]), "n_generations"),
    (session_config(notes="n" * 10_001), "notes"),
    (session_config(animal="a" * 201), "animal"),
    (session_config(threads=[thread_config(name=f"t{i}") for i in range(65)]), "threads"),
    (session_config(threads=[thread_config(optimizer_params={"p": [[[[1]]]]})]), "optimizer_params"),
    (session_config(references={"source": "~no-such-user-here/images"}), "source"),
])
def test_sizes_a_client_chooses_are_bounded_with_422(client: httpx.Client, config: dict, where: str):
    response = client.post("/sessions", json=config)
    assert response.status_code == 422, response.text
    assert any(where in map(str, problem["loc"]) for problem in response.json()["detail"]), response.text


def test_deep_nesting_and_non_finite_numbers_are_422(live_server: LiveServer):
    nested = "[" * 600 + "]" * 600
    base = json.dumps(session_config(threads=[thread_config(optimizer_params={"sigma0": 0.5})]))
    for body in (base.replace("0.5", nested), base.replace("0.5", "NaN"), base.replace("0.5", "Infinity"),
                 json.dumps(session_config()).replace('"rig-A"', '"rig-A", "response_window_ms": [NaN, 1]')):
        status, payload = post_raw(live_server, body.encode(), AUTH)
        assert status == 422, (body[:80], payload)


@pytest.mark.parametrize("path", ["/sessions/9223372036854775808", "/threads/99999999999999999999",
                                  "/generations/-1", "/sessions/1/events?offset=9223372036854775808",
                                  "/threads/1/manifold.png?plane=18446744073709551616",
                                  "/stimuli/" + "s" * 129])
def test_out_of_range_ids_are_422(client: httpx.Client, path: str):
    assert client.get(path).status_code == 422


def test_api_description_and_health_are_open_the_rest_needs_the_token(live_server: LiveServer):
    with httpx.Client(base_url=live_server.url, timeout=10) as anonymous:
        for path in ("/health", "/docs", "/redoc", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.get("/sessions").status_code == 401
