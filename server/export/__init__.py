"""Session export: the tidy tables of a session (``tables``) written as NWB (``nwb``), Parquet or CSV.

``actmax export`` (``cli``) and ``GET /sessions/{id}/export.nwb`` (``server/api/routes/export.py``) both
call ``session_tables`` once and hand the tables to a writer. docs/export.md describes the output.
"""

from server.export.tables import CLI_HINTS, ExportError, SessionRunning, SessionTables, session_tables, write_tables
from server.store.db import make_db_engine, make_sessionmaker


class NwbUnavailable(ExportError, RuntimeError):
    """pynwb, the optional ``nwb`` extra, is not installed."""


def load_session_tables(database_url: str, session_id: int, subject: dict[str, str] | None = None) -> SessionTables:
    """``session_tables`` of a session in the database at ``database_url`` (CLI and scripts: errors name
    `actmax` commands)."""
    db_engine = make_db_engine(database_url)
    try:
        with make_sessionmaker(db_engine)() as db:
            return session_tables(db, session_id, CLI_HINTS, subject)
    finally:
        db_engine.dispose()


def nwb_writer():
    """``server.export.nwb.write_nwb``, or ``NwbUnavailable`` saying what to install."""
    try:
        from server.export.nwb import write_nwb
    except ImportError as error:
        raise NwbUnavailable(f"NWB export needs pynwb ({error}): pip install 'actmax[nwb]'") from None
    return write_nwb


__all__ = ["ExportError", "NwbUnavailable", "SessionRunning", "SessionTables", "load_session_tables", "nwb_writer",
           "session_tables", "write_tables"]
