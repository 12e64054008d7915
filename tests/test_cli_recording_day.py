"""`actmax session|thread` on a recording day whose plans change: a break for the whole session, a thread added
during it, an evolution extended, several threads steered at once, notes for the record, a create retried after
a timeout, and the times `session watch` prints. Each runs the CLI in this process against the real REST app
served over HTTP (its engine a stand-in that only counts wakes)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx
import pytest

from server import client_cli
from server.cli import main
from server.main import create_app
from server.store import records
from tests.server.conftest import TOKEN, LiveServer, WakeCounter, make_settings, served, session_config, thread_config

CLOCK = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}"  # local time and its offset from UTC, as the log lines


class Cli:
    """The served app, a REST client of it, and ``actmax ARGS`` run in this process."""

    def __init__(self, server: LiveServer, url: str, capsys) -> None:
        self.server, self.url, self.capsys = server, url, capsys
        # A session's first POST loads the generator: seconds under load, over httpx's default 5 s
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def __call__(self, *args: str) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of ``actmax ARGS``."""
        self.capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's refusals
            code = exit.code
        out, err = self.capsys.readouterr()
        return code, out, err

    def session(self, *thread_names: str, rig: str = "rig-A") -> dict:
        response = self.http.post("/sessions", json=session_config(
            rig=rig, threads=[thread_config(name, objective={"channels": [0]}) for name in thread_names]))
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, path: str, **params) -> dict:
        response = self.http.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


@contextmanager
def cli_against(tmp_path, monkeypatch, capsys, wrap=lambda app: app) -> Iterator[Cli]:
    for name in [k for k in os.environ if k.startswith("ACTMAX_")]:
        monkeypatch.delenv(name)
    server = LiveServer(make_settings(tmp_path / "data"), WakeCounter())
    try:
        with served(wrap(create_app(server.settings, server.sessions, engine=server.engine))) as url:
            monkeypatch.setenv("ACTMAX_URL", url)
            monkeypatch.setenv("ACTMAX_TOKEN", TOKEN)
            cli = Cli(server, url, capsys)
            try:
                yield cli
            finally:
                cli.http.close()
    finally:
        server.db_engine.dispose()


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys) -> Iterator[Cli]:
    with cli_against(tmp_path, monkeypatch, capsys) as cli:
        yield cli


@pytest.fixture
def tokyo(monkeypatch):
    """This process in Tokyo's time zone (UTC+9, no daylight saving time)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_break_pauses_the_whole_session_and_a_thread_added_meanwhile_waits(cli: Cli, tmp_path):
    session = cli.session("a", "b")
    code, out, err = cli("session", "pause", str(session["id"]))
    assert code == 0, err
    assert out.splitlines()[0] == f"session {session['id']} active"
    assert {t["status"] for t in cli.get(f"/sessions/{session['id']}/threads")} == {"paused"}
    paused = cli.get(f"/sessions/{session['id']}/events", kind="thread.paused")["items"]
    assert [e["message"].split(" paused ")[1] for e in paused] == ["via the CLI"] * 2  # the record names the program

    thread = tmp_path / "extra.yaml"  # one entry of a session config's threads
    thread.write_text("name: extra\ngenerator: dcgan-faces\noptimizer: cma\nobjective: {channels: [0]}\n")
    code, out, err = cli("session", "add-thread", str(session["id"]), str(thread))
    assert code == 0, err
    header, columns, row, hint = out.splitlines()
    assert re.fullmatch(rf"thread (\d+) 'extra' added to session {session['id']}", header)
    assert row.split()[1:4] == ["extra", "evolution", "paused"]
    assert f"`actmax session resume {session['id']}`" in hint

    code, out, err = cli("session", "resume", str(session["id"]))
    assert code == 0, err
    statuses = {t["name"]: t["status"] for t in cli.get(f"/sessions/{session['id']}/threads")}
    assert set(statuses) == {"a", "b", "extra"} and "paused" not in statuses.values()


def test_add_thread_names_a_file_that_is_not_one_thread(cli: Cli, tmp_path):
    session = cli.session("a")
    whole = tmp_path / "session.json"
    whole.write_text(json.dumps(session_config()))
    listed = tmp_path / "listed.yaml"  # copied with its list dash
    listed.write_text("- name: extra\n  generator: dcgan-faces\n  optimizer: cma\n  objective: {channels: [0]}\n")
    for path, reason in ((whole, "is a session config: add-thread takes one thread"),
                         (listed, "a thread config is one mapping")):
        code, out, err = cli("session", "add-thread", str(session["id"]), str(path))
        assert code == 2 and reason in err and not out, err
    assert len(cli.get(f"/sessions/{session['id']}/threads")) == 1


def test_thread_actions_take_several_ids_and_report_each(cli: Cli):
    a, b = cli.session("a", "b")["threads"]
    missing = b["id"] + 100
    code, out, err = cli("thread", "pause", str(a["id"]), str(missing), str(b["id"]))
    assert code != 0
    assert out.splitlines() == [f"thread {a['id']} 'a': paused", f"thread {b['id']} 'b': paused"]
    assert err.strip() == f"actmax thread: POST /threads/{missing}/pause: HTTP 404: thread {missing} not found"
    code, out, err = cli("thread", "resume", str(a["id"]), str(b["id"]))
    assert code == 0 and len(out.splitlines()) == 2, err


def test_a_finished_evolution_is_extended(cli: Cli):
    session = cli.session("a")
    (thread,) = session["threads"]
    with cli.server.sessions() as db:  # as the engine ends it
        records.finish_thread(db, thread["id"])
        records.end_session_if_done(db, session["id"])
        db.commit()
    assert cli.get(f"/sessions/{session['id']}")["status"] == "finished"
    code, out, err = cli("thread", "extend", str(thread["id"]), "--generations", "80")
    assert code == 0, err
    assert out == f"thread {thread['id']} 'a' extended from {thread['n_generations']} to 80 generations: running\n"
    assert cli.get(f"/sessions/{session['id']}")["status"] == "active"
    assert cli.get(f"/threads/{thread['id']}")["n_generations"] == 80


def test_notes_go_into_the_event_log_also_of_an_ended_session(cli: Cli):
    session = cli.session("a")
    (thread,) = session["threads"]
    assert cli("session", "stop", str(session["id"]))[0] == 0
    code, out, err = cli("session", "note", str(session["id"]), "animal broke fixation", "--thread",
                         str(thread["id"]), "--generations", "12-14")
    assert code == 0, err
    assert re.fullmatch(rf"{CLOCK} session {session['id']}: note: animal broke fixation "
                        rf"\(thread {thread['id']} 'a', generations 12-14\)\n", out), out
    (event,) = cli.get(f"/sessions/{session['id']}/events", kind="session.note")["items"]
    assert event["data"] == {"text": "animal broke fixation", "thread_id": thread["id"], "generations": [12, 14]}

    assert cli("session", "note", str(session["id"]), "juice refilled")[0] == 0  # about the whole session
    for args, reason in ((["--generations", "12"], "--generations needs --thread"),
                         (["--thread", str(thread["id"]), "--generations", "14-12"], "expected FIRST-LAST")):
        code, out, err = cli("session", "note", str(session["id"]), "bad", *args)
        assert code == 2 and reason in err, err
    assert cli.get(f"/sessions/{session['id']}/events", kind="session.note")["total"] == 2


def test_watch_lines_start_with_the_local_time_of_what_they_show(cli: Cli, tokyo):
    session = cli.session("a")
    (thread,) = session["threads"]
    assert cli("session", "note", str(session["id"]), "electrode moved")[0] == 0
    assert cli("session", "stop", str(session["id"]))[0] == 0
    code, out, err = cli("session", "watch", str(session["id"]))  # the session has ended: one pass
    assert code == 0, err
    header, *lines, last = out.splitlines()
    assert header.split()[:2] == ["time", "thread"] and last == f"session {session['id']} stopped"
    events = cli.get(f"/sessions/{session['id']}/events")["items"]
    (note,) = [e for e in events if e["kind"] == "session.note"]
    (stopped,) = [e for e in events if e["kind"] == "thread.stopped"]
    assert lines == [f"{tokyo_time(note['time'])} INFO     -: session.note: note: electrode moved",
                     f"{tokyo_time(stopped['time'])} a                    stopped"]
    assert all(line.split()[1].endswith("+0900") for line in lines)


def tokyo_time(text: str) -> str:
    return f"{datetime.fromisoformat(text).astimezone():%Y-%m-%d %H:%M:%S%z}"


def test_show_shortens_a_seeded_threads_init_code(cli: Cli, tmp_path):
    session = cli.session("a")
    seeded = tmp_path / "seeded.json"
    seeded.write_text(json.dumps(thread_config("seeded", objective={"channels": [0]},
                                               optimizer_params={"init_code": [0.5] * 100, "sigma0": 0.3})))
    assert cli("session", "add-thread", str(session["id"]), str(seeded))[0] == 0
    code, out, err = cli("session", "show", str(session["id"]))
    assert code == 0, err
    (line,) = [line for line in out.splitlines() if "'seeded':" in line]
    assert "optimizer cma (init_code=[100 values], sigma0=0.3)" in line and "0.5, 0.5" not in line


class HoldFirstCreate:
    """The app, with the response to the first ``POST /sessions`` that carries an Idempotency-Key held back until
    a second one has been answered (the session is created all the same): a client that times out on the first and
    sends it again. Records each such request's key."""

    def __init__(self, app) -> None:
        self.app = app
        self.keys: list[str | None] = []
        self.answered: asyncio.Event | None = None

    async def __call__(self, scope, receive, send) -> None:
        key = dict(scope.get("headers", [])).get(b"idempotency-key")
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/sessions" and key):
            return await self.app(scope, receive, send)
        self.keys.append(key.decode())
        if self.answered is None:
            self.answered = asyncio.Event()

            async def held(message) -> None:
                if message["type"] == "http.response.start":
                    try:
                        await asyncio.wait_for(self.answered.wait(), 10)
                    except TimeoutError:
                        pass
                try:
                    await send(message)
                except OSError:  # the client has gone
                    pass

            return await self.app(scope, receive, held)
        await self.app(scope, receive, send)
        self.answered.set()


def test_create_sent_again_after_a_timeout_creates_one_session(tmp_path, monkeypatch, capsys):
    hold = None

    def wrap(app):
        nonlocal hold
        hold = HoldFirstCreate(app)
        return hold

    config = tmp_path / "session.json"
    config.write_text(json.dumps(session_config(name="retried")))
    with cli_against(tmp_path, monkeypatch, capsys, wrap) as cli:
        other = cli.session("a", rig="rig-B")  # (the server loads the generator: the retried POST is quick)
        monkeypatch.setattr(client_cli, "REQUEST_TIMEOUT_S", 2.0)
        code, out, err = cli("session", "create", str(config))
        assert code == 0, err
        assert "got no answer within 2 s; sending it again with the same Idempotency-Key" in err
        assert len(hold.keys) == 2 and hold.keys[0] == hold.keys[1]
        (session,) = [s for s in cli.get("/sessions") if s["id"] != other["id"]]
        assert out.startswith(f"session {session['id']} 'retried' created for rig 'rig-A' (by an earlier request")


def test_create_with_a_given_key_twice_creates_once_and_warns_of_a_shared_rig(cli: Cli, tmp_path):
    first = cli.session("a")
    config = tmp_path / "session.yaml"
    config.write_text("name: second\nrig: rig-A\nthreads:\n"
                      "  - {name: t, generator: dcgan-faces, optimizer: cma, objective: {channels: [0]}}\n")
    code, out, err = cli("session", "create", str(config), "--idempotency-key", "day-4-second")
    assert code == 0, err
    session_id = int(re.match(r"session (\d+) 'second' created for rig 'rig-A'\n", out).group(1))
    assert f"actmax session: warning: rig 'rig-A' already has active session(s) {first['id']} 'exp-1'" in err
    code, out, err = cli("session", "create", str(config), "--idempotency-key", "day-4-second")
    assert code == 0, err
    assert out.startswith(f"session {session_id} 'second' created for rig 'rig-A' (by an earlier request with this "
                          "Idempotency-Key: nothing new was created)")
    assert [s["id"] for s in cli.get("/sessions")] == [first["id"], session_id]
    code, out, err = cli("session", "create", str(config), "--idempotency-key", "bad\tkey")
    assert code == 2 and "printable ASCII" in err


def test_a_retarget_to_the_objective_a_thread_has_says_so_and_a_change_prints_its_event(cli: Cli):
    """The server answers a retarget that changes nothing unchanged, logging nothing: the CLI says so rather than
    printing an older retarget's event (or failing on a thread that never had one)."""
    (thread,) = cli.session("a")["threads"]
    code, out, err = cli("thread", "retarget", str(thread["id"]), "--channels", "0")
    assert (code, err) == (0, "") and out == f"thread {thread['id']} 'a' scores this objective already: score (spikes/s)\n"
    code, out, _ = cli("thread", "retarget", str(thread["id"]), "--channels", "1")
    assert code == 0 and out.startswith(f"thread {thread['id']} 'a' scores mean of channels [1] from generation 0 on")
    code, out, _ = cli("thread", "retarget", str(thread["id"]), "--channels", "1")
    assert code == 0 and out.startswith(f"thread {thread['id']} 'a' scores this objective already")
