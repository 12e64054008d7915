"""Alembic environment: migrations run on the connection ``server.store.db.upgrade`` passes in,
or on ``-x url=...`` / ``sqlalchemy.url`` when run from the alembic command line."""

from alembic import context

from server.store.db import make_db_engine
from server.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    db_engine = make_db_engine(url)
    try:
        with db_engine.begin() as connection:
            _run(connection)
    finally:
        db_engine.dispose()


if context.is_offline_mode():
    raise SystemExit("actmax migrations run online only: pass -x url=sqlite:///path/to/actmax.sqlite")
run_migrations_online()
