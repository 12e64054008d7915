"""Offline commands (`actmax export`, `actmax analyze`) on a data folder an older actmax made: refused in one line
that says how to migrate it (each a real `actmax` process), the database left as it was; after the migration they
work. A newer actmax's database, and one with no schema version, are refused too."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest
from alembic import command

from server import ServerError
from server.cli import main
from server.store import db
from server.store.models import Thread, ThreadStatus
from tests.server.test_report import record_session

OLD = "0007_batch_rig_index"


def actmax(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=300)


def version(path) -> str:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_export_and_analyze_refuse_an_older_schema_in_one_line_and_work_once_migrated(db_engine, db_sessions,
                                                                                   settings, tmp_path):
    session_id, thread_id, _ = record_session(db_sessions, settings)
    with db_sessions.begin() as session:
        session.get(Thread, thread_id).status = ThreadStatus.FINISHED
    command.downgrade(db.alembic_config(settings.database_url), OLD)  # the folder as the older actmax left it
    data_dir, database = settings.data_dir, settings.data_dir / "actmax.sqlite"
    commands = {"export": ("export", "csv", "--data-dir", str(data_dir), "--session", str(session_id),
                           "--out", str(tmp_path / "csv")),
                "analyze": ("analyze", "session", str(session_id), "--data-dir", str(data_dir),
                            "--out", str(tmp_path / "report"))}
    for name, args in commands.items():
        result = actmax(*args)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"actmax {name}: the database {database} is at schema version '{OLD}'")
        assert f"start `actmax serve --data-dir {data_dir}` once to migrate it" in line
        assert "Upgrading actmax" in line and "run this command again" in line
    assert version(database) == OLD  # nothing migrated, nothing written
    assert not (tmp_path / "csv").exists() and not (tmp_path / "report").exists()

    db.upgrade(db_engine)  # what `actmax serve` does at start-up
    for args in commands.values():
        assert main(list(args)) == 0  # in this process: a second start of the CLI's imports is slow
    assert (tmp_path / "csv" / "threads.csv").is_file() and (tmp_path / "report" / "summary.json").is_file()


def test_a_newer_schema_is_refused_as_upgrade_refuses_it(db_engine, settings):
    with closing(sqlite3.connect(settings.data_dir / "actmax.sqlite")) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    with pytest.raises(ServerError, match="'0099_from_the_future', which this actmax does not know.*a newer actmax"):
        db.offline_db_engine(settings.database_url)


def test_a_database_without_a_schema_version_is_refused(tmp_path):
    with closing(sqlite3.connect(tmp_path / "other.sqlite")) as conn, conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(ServerError, match="has no actmax schema version"):
        db.offline_db_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
