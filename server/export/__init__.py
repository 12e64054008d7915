"""Session export: the tidy tables of a session (``tables``) written as NWB (``nwb``), Parquet or CSV.

``actmax export`` (``cli``) and ``GET /sessions/{id}/export.nwb`` (``server/api/routes/export.py``) both
call ``session_tables`` once and hand the tables to a writer. docs/export.md describes the output.
"""

from server.export.tables import ExportError, SessionRunning, SessionTables, session_tables, write_tables

__all__ = ["ExportError", "SessionRunning", "SessionTables", "session_tables", "write_tables"]
