"""Database connections (SQLite in WAL mode) and programmatic Alembic migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 10_000
# More connections than the threads that may hold one at once: anyio's 40 workers that run sync
# endpoints (and their dependencies' clean-up), the engine's worker, a few more. With fewer, a burst
# of requests (a dashboard loading 40 images) deadlocks: workers wait for connections whose
# sessions can only close on a free worker. SQLite connections are cheap.
POOL_SIZE, MAX_OVERFLOW = 5, 60
_PACKAGE_DIR = Path(__file__).resolve().parent


def _set_sqlite_pragmas(dbapi_connection, _connection_record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def make_db_engine(database_url: str) -> Engine:
    """A database engine for ``database_url``; for SQLite files: WAL, foreign keys on, busy timeout, parent
    folder made. A process makes one and disposes of it when it ends (``actmax serve`` owns the server's)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    db_engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=POOL_SIZE,
                              max_overflow=MAX_OVERFLOW)
    event.listen(db_engine, "connect", _set_sqlite_pragmas)
    return db_engine


def make_sessionmaker(db_engine: Engine) -> sessionmaker[Session]:
    """ORM sessions whose objects stay readable after commit."""
    return sessionmaker(db_engine, expire_on_commit=False)


def alembic_config(database_url: str) -> Config:
    """The Alembic configuration of the packaged migrations, pointed at ``database_url``."""
    config = Config(str(_PACKAGE_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(_PACKAGE_DIR / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(db_engine: Engine, revision: str = "head") -> None:
    """Create or migrate the database to ``revision``; a no-op on an up-to-date database."""
    with db_engine.begin() as connection:
        config = alembic_config(db_engine.url.render_as_string(hide_password=False))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
