"""The REST server against hostile clients, through real HTTP: the REST port's connection cap and request timeout,
the accept-error log, eigenbasis files that are not regular files, the cap on active threads, an empty host,
422s that do not echo the input, and the browser security headers."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from server import ServerError
from server.api.connections import OncePerPeriod
from server.main import create_app
from server.serve import bind_http, http_config, raise_open_file_limit
from server.session_config import MAX_MESSAGE
from server.settings import Settings
from tests.server.conftest import TOKEN, LiveServer, WakeCounter, session_config, thread_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def serve(settings: Settings) -> Iterator[tuple[str, LiveServer]]:
    """The app behind ``actmax serve``'s own uvicorn config (``http_config``), on a free loopback port."""
    live = LiveServer(settings, WakeCounter())
    server = uvicorn.Server(http_config(create_app(settings, live.sessions, engine=live.engine), settings, 10_000))
    sock = bind_http("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", live
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        live.db_engine.dispose()


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def is_closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (waits up to its timeout for that)."""
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_connections_over_the_cap_get_503_at_once_and_unfinished_requests_are_closed(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, token=TOKEN, http_max_connections=3, http_request_timeout_s=0.5)
    with serve(settings) as (url, _):
        stream = connect(url)  # a request that has arrived in full is never cut short (a dashboard's live stream)
        stream.sendall(f"GET /live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")
        slow = [connect(url) for _ in range(2)]  # slowloris: headers that never end
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.1)  # let the server take them (a timeout would only close them: nothing asserted on it)
        over = connect(url)
        over.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = over.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 503") and "ACTMAX_HTTP_MAX_CONNECTIONS" in answer, answer
        assert all(is_closed_by_server(sock) for sock in slow)  # after http_request_timeout_s
        stream.setblocking(False)  # its timer fired before theirs: still open
        with pytest.raises(BlockingIOError):
            while stream.recv(4096):  # data (a keep-alive comment) is fine; b"" (closed) is not
                pass
            pytest.fail("the live stream was closed")
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        for sock in (stream, over, *slow):
            sock.close()


def test_a_connection_idle_for_as_long_as_httpx_keeps_one_is_still_served(tmp_path: Path):
    """httpx reuses a connection idle for up to 5 s: the server must not close one sooner, else a request that goes
    out as it closes gets no answer ("Server disconnected without sending a response", or a reset)."""
    with serve(Settings(data_dir=tmp_path, token=TOKEN)) as (url, _):
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        for pause in (0, httpx.Limits().keepalive_expiry + 0.5):
            time.sleep(pause)
            connection.request("GET", "/health")  # on the same socket: a closed one raises RemoteDisconnected
            response = connection.getresponse()
            assert response.status == 200 and response.read()
        connection.close()


def test_the_open_file_limit_is_raised_and_connections_are_capped_below_it(tmp_path: Path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"needs a finite hard open-file limit above 256, not {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raise_open_file_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    settings = Settings(data_dir=tmp_path, token=TOKEN, http_max_connections=512)
    assert http_config(None, settings, open_files=100).limit_concurrency == 50  # the rest for ZeroMQ and files
    assert http_config(None, settings, open_files=100_000).limit_concurrency == 512


def test_accept_errors_are_logged_once_a_period_with_a_count_and_no_traceback():
    """asyncio's own report of an accept that ran out of files, through its exception handler, as it repeats."""
    now = [0.0]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("asyncio")
    once = OncePerPeriod("socket.accept() out of system resource", "the hint", clock=lambda: now[0])
    logger.addFilter(once)
    logger.addHandler(handler)
    loop = asyncio.new_event_loop()
    try:
        with socket.socket() as sock:
            for _ in range(3):
                for _ in range(1000):
                    loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                                 "exception": OSError(24, "Too many open files"), "socket": sock})
                now[0] += 60
    finally:
        loop.close()
        logger.removeHandler(handler)
        logger.removeFilter(once)
    assert [(r.getMessage(), r.exc_info) for r in records] == [
        ("socket.accept() out of system resource (OSError: [Errno 24] Too many open files); the hint", None),
        *[("socket.accept() out of system resource (OSError: [Errno 24] Too many open files); the hint; 999 more "
           "like it since the last such line, not logged", None)] * 2]
    assert once.filter(logging.LogRecord("asyncio", logging.ERROR, "", 0, "another error", (), None))  # untouched


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, LiveServer]]:
    """A server that takes at most 3 active threads."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("capped") / "data", token=TOKEN, max_active_threads=3)
    with serve(settings) as (url, live), httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        yield client, live


def test_an_eigenbasis_that_is_not_a_regular_file_is_a_422_naming_it(capped, tmp_path: Path):
    client, _ = capped
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it to read would wait for a writer: the request must not hang
    for path, problem in [("/dev/null", "not a regular file"), (str(fifo), "not a regular file"),
                          (str(tmp_path), "is a folder")]:
        thread = thread_config(optimizer="hess-cma", optimizer_params={"eigenbasis": path})
        response = client.post("/sessions", json=session_config(threads=[thread]))
        assert response.status_code == 422, response.text
        (item,) = response.json()["detail"]
        assert item["loc"] == ["body", "threads", 0, "optimizer_params"]
        assert f"eigenbasis {path} " in item["msg"] and problem in item["msg"], item
    (tmp_path / "empty.npz").touch()  # numpy's EOFError: a 422 too, not a 500
    thread = thread_config(optimizer="hess-cma", optimizer_params={"eigenbasis": str(tmp_path / "empty.npz")})
    response = client.post("/sessions", json=session_config(threads=[thread]))
    assert response.status_code == 422 and "empty or cut short" in response.text, response.text


def test_active_threads_are_capped_across_the_server(capped):
    client, _ = capped
    two = [thread_config("a"), thread_config("b")]
    first = client.post("/sessions", json=session_config(threads=two))
    assert first.status_code == 201, first.text
    refused = client.post("/sessions", json=session_config(threads=two))
    assert refused.status_code == 422
    (item,) = refused.json()["detail"]
    assert item["loc"] == ["body", "threads"]
    assert "runs 2 active thread(s)" in item["msg"] and "at most 3 (ACTMAX_MAX_ACTIVE_THREADS)" in item["msg"]
    session_id = first.json()["id"]
    assert client.post(f"/sessions/{session_id}/threads", json=thread_config("c")).status_code == 201
    added = client.post(f"/sessions/{session_id}/threads", json=thread_config("d"))
    assert added.status_code == 422 and "runs 3 active thread(s)" in added.text
    assert client.post(f"/sessions/{session_id}/stop").status_code == 200  # stopped threads do not count
    assert client.post("/sessions", json=session_config(threads=two)).status_code == 201
    client.post(f"/sessions/{session_id + 1}/stop")


def test_sessions_list_takes_offset_and_a_bounded_limit(capped):
    client, _ = capped
    everything = client.get("/sessions").json()
    assert len(everything) >= 2
    assert client.get("/sessions", params={"offset": 1, "limit": 1}).json() == everything[1:2]
    assert client.get("/sessions", params={"limit": 1001}).status_code == 422


def test_validation_errors_do_not_echo_the_input(capped):
    client, _ = capped
    cases = {  # body -> (loc, words of the message)
        "channels": (session_config(threads=[thread_config(objective={"channels": [1] * 3000})]),
                     ["body", "threads", 0, "objective", "channels"], "channels repeat: 1;"),
        "age": (session_config(age="L" * 5000), ["body", "age"], "at most 200 characters"),
        "key": (session_config(threads=[thread_config(optimizer_params={"k" * 100_000: 1})]),
                ["body", "threads", 0, "optimizer_params"], "more characters"),
    }
    for name, (body, loc, words) in cases.items():
        response = client.post("/sessions", json=body)
        assert response.status_code == 422 and len(response.content) < MAX_MESSAGE + 500, (name, response.text[:300])
        (item,) = response.json()["detail"]
        assert item["loc"] == loc and words in item["msg"], (name, item)
    many = client.post("/sessions", json=session_config(**{f"x{i}": 1 for i in range(5000)})).json()["detail"]
    assert len(many) == 51 and many[-1]["msg"] == "4950 more problems not listed; fix these first"
    deep = client.post("/sessions", content=b"[" * 100_000 + b"]" * 100_000,
                       headers={"Content-Type": "application/json"})
    assert deep.status_code == 422 and deep.json()["detail"][0]["type"] == "json_invalid", deep.text


def test_an_unexpected_error_is_a_500_with_the_security_headers_on_a_connection_that_goes_on(tmp_path: Path, caplog):
    """An error no handler answers (here a broken transport under GET /rigs) is a JSON 500 with the headers every
    response carries, logged once with its traceback, and the next request on that connection is answered: raised
    on past the app, it made uvicorn drop the connection, and a client reusing it got a reset."""
    class BrokenTransport:
        def rigs(self):
            raise RuntimeError("the transport's rig table is gone")

    with serve(Settings(data_dir=tmp_path, token=TOKEN)) as (url, live), caplog.at_level(logging.ERROR):
        live.engine.transport = BrokenTransport()
        parts = urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        connection.request("GET", "/rigs", headers=AUTH)
        failed = connection.getresponse()
        assert (failed.status, json.loads(failed.read())) == (
            500, {"detail": "internal error (RuntimeError); the server logged the cause"})
        assert failed.getheader("x-frame-options") == "DENY" and failed.getheader("x-content-type-options") == "nosniff"
        connection.request("GET", "/health")  # the same socket: a dropped one raises
        assert connection.getresponse().status == 200
        connection.close()
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in logged] == ["GET /rigs failed"]
    assert "the transport's rig table is gone" in str(logged[0].exc_info[1])


def test_responses_carry_browser_security_headers(capped):
    client, _ = capped
    for path in ("/health", "/sessions", "/docs", "/ui/"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
    assert httpx.get(f"{client.base_url}/sessions").headers["x-frame-options"] == "DENY"  # a 401 too
    # The dashboard's files run only their own scripts (tests/browser checks the page works under it);
    # the API docs' pages keep their inline scripts.
    for path in ("/ui/", "/ui/app.js"):
        policy = client.get(path).headers["content-security-policy"]
        assert "script-src 'self';" in policy and "connect-src 'self'" in policy, path
    assert "content-security-policy" not in client.get("/docs").headers


def test_an_empty_rest_host_is_every_interface_not_loopback(tmp_path: Path):
    with bind_http("", 0) as sock:  # what uvicorn gets for ACTMAX_HTTP_HOST= or --host ""
        assert sock.getsockname()[0] in ("0.0.0.0", "::")
    with pytest.raises(ServerError, match=r"off loopback \(every interface\) it needs at least 32"):
        Settings(data_dir=tmp_path, token="short", http_host="").check_exposure(curve=False)
    Settings(data_dir=tmp_path, token="short", zmq_endpoint=f"ipc://{tmp_path}/rigs").check_exposure(curve=False)
