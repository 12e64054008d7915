"""Server fixtures: settings on a temporary data dir, a migrated SQLite file,
and the REST app served by uvicorn on a free loopback port."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session as DBSession, sessionmaker

from server.main import create_app
from server.serve import HTTP_KEEP_ALIVE_S
from server.settings import Settings
from server.store import db

TOKEN = "test-token-not-secret"


def make_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, token=TOKEN)


def thread_config(name: str = "t0", **overrides) -> dict:
    return {"name": name, "generator": "dcgan-faces", "optimizer": "cma", "objective": {"channels": [3]}} | overrides


def session_config(**overrides) -> dict:
    return {"name": "exp-1", "rig": "rig-A", "threads": [thread_config()]} | overrides


def count_in_the_file(path: str, sql: str) -> int:
    """``sql``'s count from the SQLite database file itself, its WAL ignored (``immutable=1``). Such a read
    takes no lock, so one landing while a checkpoint writes pages may see a torn file: that counts 0."""
    file = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return file.execute(sql).fetchone()[0]
    except sqlite3.DatabaseError:  # "database disk image is malformed"
        return 0
    finally:
        file.close()


def damage(path: Path) -> None:
    """Add 60 sessions' rows to the actmax database at ``path``, then zero the middle third of its file."""
    with closing(sqlite3.connect(path)) as conn:
        conn.executemany(
            "INSERT INTO sessions (name, rig, animal, array, notes, config_json, status, created_at) "
            "VALUES (?, 'r', '', '', ?, '{}', 'active', '2026-01-01')", [(f"s{i}", "n" * 3000) for i in range(60)])
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 3)
        file.write(bytes(size // 3))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
def db_engine(settings: Settings) -> Iterator[Engine]:
    """The database engine of a freshly migrated SQLite file."""
    db_engine = db.make_db_engine(settings.database_url)
    db.upgrade(db_engine)
    yield db_engine
    db_engine.dispose()


@pytest.fixture
def db_sessions(db_engine: Engine) -> sessionmaker[DBSession]:
    """ORM sessions on a freshly migrated SQLite file."""
    return db.make_sessionmaker(db_engine)


class WakeCounter:
    """A stand-in engine: counts ``wake()`` calls; ``rigs`` maps connected rig names to their channels;
    ``stalled`` is the storage failure it reports."""

    def __init__(self) -> None:
        self.wakes = 0
        self.rigs: dict[str, int] = {}
        self.stalled: str | None = None  # a storage failure the engine would report

    def wake(self) -> None:
        self.wakes += 1

    def rig_channel_count(self, rig: str) -> int | None:
        return self.rigs.get(rig)

    def storage_problem(self) -> str | None:
        return self.stalled


class LiveServer:
    """The app's settings, its stand-in engine, its migrated database and (once served) its URL."""

    def __init__(self, settings: Settings, engine: WakeCounter) -> None:
        self.url = ""
        self.settings = settings
        self.engine = engine
        self.db_engine = db.make_db_engine(settings.database_url)
        db.upgrade(self.db_engine)
        self.sessions = db.make_sessionmaker(self.db_engine)


@contextmanager
def served(app, port: int = 0) -> Iterator[str]:
    """``app`` behind real HTTP, with ``actmax serve``'s keep-alive: uvicorn in a background thread on ``port`` (0: a
    free one; a port served before can be served again); yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=HTTP_KEEP_ALIVE_S))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its old connections may be in TIME_WAIT
    sock.bind(("127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app behind real HTTP (``served``, one per test module)."""
    settings = make_settings(tmp_path_factory.mktemp("live") / "data")
    engine = WakeCounter()
    live = LiveServer(settings, engine)
    with served(create_app(settings, live.sessions, engine=engine)) as live.url:
        yield live
    live.db_engine.dispose()


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    """An HTTP client of the module's ``live_server``, signed in with the token."""
    with httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c
