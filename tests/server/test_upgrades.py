"""Upgrading a data folder: a real ``actmax serve`` says when it creates or migrates a database, a database of a
retired pre-release schema is named as such, and the CLI names a data folder it cannot open read-only."""

from __future__ import annotations

import functools
import importlib.util
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import text

from server import ServerError
from server.store import db
from server.store.models import Base
from tests.server.test_migrations import serve, stop, upgrade, wait_healthy

VERSIONS = Path(db.__file__).resolve().parent / "migrations" / "versions"


def served_logs(*data_dirs: Path) -> list[str]:
    """What real ``actmax serve`` processes, one on each folder at once, log from their start until they stop."""
    started = [serve(data_dir) for data_dir in data_dirs]
    try:
        for process, url in started:
            wait_healthy(process, url)
    finally:
        for process, _ in started:
            stop(process)
    return [process.stderr.read() for process, _ in started]


@pytest.mark.slow
def test_serve_logs_a_new_database_and_a_migration(tmp_path):
    new, old, current = tmp_path / "mistyped", tmp_path / "old", tmp_path / "current"
    upgrade_to(old, "0005_read_indexes")  # an older actmax's schema
    upgrade_to(current, "head")
    new_log, old_log, current_log = served_logs(new, old, current)
    assert f"created a new, empty database in {new}: no sessions yet" in new_log, new_log
    assert f"migrated the database in {old} from schema 0005_read_indexes to 0008_idempotency_keys" in old_log, old_log
    assert "created a new" not in old_log + current_log and "migrated" not in new_log + current_log, current_log


def upgrade_to(data_dir: Path, revision: str) -> None:
    db_engine = db.make_db_engine(f"sqlite:///{data_dir / 'actmax.sqlite'}")
    try:
        db.upgrade(db_engine, revision)
    finally:
        db_engine.dispose()


def lifecycle_module(path: Path):
    spec = importlib.util.spec_from_file_location("lifecycle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_retired(path: Path, revision: str) -> str:
    """A database as main's development builds made it at the retired ``revision``: '0002' ran the session
    lifecycle (with presentations.baseline_rates_json) on 0001; '0003_session_lifecycle' ran it after
    0002_trial_facts. Their lifecycle migration is today's 0004_session_lifecycle under another id."""
    url = f"sqlite:///{path}"
    db_engine = db.make_db_engine(url)
    try:
        db.upgrade(db_engine, "0001" if revision == "0002" else "0002_trial_facts")
        with db_engine.begin() as connection:
            with Operations.context(MigrationContext.configure(connection, opts={"target_metadata": Base.metadata})) as op:
                lifecycle_module(VERSIONS / "0004_session_lifecycle.py").upgrade()
                if revision == "0002":
                    with op.batch_alter_table("presentations") as batch:
                        batch.add_column(sa.Column("baseline_rates_json", sa.JSON(), nullable=True))
            connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
            connection.execute(text(
                "INSERT INTO sessions (name, rig, animal, array, notes, config_json, status, created_at) "
                "VALUES ('s', 'rig-U', '', '', '', '{}', 'finished', '2026-11-28')"))
    finally:
        db_engine.dispose()
    return url


@pytest.mark.parametrize("revision", ["0002", "0003_session_lifecycle"])
def test_a_retired_development_schema_is_named_not_called_newer(tmp_path, revision):
    path = tmp_path / "actmax.sqlite"
    url = build_retired(path, revision)
    before = path.read_bytes()
    with pytest.raises(ServerError) as refused:
        upgrade(url)
    message = str(refused.value)
    assert f"schema version {revision!r}, that of a development build of actmax from before the release" in message
    assert "a newer actmax" not in message and "\n" not in message
    assert "actmax export" in message and "new --data-dir" in message
    assert path.read_bytes() == before


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` read-only for this process while the block runs: no write permission, or, for root (who writes
    anywhere), the immutable attribute, as on a read-only mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = functools.partial(folder.chmod, 0o755)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = functools.partial(subprocess.run, ["chattr", "-i", str(folder)], check=True)
    else:
        pytest.skip("root, and chattr cannot make a folder read-only here")
    try:
        yield
    finally:
        undo()


def test_a_read_only_data_folder_is_named_as_such(tmp_path, capsys, monkeypatch):
    """export and analyze on a WAL database in a folder that cannot take its -shm file (a read-only share)."""
    from server.cli import main

    for name in [name for name in os.environ if name.startswith("ACTMAX_")]:
        monkeypatch.delenv(name)
    data = tmp_path / "data"
    upgrade(f"sqlite:///{data / 'actmax.sqlite'}")
    with closing(sqlite3.connect(data / "actmax.sqlite")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert not (data / "actmax.sqlite-shm").exists()
    with read_only(data):
        for args in (["export", "csv", "--session", "1", "--out", str(tmp_path / "export")],
                     ["analyze", "session", "1", "--out", str(tmp_path / "report")]):
            capsys.readouterr()
            assert main([*args, "--data-dir", str(data)]) == 2
            err = capsys.readouterr().err
            assert "its folder is read-only" in err and "actmax.sqlite-shm" in err, err
            assert "copy the data folder to a writable place" in err and "not an SQLite database" not in err
