"""Database connections (SQLite in WAL mode) and programmatic Alembic migrations.

Migrations are atomic: on SQLite they run in one ``BEGIN IMMEDIATE`` transaction (Python's sqlite3
would otherwise commit each CREATE TABLE on its own), so a kill leaves the previous schema or the
new one. A database left half-made by an older, non-atomic first start (tables but no recorded
version) is rebuilt when its tables are empty and refused with a clear message otherwise. A database
made by a newer actmax (a schema version these migrations do not know) is refused as well, and so is one
made by a development build from before the release whose schema version was later renumbered. Commands
that read the database without the server (``offline_db_engine``) migrate nothing: they refuse a database
at any other schema version than this actmax's.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from server import ServerError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000  # a write waits this long for another writer (another program: then a storage fault)
CHECKPOINT_INTERVAL_S = 2.0  # background WAL checkpoints at most this often (a few MB of WAL between them)
# More connections than the threads that may hold one at once: anyio's 40 workers that run sync
# endpoints (and their dependencies' clean-up), the engine's worker, a few more. With fewer, a burst
# of requests (a dashboard loading 40 images) deadlocks: workers wait for connections whose
# sessions can only close on a free worker. SQLite connections are cheap.
POOL_SIZE, MAX_OVERFLOW = 5, 60
_PACKAGE_DIR = Path(__file__).resolve().parent
# The newest migration's revision, which is its file's name (migrations/versions/NNNN_what.py; tests/server/
# test_migrations.py checks every file and Alembic's head): a database already there is opened without importing
# Alembic, 0.2 s of every server start (and of every restart after a crash, bench/recovery.py).
HEAD_REVISION = max(path.stem for path in (_PACKAGE_DIR / "migrations" / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
# Schema versions of development builds of main from before the release: the session-lifecycle migration was
# renumbered in merges (now 0004_session_lifecycle), so these ids name schemas no migration here starts from.
RETIRED_REVISIONS = {
    "0002": "main daec25d to 367ff30: the session lifecycle on the initial schema, with presentations."
            "baseline_rates_json and without 0002_trial_facts and 0003_state_snapshots",
    "0003_session_lifecycle": "main 8795123 to 7d76564: the session lifecycle after 0002_trial_facts, "
                              "without 0003_state_snapshots",
}


def _set_sqlite_pragmas(dbapi_connection, _connection_record, *, autocheckpoint: bool) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if not autocheckpoint:
        cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def make_db_engine(database_url: str, *, background_checkpoints: bool = False) -> Engine:
    """A database engine for ``database_url``; for SQLite files: WAL, foreign keys on, busy timeout, parent
    folder made. A process makes one and disposes of it when it ends (``actmax serve`` owns the server's).

    ``background_checkpoints``: no commit copies the WAL into the database file (SQLite does that in the
    commit that crosses 1000 pages, every few engine steps); the process runs `BackgroundCheckpoints`."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    db_engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=POOL_SIZE,
                              max_overflow=MAX_OVERFLOW)
    event.listen(db_engine, "connect",
                 functools.partial(_set_sqlite_pragmas, autocheckpoint=not background_checkpoints))
    return db_engine


class BackgroundCheckpoints:
    """WAL checkpoints on a thread of their own, when asked (SQLite only; elsewhere a no-op).

    A PASSIVE checkpoint copies what the WAL holds into the database file and fsyncs it, without waiting
    for or blocking readers and writers. The engine asks after each BATCH it sends, so the copy falls in
    the rig's show and not in a step's commit (``make_db_engine(background_checkpoints=True)``). At most
    one starts per ``interval_s``: the commit after a checkpoint that emptied the WAL starts it afresh
    and fsyncs its header once more, so a checkpoint after every step would cost every commit an fsync."""

    def __init__(self, sessions: sessionmaker[Session], interval_s: float = CHECKPOINT_INTERVAL_S):
        self._sessions, self.interval_s = sessions, interval_s
        with sessions() as db:
            self._sqlite = db.get_bind().dialect.name == "sqlite"
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actmax-checkpoint")
        self._under_way: Future | None = None
        self._started = -math.inf
        self._failing = False  # the last checkpoint failed: its failure was logged, its recovery will be

    def request(self) -> Future | None:
        """Start a checkpoint unless one is under way or one started less than ``interval_s`` ago; its future."""
        now = time.monotonic()
        if self._sqlite and now - self._started >= self.interval_s and (
                self._under_way is None or self._under_way.done()):
            self._started, self._under_way = now, self._worker.submit(self._checkpoint)
            return self._under_way
        return None

    def _checkpoint(self) -> None:
        """One checkpoint; a failure (a full disk) is logged once, when it starts, and again when one succeeds."""
        try:
            with self._sessions() as db:
                driver(db).execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as error:
            if not self._failing:
                log.warning("WAL checkpoint failed (%s); later ones retry, and the WAL grows until one succeeds "
                            "(logged again when one does)", error)
            self._failing = True
            return
        if self._failing:
            log.info("WAL checkpoint succeeded again")
        self._failing = False

    def close(self) -> None:
        """Finish the checkpoint asked for, if any; no more start."""
        self._worker.shutdown(wait=True)


def make_sessionmaker(db_engine: Engine) -> sessionmaker[Session]:
    """ORM sessions whose objects stay readable after commit."""
    return sessionmaker(db_engine, expire_on_commit=False)


class DriverTransaction:
    """A transaction on a sqlite3 connection with no ORM session around it (``StepConnection.begin``).

    The engine's steps run in these: their statements are all on the driver (``queries``, ``records``),
    and an ORM session's first statement costs 0.7 ms more, and 12 ms more after a 300 ms rest on this
    VM (``bench/engine_step.py``). ``info`` is for what the transaction carries, as ``Session.info``."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection
        self.info: dict = {}
        self.committed: list[Callable[[], None]] = []  # called in order once the transaction has committed

    def on_commit(self, callback: Callable[[], None]) -> None:
        self.committed.append(callback)


Transaction = Session | DriverTransaction  # what the driver's statements (``queries``, ``records``) run in


class StepConnection:
    """The engine's own connection, taken from ``sessions``' pool for the engine's life (pragmas as set at
    connect); the compute worker runs every step on it, one ``begin`` at a time.

    Like the ORM's, its transaction begins at the first write (sqlite3's implicit ``BEGIN`` before it),
    so the reads before take no lock and the write waits out other writers (``busy_timeout``)."""

    def __init__(self, sessions: sessionmaker[Session]):
        with sessions() as db:
            self._pooled = db.get_bind().raw_connection()
        self._connection = self._pooled.driver_connection

    @contextmanager
    def begin(self) -> Iterator[DriverTransaction]:
        """A transaction that commits when the block ends and rolls back if it raises."""
        transaction = DriverTransaction(self._connection)
        try:
            yield transaction
            self._connection.commit()  # a commit that fails (a locked or full database) is rolled back too
        except BaseException:
            self._connection.rollback()
            raise
        for callback in transaction.committed:
            callback()

    def close(self) -> None:
        """Give the connection back to the pool (call on the thread that used it last, or after it ended)."""
        self._pooled.close()


def driver(db: Transaction) -> sqlite3.Connection:
    """The sqlite3 connection under ``db``'s transaction (begun if it was not): the engine's hot-path
    statements run on it directly, skipping the ORM's per-statement work (``queries``, ``records``).

    In an ORM session they do not flush it first, and rows they write are not in its identity map."""
    if isinstance(db, DriverTransaction):
        return db.connection
    return db.connection().connection.driver_connection


def alembic_config(database_url: str) -> Config:
    """The Alembic configuration of the packaged migrations, pointed at ``database_url``."""
    from alembic.config import Config

    config = Config(str(_PACKAGE_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(_PACKAGE_DIR / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def check_database_file(path: Path, *, created: bool = False) -> None:
    """Refuse ``path`` unless it is an actmax SQLite database, saying what it is instead (read-only).
    ``created``: any SQLite database, or none, will do (``upgrade`` creates or migrates it)."""
    fix = ("move it away or choose another --data-dir" if created else
           "pass the --data-dir (ACTMAX_DATA_DIR) that actmax serve runs with")
    if path.is_dir():
        raise ServerError(f"{path} is a folder, not an actmax database; {fix}")
    if not path.exists():
        if created:
            return
        raise FileNotFoundError(f"no actmax database at {path}; {fix}")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as error:
        if os.access(path.parent, os.W_OK):
            raise ServerError(f"{path} is not an SQLite database ({error}); {fix}") from None
        raise ServerError(f"cannot open {path} ({error}): its folder is read-only, and SQLite must create "
                          f"{path.name}-shm beside a WAL database to read it; copy the data folder to a writable "
                          "place and pass that --data-dir") from None
    except sqlite3.DatabaseError as error:
        raise ServerError(f"{path} is not an SQLite database ({error}); {fix}") from None
    if created and "alembic_version" not in tables:
        from server.store.models import Base

        if foreign := sorted(t for t in tables - set(Base.metadata.tables) if not t.startswith("sqlite_")):
            raise ServerError(f"{path} is an SQLite database of something else (its tables {', '.join(foreign[:5])} "
                              f"are not actmax's), and actmax will not add its own to it; {fix}")
    if not created and not {"alembic_version", "sessions"} <= tables:
        raise ServerError(f"{path} is an SQLite database but not actmax's (it has no sessions); {fix}")


def check_writable(path: Path) -> None:
    """Refuse an SQLite database at ``path`` that this process cannot write (a read-only or immutable file, or its
    WAL's): the server would serve, and its threads would not move. None there is fine."""
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if file.is_file() and not os.access(file, os.W_OK):
            raise ServerError(f"the database {path} cannot be written ({file.name} is read-only): make it writable "
                              "(chmod u+w; chattr -i if it is immutable), or copy the data folder to a writable place "
                              "and pass that --data-dir")


def check_intact(path: Path) -> None:
    """Refuse a damaged SQLite database at ``path`` (``PRAGMA quick_check``: every page of every table and
    index is read, about 1.5 s per GB), naming what is wrong; none there is fine (read-only)."""
    if not path.is_file():
        return
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            report = "\n".join(row for (row,) in db.execute("PRAGMA quick_check(3)"))
    except sqlite3.DatabaseError as error:  # damage that stops the check itself
        report = str(error)
    if report != "ok":
        problems = [line for line in report.splitlines() if not line.startswith("*** in database")]
        raise ServerError(f"{path} is damaged (PRAGMA quick_check: {'; '.join(problems[:3])}); restore it from a "
                          "backup (README.md, 'Operating the server'), or move it away or choose another --data-dir")


def upgrade(db_engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Create or migrate ``db_engine``'s database to ``revision`` in one transaction; a no-op when up to date.
    A damaged SQLite file (``check_intact``), one this process cannot write (``check_writable``), or one made by a
    newer actmax or a retired development build, is refused untouched. The schema version before (None: the
    database was new, or empty) and after.

    The migration runs on a connection of its own (SQLite: ``BEGIN IMMEDIATE`` with the driver's
    implicit commits off, so a kill leaves either the old schema or the whole new one).
    """
    database_url = db_engine.url.render_as_string(hide_password=False)
    if db_engine.dialect.name == "sqlite" and db_engine.url.database not in (None, "", ":memory:"):
        check_database_file(Path(db_engine.url.database), created=True)
        check_writable(Path(db_engine.url.database))
        check_intact(Path(db_engine.url.database))
    engine = make_db_engine(database_url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _driver_autocommit)
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    try:
        with engine.begin() as connection:
            if revision == "head" and (before := _revision(connection)) == HEAD_REVISION:
                return before, before  # up to date: no migration to run
            from alembic import command

            _clear_half_made(connection, database_url)
            config = alembic_config(database_url)
            before = _revision(connection)
            _refuse_unknown_revision(connection, config, before)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            return before, _revision(connection)
    finally:
        engine.dispose()


def offline_db_engine(database_url: str) -> Engine:
    """``make_db_engine`` for a command that reads the database without the server (``actmax analyze``,
    ``actmax export``, scripts), once its schema version is this actmax's: one an older actmax made is refused
    with how to migrate it (not migrated here: the folder may be an archive, or read-only), and so are one with no
    schema version and one that ``upgrade`` refuses as unknown."""
    db_engine = make_db_engine(database_url)
    try:
        with db_engine.connect() as connection:
            version = _revision(connection)
            if version != HEAD_REVISION:
                _refuse_unknown_revision(connection, alembic_config(database_url), version)
        if version != HEAD_REVISION:
            url = db_engine.url
            file = Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None
            database, data_dir = (file, file.parent) if file else (url.render_as_string(), "<dir>")
            if version is None:
                raise ServerError(f"the database {database} has no actmax schema version: it is not an actmax "
                                  "database, or no actmax serve has started on it; pass the --data-dir "
                                  "(ACTMAX_DATA_DIR) that actmax serve runs with")
            raise ServerError(
                f"the database {database} is at schema version {version!r}, older than this actmax's {HEAD_REVISION!r}: "
                f"start `actmax serve --data-dir {data_dir}` once to migrate it (in one transaction, keeping every "
                "record; back the folder up first: README.md, 'Operating the server', Upgrading actmax), then run "
                "this command again")
    except BaseException:
        db_engine.dispose()
        raise
    return db_engine


def _driver_autocommit(dbapi_connection, _connection_record) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" listener issues BEGIN itself


def _revision(connection) -> str | None:
    """The schema version recorded in the database; None when it has none (new, or its tables empty)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.scalar(text("SELECT version_num FROM alembic_version"))


def _refuse_unknown_revision(connection, config: Config, version: str | None) -> None:
    """Refuse a database at a schema version these migrations do not know: a retired development build's
    (``RETIRED_REVISIONS``), or a newer actmax's."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(config)
    if version is None or version in {script.revision for script in scripts.walk_revisions()}:
        return
    database = connection.engine.url.render_as_string()
    if version in RETIRED_REVISIONS:
        raise ServerError(
            f"the database {database} is at schema version {version!r}, that of a development build of actmax "
            f"from before the release ({RETIRED_REVISIONS[version]}), which this actmax cannot migrate: finish its "
            "sessions and export them with that build (actmax export, or its REST API), and start this actmax on "
            "a new --data-dir")
    raise ServerError(
        f"the database {database} is at schema version {version!r}, which this actmax does not know (it knows "
        f"up to {scripts.get_current_head()!r}): a newer actmax made it; run that version, or restore a backup "
        "made before it ran")


def _clear_half_made(connection, database_url: str) -> None:
    """Drop the tables of a half-made database (no version recorded) if they hold no rows."""
    from server.store.models import Base

    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables and connection.scalar(text("SELECT count(*) FROM alembic_version")):
        return
    ours = [t for t in reversed(Base.metadata.sorted_tables) if t.name in tables]
    if not ours:
        return
    filled = [t.name for t in ours if connection.scalar(text(f'SELECT count(*) FROM "{t.name}"'))]
    if filled:
        raise ServerError(
            f"the database {make_url(database_url).render_as_string()} has actmax tables with rows "
            f"({', '.join(filled)}) but no recorded schema version, so it cannot be migrated safely; "
            "move it aside and start again, or restore it from a backup")
    for table in ours:
        table.drop(connection)
