"""A session's tables from a database URL (CLI and scripts), and the NWB writer when pynwb is installed."""

from server.export.tables import CLI_HINTS, ExportError, SessionTables, session_tables
from server.store.db import make_sessionmaker, offline_db_engine


class NwbUnavailable(ExportError, RuntimeError):
    """pynwb, the optional ``nwb`` extra, is not installed."""


def load_session_tables(database_url: str, session_id: int, subject: dict[str, str] | None = None) -> SessionTables:
    """``session_tables`` of a session in the database at ``database_url`` (CLI and scripts: errors name
    `actmax` commands)."""
    db_engine = offline_db_engine(database_url)
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
