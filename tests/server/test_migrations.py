"""Schema creation is atomic: a real ``actmax serve`` killed during its first migration starts
cleanly afterwards, and a half-made database from older versions is completed or refused."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from server import ServerError
from server.store import db
from server.store.models import Base
from server.launch import free_port
from tests.server.conftest import damage

TABLES = {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"}


def schema(path: Path) -> tuple[set[str], list[str]]:
    """Tables and recorded Alembic versions of the SQLite file at ``path``."""
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")] \
            if "alembic_version" in tables else []
    return tables, versions


def half_made(path: Path, names: tuple[str, ...]) -> str:
    """The state a non-atomic first start left when killed: the migration's first tables, no version."""
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    Base.metadata.create_all(engine, tables=[Base.metadata.tables[n] for n in names])
    engine.dispose()
    return url


def upgrade(url: str) -> tuple[str | None, str]:
    db_engine = db.make_db_engine(url)
    try:
        return db.upgrade(db_engine)
    finally:
        db_engine.dispose()


def test_half_made_empty_database_is_completed(tmp_path):
    url = half_made(tmp_path / "a.sqlite", ("sessions", "threads", "events"))
    upgrade(url)
    tables, versions = schema(tmp_path / "a.sqlite")
    assert tables == TABLES and len(versions) == 1


def test_half_made_database_with_rows_is_refused_untouched(tmp_path):
    url = half_made(tmp_path / "a.sqlite", ("sessions",))
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        conn.execute("INSERT INTO sessions (name, rig, animal, array, notes, config_json, status, created_at) "
                     "VALUES ('s', 'r', '', '', '', '{}', 'active', '2026-01-01')")
    with pytest.raises(ServerError, match="no recorded schema version.*sessions|sessions.*no recorded"):
        upgrade(url)
    assert schema(tmp_path / "a.sqlite") == ({"sessions"}, [])


def serve(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "ACTMAX_TOKEN": "t" * 32, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--zmq-endpoint", f"tcp://127.0.0.1:{free_port()}", "--device", "cpu"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited {process.returncode}: {process.stderr.read()[-2000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve did not become healthy in 60 s")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(20)


@pytest.mark.slow
def test_serve_killed_during_its_first_migration_starts_cleanly(tmp_path):
    """SIGKILL at random moments between the database file appearing and the server answering
    (the migration runs in between: one random moment in each third of that window); every
    database left without a schema version then starts cleanly."""
    rng = random.Random(os.environ.get("ACTMAX_KILL_SEED", time.time_ns()))
    window = None
    mid_migration = 0
    for attempt in range(4):
        data = tmp_path / f"run{attempt}"
        database = data / "actmax.sqlite"
        process, url = serve(data)
        try:
            while not database.exists():
                assert process.poll() is None, process.stderr.read()[-2000:]
                time.sleep(0.001)
            appeared = time.monotonic()
            if window is None:  # the first run measures the window and is not killed
                wait_healthy(process, url)
                window = time.monotonic() - appeared
                stop(process)
                continue
            time.sleep(window * rng.uniform(attempt - 1, attempt) / 3)
        finally:
            process.kill()
            process.wait()
        tables, versions = schema(database)
        if versions:
            assert tables == TABLES  # killed after the commit: complete
            continue
        mid_migration += 1
        process, url = serve(data)
        try:
            wait_healthy(process, url)
        finally:
            stop(process)
        tables, versions = schema(database)
        assert tables == TABLES and len(versions) == 1
    print(f"migration window {window:.2f} s; {mid_migration} of 3 kills left no schema version")


def test_a_database_from_a_newer_actmax_is_refused_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    upgrade(url)
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999future'")
    head = ScriptDirectory.from_config(db.alembic_config(url)).get_current_head()
    with pytest.raises(ServerError, match=f"schema version '9999future', which this actmax does not know "
                                          f"\\(it knows up to '{head}'\\)"):
        upgrade(url)
    assert schema(tmp_path / "a.sqlite")[1] == ["9999future"]


def test_the_head_revision_the_server_opens_without_alembic_is_the_newest_migration(tmp_path):
    """``HEAD_REVISION``, the newest migration file's name, lets a start skip Alembic for a database already migrated.
    A migration whose revision is not its file's name would leave that skip to a revision no database has (every
    start then migrating through Alembic, slow but right); this names the file to rename."""
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    scripts = ScriptDirectory.from_config(db.alembic_config(url))
    misnamed = [(Path(script.path).stem, script.revision) for script in scripts.walk_revisions()
                if script.revision != "0001" and Path(script.path).stem != script.revision]  # 0001: from before
    assert misnamed == [], "name each migration file after its revision (server/store/db.py HEAD_REVISION)"
    assert scripts.get_current_head() == db.HEAD_REVISION
    assert upgrade(url) == (None, db.HEAD_REVISION)
    assert upgrade(url) == (db.HEAD_REVISION, db.HEAD_REVISION)


def test_a_damaged_database_is_refused_untouched(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    upgrade(url)
    damage(tmp_path / "a.sqlite")
    before = (tmp_path / "a.sqlite").read_bytes()
    with pytest.raises(ServerError, match=r"a.sqlite is damaged \(PRAGMA quick_check: .+\); restore it from a backup") \
            as refused:
        upgrade(url)
    assert "\n" not in str(refused.value)
    assert (tmp_path / "a.sqlite").read_bytes() == before


def test_the_batch_rig_index_migrates_down_and_up(tmp_path):
    """0007 adds only the index a rig's latest batches are read through, and takes only it away again."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    command.upgrade(db.alembic_config(url), "0007_batch_rig_index")

    def indexes() -> set[str]:
        with sqlite3.connect(tmp_path / "a.sqlite") as conn:
            return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    head = indexes()
    command.downgrade(db.alembic_config(url), "0006_write_indexes")
    assert head - indexes() == {"ix_batches_rig_sent_at"} and indexes() <= head
    assert schema(tmp_path / "a.sqlite")[1] == ["0006_write_indexes"]
    command.upgrade(db.alembic_config(url), "0007_batch_rig_index")
    assert indexes() == head and schema(tmp_path / "a.sqlite")[1] == ["0007_batch_rig_index"]
