"""The ``actmax`` CLI with names outside ASCII: on a console that cannot encode them, and in its tables."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import unicodedata

import pytest

from server.launch import ServerProcess

NAME = "Latin-1 Test – 実験"  # – and 実験 are not in Latin-1 (nor in cp1252)
THREADS = ["スレッド🧪", "Kanal-A\u0308", "ascii"]  # wide (CJK, emoji); an NFD umlaut (a combining mark); plain


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("encoding") / "data", secrets.token_urlsafe(16),
                           env={"TZ": "JST-9"})  # the server's local time: 9 h ahead of UTC (a POSIX zone, no tzdata)
    api = server.start()
    try:
        yield server, api
    finally:
        server.stop()
        api.close()


def cli(server: ServerProcess, *args: str, encoding: str = "utf-8") -> subprocess.CompletedProcess:
    """``actmax ARGS`` as a process whose console encoding is ``encoding`` (Python's, whatever the locale)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ACTMAX_", "PYTHONIOENCODING", "LC_"))}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, timeout=120,
                          encoding=encoding, env={**environment, "PYTHONIOENCODING": encoding,
                                                  "ACTMAX_URL": server.url, "ACTMAX_TOKEN": server.token})


def session_config(name: str, threads: list[str]) -> dict:
    return {"name": name, "rig": "rig-intl", "references": {"source": "skimage", "count": 2},
            "threads": [{"name": thread, "generator": "dcgan-faces", "optimizer": "cma", "objective": {"channels": [0]},
                         "n_generations": 1} for thread in threads]}


def test_a_console_that_cannot_encode_a_name_gets_escapes_and_the_command_succeeds(running, tmp_path):
    """On a Latin-1 console (a legacy locale; Windows' cp1252 with output redirected) ``session create`` made the
    session, then exited 2 with a codec error, so a retry made a second one; ``list`` and ``show`` printed only
    their header."""
    server, api = running
    config = tmp_path / "session.json"
    config.write_text(json.dumps(session_config(NAME, THREADS[:1]), ensure_ascii=False), encoding="utf-8")
    before = len(api.get("/sessions"))
    created = cli(server, "session", "create", str(config), encoding="latin-1")
    assert created.returncode == 0, created.stderr
    assert "Latin-1 Test \\u2013 \\u5b9f\\u9a13" in created.stdout  # the name, escaped where Latin-1 has no letter
    assert "\\u30b9\\u30ec\\u30c3\\u30c9\\U0001f9ea" in created.stdout  # the thread's
    assert len(api.get("/sessions")) == before + 1
    session_id = re.search(r"session (\d+) ", created.stdout).group(1)
    for command, escaped in ((["session", "list"], "\\u5b9f\\u9a13"), (["session", "show", session_id], "\\U0001f9ea"),
                             (["session", "stop", session_id], "\\U0001f9ea")):
        result = cli(server, *command, encoding="latin-1")
        assert result.returncode == 0 and escaped in result.stdout, result


def display_width(text: str) -> int:
    """Terminal columns: two for a wide (East Asian W or F) character, none for a combining mark."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_table_columns_line_up_in_display_columns_whatever_the_names(running, tmp_path):
    """Padding counted code points: a CJK or emoji name pushed the next column right, an NFD name (macOS) one
    column left."""
    server, api = running
    session = api.post("/sessions", session_config("スレッド🧪 Sitzung Mu\u0308ller", THREADS))
    show = cli(server, "session", "show", str(session["id"]))
    assert show.returncode == 0, show.stderr
    rows = [line for line in show.stdout.splitlines() if " evolution " in line]
    assert len(rows) == len(THREADS) and all(name in "".join(rows) for name in THREADS)
    assert len({display_width(row[:row.index(" evolution ")]) for row in rows}) == 1, rows
    listed = cli(server, "session", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    columns = {display_width(line[:line.index(" rig-intl " if line in rows else " rig ")]) for line in [header, *rows]}
    assert len(columns) == 1, listed.stdout


def test_log_lines_carry_their_offset_from_utc(running):
    """The CLI prints UTC (``...Z``); a log line's local time says its offset, so the two can be compared."""
    server, _ = running
    first = server.log_path.read_text(encoding="utf-8").splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\+0900 INFO ", first), first
