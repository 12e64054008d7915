"""`actmax session watch` while its server goes away and comes back: the lines saying so on stderr start with the
time, as its lines per generation do (the real app over HTTP, stopped and served again on the same port)."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading

import httpx

from server.main import create_app
from tests.server.conftest import TOKEN, LiveServer, WakeCounter, make_settings, served, session_config

CLOCK = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}"  # local time and its offset from UTC, as the log lines


def lines_of(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def next_line(lines: queue.Queue, seen: list[str], text: str) -> str:
    """The next line holding ``text`` (the ones before it kept in ``seen``)."""
    while True:
        line = lines.get(timeout=60)
        assert line is not None, seen
        seen.append(line)
        if text in line:
            return line


def test_the_lines_of_a_server_gone_and_back_start_with_their_time(tmp_path):
    live = LiveServer(make_settings(tmp_path / "data"), WakeCounter())
    app = create_app(live.settings, live.sessions, engine=live.engine)
    try:
        with served(app) as url:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            session = httpx.post(f"{url}/sessions", headers=auth, json=session_config(name="away")).json()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("ACTMAX_")},
                   "ACTMAX_URL": url, "ACTMAX_TOKEN": TOKEN}
            watch = subprocess.Popen([sys.executable, "-m", "server.cli", "session", "watch", str(session["id"]),
                                      "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
            out: queue.Queue[str | None] = queue.Queue()
            err: queue.Queue[str | None] = queue.Queue()
            readers = [threading.Thread(target=lines_of, args=(stream, into), daemon=True)
                       for stream, into in ((watch.stdout, out), (watch.stderr, err))]
            for reader in readers:
                reader.start()
            printed: list[str] = []
            next_line(out, printed, "ref mean")  # the header: it polls
        try:
            said: list[str] = []
            gone = next_line(err, said, "cannot reach the server")
            with served(app, int(url.rsplit(":", 1)[1])):
                back = next_line(err, said, "the server answers again")
                assert httpx.post(f"{url}/sessions/{session['id']}/stop", headers=auth).status_code == 200
                assert watch.wait(timeout=60) == 0
        finally:
            watch.kill()
            for reader in readers:
                reader.join(10)
            watch.stdout.close()
            watch.stderr.close()
        assert re.fullmatch(rf"{CLOCK} actmax session watch: cannot reach the server at {url}: .*; waiting for it "
                            r"\(Ctrl-C to stop\)", gone), gone
        assert re.fullmatch(rf"{CLOCK} actmax session watch: the server answers again after \d+ s", back), back
        while (line := out.get(timeout=10)) is not None:
            printed.append(line)
        assert re.fullmatch(rf"{CLOCK} t0 +stopped", printed[-2]) and printed[-1] == f"session {session['id']} stopped"
    finally:
        live.db_engine.dispose()
