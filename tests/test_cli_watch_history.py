"""`actmax session watch` started late: each thread status change since the session began, in the order they
happened and each once, then the changes as they happen, against the real REST app served over HTTP (its
engine a stand-in; the test finishes a thread as the engine does)."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading

from server import client_cli
from server.store import records
from tests.test_cli_recording_day import CLOCK, Cli, cli_against

STATUS_OF = {"thread.paused": "paused", "thread.running": "running", "thread.finished": "finished",
             "thread.extended": "running", "thread.stopped": "stopped"}  # the status each event here leads to


def finish(cli: Cli, thread: dict) -> None:
    """As the engine finishes a thread that told its last generation."""
    with cli.server.sessions() as db:
        name = records.finish_thread(db, thread["id"])
        records.log_event(db, "thread.finished", f"thread {thread['id']} {name!r} finished", thread_id=thread["id"])
        records.end_session_if_done(db, thread["session_id"])
        db.commit()


def expected(cli: Cli, session_id: int) -> list[str]:
    """A status line per status event of the session's log, in its order, with the event's local time."""
    events = cli.get(f"/sessions/{session_id}/events", limit=1000)["items"]
    names = {t["id"]: t["name"] for t in cli.get(f"/sessions/{session_id}/threads")}
    return [f"{client_cli.clock(e['time'])} {names[e['thread_id']]:<20} {STATUS_OF[e['kind']]}"
            for e in events if e["kind"] in STATUS_OF]


def test_a_late_watch_prints_the_status_changes_since_the_session_began_then_follows_it(tmp_path, monkeypatch,
                                                                                        capsys):
    """It printed each thread's status as it found it: a pause and resume before it started (or within one
    poll) and a finish an extension undid were missing."""
    with cli_against(tmp_path, monkeypatch, capsys) as cli:
        session = cli.session("a", "b")
        a, _ = session["threads"]
        for action in ("pause", "resume"):
            assert cli("thread", action, str(a["id"]))[0] == 0
        finish(cli, a)
        assert cli("thread", "extend", str(a["id"]), "--generations", "80")[0] == 0  # it runs again
        history = expected(cli, session["id"])
        assert [line.split()[-1] for line in history] == ["paused", "running", "finished", "running"]

        watch = subprocess.Popen([sys.executable, "-m", "server.cli", "session", "watch", str(session["id"]),
                                  "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        printed: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            for line in watch.stdout:
                printed.put(line.rstrip("\n"))
            printed.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            out = []
            while not out or " thread.extended: " not in out[-1]:  # its first poll read the session's history
                line = printed.get(timeout=60)
                assert line is not None, (out, watch.stderr.read())
                out.append(line)
            # Live: a pause and a resume most likely within one poll (half a second apart), then the end.
            for action in ("pause", "resume"):
                assert cli("thread", action, str(a["id"]))[0] == 0
            assert cli("session", "stop", str(session["id"]))[0] == 0
            assert watch.wait(timeout=60) == 0, watch.stderr.read()
        finally:
            watch.kill()
            reader.join(10)
            watch.stdout.close()
            watch.stderr.close()
        while (line := printed.get()) is not None:
            out.append(line)

        changes = expected(cli, session["id"])
        assert [line.split()[-1] for line in changes if " a " in line] == [
            "paused", "running", "finished", "running", "paused", "running", "stopped"]
        assert [line for line in out if re.fullmatch(rf"{CLOCK} [ab] +\w+", line)] == changes
        assert out[-1] == f"session {session['id']} stopped"
